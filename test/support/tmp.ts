/** Temporary directories that are always removed: with the test, or when the test process exits. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';

const atExit: string[] = [];
let hooked = false;

/** A temp dir for the whole test file (module level), removed when the process exits. */
export function fileTempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mesh-cni-${prefix}-`));
  atExit.push(dir);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const d of atExit) fs.rmSync(d, { recursive: true, force: true });
    });
  }
  return dir;
}

/** A temp dir for one test, removed when it ends. */
export function testTempDir(t: ExecutionContext, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mesh-cni-${prefix}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}
