/** Output helpers shared by every command: text for people, stable JSON for scripts, errors with hints. */
import { MeshCniError } from '../errors';

export type OutputFormat = 'text' | 'json';

export const outputOption = {
  output: { alias: 'o', choices: ['text', 'json'] as const, default: 'text' as const, describe: 'output format' },
};

/**
 * Characters that must never reach a terminal raw from text we did not write (pod names, annotations, Events,
 * error messages from the API or a program, file names, rules read from a netns): C0 controls (ESC starts
 * CSI/OSC sequences that move the cursor, clear the screen, set the title or write the clipboard), DEL, C1
 * controls (U+0080–U+009F; U+009B is a one-character CSI in terminals that honour 8-bit controls), the
 * Unicode line and paragraph separators, and the bidirectional overrides, embeddings, isolates and marks
 * that make text display in another order than it is (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069).
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const UNSAFE_BUT_LAYOUT = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
/** What JSON.stringify leaves raw: all of UNSAFE but the C0 controls, which it escapes itself. */
const JSON_UNSAFE = /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function visible(c: string): string {
  const code = c.charCodeAt(0);
  return NAMED[c] ?? (code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`);
}

/**
 * Text from outside made safe to print: every character of UNSAFE shown as a visible escape (`\x1b`,
 * `\x9b`, `\u202e`, and `\n`, `\r`, `\t`), so a value is always one line of plain text and never a command
 * to the terminal. `keepLayout` keeps newlines and tabs (for multi-line text such as a program's stderr,
 * printed as it is laid out); everything else is still escaped. A backslash is left as it is: text output is
 * for reading, and `-o json` gives every value exactly.
 */
export function printable(text: string, options: { keepLayout?: boolean } = {}): string {
  return text.replace(options.keepLayout ? UNSAFE_BUT_LAYOUT : UNSAFE, visible);
}

/** A copy of `value` with every string in it (keys too) made `printable`: what text printers render. */
export function textSafe<T>(value: T): T {
  if (typeof value === 'string') return printable(value) as T;
  if (Array.isArray(value)) return value.map(textSafe) as T;
  if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [printable(k), textSafe(v)])) as T;
  }
  return value;
}

/**
 * JSON.stringify escapes C0 controls (ESC becomes \u001b) but writes DEL, C1 controls, the line separators and
 * the bidi controls raw; they are escaped too (as \u009b …), which parses back to the same value.
 */
export function jsonText(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(JSON_UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${jsonText(value)}\n`);
}

/** Our own colour codes, the only escape sequences text output may carry (see `paint`). */
const OUR_SGR = /\x1b\[(?:0|1|2|31|32|33)m/y;

/**
 * Writes text output. Values from outside are made `printable` before they are laid out (`textSafe`, `table`,
 * `paint`); this is the last guard for a printer that forgot: any control character left, other than newline,
 * tab and the start of one of our own colour codes, is escaped here.
 */
export function printText(text: string, stream: NodeJS.WritableStream = process.stdout): void {
  stream.write(
    text.replace(UNSAFE_BUT_LAYOUT, (c, offset: number) => {
      if (c === '\x1b') {
        OUR_SGR.lastIndex = offset;
        if (OUR_SGR.test(text)) return c;
      }
      return visible(c);
    }),
  );
}

/** Exit codes: 0 ok, 1 a problem found or an operation failed, 2 usage. */
export const EXIT = { ok: 0, problem: 1, usage: 2 } as const;

export function reportError(err: unknown, format: OutputFormat): number {
  const e = err instanceof MeshCniError ? err : undefined;
  if (format === 'json') {
    printJson({
      error: {
        code: e?.code ?? 'INTERNAL',
        message: err instanceof Error ? err.message : String(err),
        hint: e?.hint,
        details: e?.details,
      },
    });
  } else {
    // Messages carry values from outside (an annotation's value, the API's or a program's words): printable.
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`mesh-cni: ${printable(message)}\n`);
    if (e?.details && e.details.trim() !== message.trim()) process.stderr.write(`${printable(e.details.trim(), { keepLayout: true })}\n`);
    if (e?.hint) process.stderr.write(`hint: ${printable(e.hint)}\n`);
  }
  return EXIT.problem;
}

/** Runs a command body, turning any thrown error into the documented output and exit code. */
export async function runCommand(format: OutputFormat, body: () => Promise<number | void>): Promise<void> {
  try {
    process.exitCode = (await body()) ?? EXIT.ok;
  } catch (err) {
    process.exitCode = reportError(err, format);
  }
}

/** Colour only for a person at a terminal, and never when NO_COLOR is set to anything (https://no-color.org). */
export function colourEnabled(stream: { isTTY?: boolean } = process.stdout, env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(stream.isTTY) && !env.NO_COLOR;
}

export type Tone = 'ok' | 'bad' | 'warn' | 'dim' | 'bold';
const SGR: Record<Tone, string> = { ok: '32', bad: '31', warn: '33', dim: '2', bold: '1' };

/** `text` made `printable`, in a tone: our colour codes around it on a TTY. */
export function paint(tone: Tone | undefined, text: string, colour = colourEnabled()): string {
  const safe = printable(text);
  return colour && tone && safe !== '' ? `\x1b[${SGR[tone]}m${safe}\x1b[0m` : safe;
}

/** A table cell: plain text, or text with a tone (coloured on a TTY; alignment ignores the escape codes). */
export type Cell = string | { text: string; tone?: Tone };

/** A cell's text, `printable`: a table never lays out a control character, whatever it is handed. */
const cellText = (c: Cell) => printable(typeof c === 'string' ? c : c.text);

/**
 * Rows aligned in columns two spaces apart, the last column unpadded. With `headers`, a first row in bold.
 * Each line ends with a newline.
 */
export function table(rows: Cell[][], options: { headers?: string[]; colour?: boolean } = {}): string {
  const colour = options.colour ?? colourEnabled();
  const all: Cell[][] = options.headers ? [options.headers.map((h) => ({ text: h, tone: 'bold' as const })), ...rows] : rows;
  const widths: number[] = [];
  for (const row of all) row.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, cellText(c).length)));
  return all
    .map((row) =>
      row
        .map((c, i) => {
          const text = cellText(c);
          const pad = i === row.length - 1 ? '' : ' '.repeat(widths[i] - text.length);
          return paint(typeof c === 'string' ? undefined : c.tone, text, colour) + pad;
        })
        .join('  ')
        .trimEnd(),
    )
    .map((line) => `${line}\n`)
    .join('');
}
