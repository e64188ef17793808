import * as fs from 'node:fs';

/**
 * The JSON lines of a log file from byte `from` on (the plugin's request log, a service's log); a missing file
 * is no lines, and a line that is not JSON is kept as `{ raw }` so a test can still show it.
 */
export function readJsonLines(file: string, from = 0): Array<Record<string, any>> {
  let text = '';
  try {
    text = fs.readFileSync(file).subarray(from).toString();
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, any>;
      } catch {
        return { raw: l };
      }
    });
}
