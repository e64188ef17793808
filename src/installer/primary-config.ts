/**
 * Which network config the runtime uses, decided as kubelet's CNI loader does: the files ending in .conf,
 * .conflist or .json, in lexical order; the first that loads as a valid config wins and invalid ones are
 * skipped. A .conflist needs a string `name` and a non-empty `plugins` list whose entries all have a `type`
 * (libcni ConfListFromBytes); a .conf/.json needs a `type` (ConfFromBytes).
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isObject } from '../json';

export const CONF_EXTENSIONS = ['.conf', '.conflist', '.json'] as const;

export type ConfigKind = 'conf' | 'conflist';

export interface PrimaryConfig {
  path: string;
  /** a .conf or .json holds one plugin; a .conflist a chain */
  kind: ConfigKind;
  bytes: Buffer;
  parsed: Record<string, unknown>;
  /** files earlier in lexical order that were not valid configs, and why */
  skipped: Array<{ path: string; reason: string }>;
}


export function kindOf(fileName: string): ConfigKind | undefined {
  if (fileName.endsWith('.conflist')) return 'conflist';
  if (fileName.endsWith('.conf') || fileName.endsWith('.json')) return 'conf';
  return undefined;
}

/** Either why the bytes are not a valid config of this kind, or the parsed config. */
export function invalidReason(bytes: Buffer, kind: ConfigKind): { reason: string } | { parsed: Record<string, unknown> } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    return { reason: `not JSON: ${(err as Error).message}` };
  }
  if (!isObject(parsed)) return { reason: 'not a JSON object' };
  if (kind === 'conflist') {
    if (typeof parsed.name !== 'string') return { reason: 'no name' };
    if (!Array.isArray(parsed.plugins)) return { reason: "no 'plugins' list" };
    if (parsed.plugins.length === 0) return { reason: 'no plugins in list' };
    const bad = parsed.plugins.findIndex((p) => !isObject(p) || typeof p.type !== 'string' || p.type === '');
    if (bad >= 0) return { reason: `plugin ${bad} has no 'type'` };
  } else if (typeof parsed.type !== 'string' || parsed.type === '') {
    return { reason: "missing 'type'" };
  }
  return { parsed };
}

/** The config files of the directory in the order the runtime reads them (regular names only). */
export async function listConfFiles(confDir: string): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(confDir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return entries
    .filter((e) => (e.isFile() || e.isSymbolicLink()) && kindOf(e.name) !== undefined)
    .map((e) => e.name)
    // Go's sort.Strings compares bytes; so does this (localeCompare would not).
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

export async function findPrimaryConfig(confDir: string): Promise<PrimaryConfig | undefined> {
  return (await scanConfDir(confDir)).primary;
}

/**
 * The active config, if any, and every file before it that was skipped as invalid. `ignore` names files the
 * runtime reads but the installer must not take for the primary's (our own owned config, owned-config.ts).
 */
export async function scanConfDir(confDir: string, ignore: readonly string[] = []): Promise<{ primary?: PrimaryConfig; skipped: PrimaryConfig['skipped'] }> {
  const skipped: PrimaryConfig['skipped'] = [];
  for (const name of await listConfFiles(confDir)) {
    if (ignore.includes(name)) continue;
    const path = join(confDir, name);
    const kind = kindOf(name) as ConfigKind;
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch (err) {
      // Removed between readdir and read, or a dangling symlink: the runtime would skip it too.
      skipped.push({ path, reason: `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
      continue;
    }
    const verdict = invalidReason(bytes, kind);
    if ('reason' in verdict) {
      skipped.push({ path, reason: verdict.reason });
      continue;
    }
    return { primary: { path, kind, bytes, parsed: verdict.parsed, skipped }, skipped };
  }
  return { skipped };
}

/**
 * The config to chain into: the file `fileName` names (Istio's cniConfFileName) when given, else the runtime's
 * choice. `reason` says why there is none yet.
 */
export async function chosenConfig(confDir: string, fileName: string | undefined, ignore: readonly string[] = []): Promise<{ primary?: PrimaryConfig; skipped: PrimaryConfig['skipped']; reason?: string }> {
  if (!fileName) {
    const scan = await scanConfDir(confDir, ignore);
    return scan.primary ? scan : { ...scan, reason: `no valid network config in ${confDir} yet` };
  }
  if (fileName.includes('/') || fileName === '.' || fileName === '..') return { skipped: [], reason: `cniConfFileName must be a file name in ${confDir}, not a path: ${fileName}` };
  if (ignore.includes(fileName)) return { skipped: [], reason: `cniConfFileName ${fileName} is mesh-cni's own owned config, not the primary CNI's: name the primary's file` };
  const path = join(confDir, fileName);
  const kind = kindOf(fileName);
  if (!kind) return { skipped: [], reason: `cniConfFileName ${fileName} does not end in .conf, .conflist or .json: the runtime would never read it` };
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    return { skipped: [], reason: `the config named by cniConfFileName, ${path}, does not exist yet (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
  }
  const verdict = invalidReason(bytes, kind);
  if ('reason' in verdict) return { skipped: [{ path, reason: verdict.reason }], reason: `the config named by cniConfFileName, ${path}, is not a valid ${kind}: ${verdict.reason}` };
  return { primary: { path, kind, bytes, parsed: verdict.parsed, skipped: [] }, skipped: [] };
}
