/**
 * What this copy of mesh-cni is: the package version and the hashes of the shim and engine it ships (and
 * would install). The agent publishes them on /metrics and `mesh-cni status` compares them with the files
 * in the CNI bin dir, so a node running a stale plugin after an upgrade is visible.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { treeDigest } from './engine-dir';

/** The package root, found from where the compiled file runs (dist/src/installer/). */
export const PACKAGE_ROOT = path.resolve(__dirname, '../../..');
export const BUNDLED_SHIM = path.join(PACKAGE_ROOT, 'build', 'mesh-cni');
/** The self-contained standalone engine directory (scripts/build-engine.js), installed as <cni-bin-dir>/mesh-cni.d. */
export const BUNDLED_ENGINE = path.join(PACKAGE_ROOT, 'build', 'engine');

export function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** sha256 of a file, or the tree digest of a directory (the engine); undefined when it cannot be read. */
export async function artifactSha256(target: string): Promise<string | undefined> {
  try {
    if ((await stat(target)).isDirectory()) return await treeDigest(target);
    return createHash('sha256').update(await readFile(target)).digest('hex');
  } catch {
    return undefined;
  }
}

export interface BuildInfo {
  version: string;
  shimSha256?: string;
  engineSha256?: string;
}

export async function buildInfo(shimPath = BUNDLED_SHIM, enginePath = BUNDLED_ENGINE): Promise<BuildInfo> {
  const [shimSha256, engineSha256] = await Promise.all([artifactSha256(shimPath), artifactSha256(enginePath)]);
  return { version: packageVersion(), shimSha256, engineSha256 };
}
