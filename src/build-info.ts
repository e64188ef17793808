/**
 * What this copy of mesh-cni is: the package version and the hashes of the shim and engine it ships (and
 * would install). The agent publishes them on /metrics and `mesh-cni status` compares them with the files
 * in the CNI bin dir, so a node running a stale plugin after an upgrade is visible.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

/** The package root, found from where the compiled file runs (dist/src/). */
export const PACKAGE_ROOT = path.resolve(__dirname, '../..');
export const BUNDLED_SHIM = path.join(PACKAGE_ROOT, 'build', 'mesh-cni');
export const BUNDLED_ENGINE = path.join(PACKAGE_ROOT, 'dist/src/cni/main.js');

export function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** sha256 of a file, or undefined when it cannot be read. */
export function fileSha256(file: string): string | undefined {
  try {
    return createHash('sha256').update(readFileSync(file)).digest('hex');
  } catch {
    return undefined;
  }
}

export interface BuildInfo {
  version: string;
  shimSha256?: string;
  engineSha256?: string;
}

export function buildInfo(shimPath = BUNDLED_SHIM, enginePath = BUNDLED_ENGINE): BuildInfo {
  return { version: packageVersion(), shimSha256: fileSha256(shimPath), engineSha256: fileSha256(enginePath) };
}
