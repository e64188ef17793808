/**
 * The record of what install changed, kept in stateDir so that uninstall (possibly by another process, after
 * an agent restart) can put every byte back. Written atomically; one JSON file.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { readIfExists, writeFileAtomic } from './atomic-file';
import { STATE_FILES } from '../defaults';

export const STATE_FILE = STATE_FILES.installState;

export interface ConfigRecord {
  /** the conflist we wrote (for a conversion, the new .conflist) */
  path: string;
  /** what the file (or, for a conversion, the .conf) held before our first write: base64 bytes */
  original: string;
  originalMode: number;
  /**
   * false when we found our entry already there with no record of writing it (agent state lost): `original`
   * is then that file minus our entry, re-serialised, not the bytes before any install.
   */
  exact: boolean;
  /** a lone .conf we converted and removed; uninstall writes `original` back there */
  convertedFrom?: string;
  /** sha256 of what we last wrote: if the file still hashes to it, no one else has touched it */
  writtenSha256: string;
  /** false once the file is no longer the active config and our entry was taken out again */
  entryPresent: boolean;
}

export interface InstallState {
  version: 1;
  configs: ConfigRecord[];
  /** files we created outright (binaries, kubeconfig, a standalone conflist): uninstall deletes them */
  ownedFiles: string[];
  /** with the owned config (owned-config.ts): what we last wrote there and which primary file it copies */
  ownedConfig?: { path: string; primary: string; writtenSha256: string };
}

export function emptyState(): InstallState {
  return { version: 1, configs: [], ownedFiles: [] };
}

export async function loadState(stateDir: string): Promise<InstallState> {
  const bytes = await readIfExists(join(stateDir, STATE_FILE));
  if (bytes === undefined) return emptyState();
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as InstallState;
    if (parsed.version === 1 && Array.isArray(parsed.configs) && Array.isArray(parsed.ownedFiles)) return parsed;
  } catch {
    // A corrupt record is treated as none: install then works from what the files hold (exact: false).
  }
  return emptyState();
}

export async function saveState(stateDir: string, state: InstallState): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(stateDir, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`, 0o600);
}
