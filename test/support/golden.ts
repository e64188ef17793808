/**
 * Golden files: each case renders to test/golden/<dir>/<name>.golden, compared byte for byte. Run with
 * UPDATE_GOLDEN=1 to rewrite them after an intended change (then read the diff before committing).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { REPO_ROOT } from './paths';

export function assertGolden(t: ExecutionContext, dir: string, name: string, actual: string): void {
  const file = path.join(REPO_ROOT, 'test/golden', dir, `${name}.golden`);
  if (process.env.UPDATE_GOLDEN === '1') {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, actual);
  }
  if (!fs.existsSync(file)) {
    t.fail(`golden file ${path.relative(REPO_ROOT, file)} is missing; run UPDATE_GOLDEN=1 npm test to create it`);
    return;
  }
  t.is(actual, fs.readFileSync(file, 'utf8'), `differs from ${path.relative(REPO_ROOT, file)}`);
}
