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
