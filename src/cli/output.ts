/** Output helpers shared by every command: text for people, stable JSON for scripts, errors with hints. */
import { MeshCniError } from '../errors';

export type OutputFormat = 'text' | 'json';

export const outputOption = {
  output: { alias: 'o', choices: ['text', 'json'] as const, default: 'text' as const, describe: 'output format' },
};

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
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
    process.stderr.write(`mesh-cni: ${err instanceof Error ? err.message : String(err)}\n`);
    if (e?.details && e.details.trim() !== (err as Error).message.trim()) process.stderr.write(`${e.details.trim()}\n`);
    if (e?.hint) process.stderr.write(`hint: ${e.hint}\n`);
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

export function paint(tone: Tone | undefined, text: string, colour = colourEnabled()): string {
  return colour && tone && text !== '' ? `\x1b[${SGR[tone]}m${text}\x1b[0m` : text;
}

/** A table cell: plain text, or text with a tone (coloured on a TTY; alignment ignores the escape codes). */
export type Cell = string | { text: string; tone?: Tone };

const cellText = (c: Cell) => (typeof c === 'string' ? c : c.text);

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
