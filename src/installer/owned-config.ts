/**
 * The owned config (Istio's istioOwnedCNIConfig): instead of writing our entry into the primary CNI's file,
 * we write a conflist of our own, named to sort before it (default 02-mesh-cni.conflist), holding the
 * primary's plugins in order followed by ours, with the primary's cniVersion and name. The runtime reads the
 * first valid file in lexical order, so it uses ours; the primary's file is never written, so a primary that
 * rewrites its file at start (Calico, Cilium after a reboot) cannot take our entry out. Each pass copies the
 * primary's file again: the watch's pass after the primary rewrites it brings ours up to date.
 *
 * Fail closed when the primary's file disappears or becomes invalid: ours is removed, the pass reports
 * 'waiting' with the reason, and readiness is false. A copy left behind would keep the runtime on the
 * primary's old network config for as long as the primary stays away, and would hide the primary's own
 * signal: a primary that takes its file away (Cilium at shutdown, an uninstall) means "no pod network here
 * now", and the runtime must see exactly that. With the primary's file gone and ours gone, the runtime has
 * no network config (or the next valid one, as it would without us): pods wait, none starts from a stale
 * copy of ours. When the primary's file is back, the next pass writes ours again.
 */
import { join } from 'node:path';
import { modeOf, readIfExists, removeIfExists, sha256, writeFileAtomic } from './atomic-file';
import { convertConfText, insertIntoConflistText, isChainedLast } from './conflist';
import { chosenConfig, invalidReason, scanConfDir } from './primary-config';
import { saveState, type InstallState } from './state';
import { DEFAULT_STANDALONE_CONF_NAME } from './standalone-config';
import type { ConfigOutcome, InstallOptions, InstallStatus } from './types';

/** Istio's default is 02-istio-cni.conflist: "02-" sorts before the usual 05-/10-/87- primaries. */
export const OWNED_CONF_NAME = '02-mesh-cni.conflist';

type Names = Pick<InstallOptions, 'cniConfDir' | 'ownedConfigFileName'>;

export function ownedConfigName(o: Pick<InstallOptions, 'ownedConfigFileName'>): string {
  return o.ownedConfigFileName || OWNED_CONF_NAME;
}

export function ownedConfigPath(o: Names): string {
  return join(o.cniConfDir, ownedConfigName(o));
}

/**
 * The names the primary selection must never take for the primary's file, in every mode: our owned config
 * is valid and sorts first, so without this the installer would copy (or chain into) itself; a standalone
 * file left from chained: false holds only mesh-cni and is no pod network.
 */
export function notPrimary(o: Pick<InstallOptions, 'ownedConfigFileName'>): string[] {
  return [ownedConfigName(o), DEFAULT_STANDALONE_CONF_NAME];
}

/** Why the owned config's name cannot be used, if it cannot. */
function badName(name: string): string | undefined {
  if (name.includes('/') || name === '.' || name === '..') return `the owned config's name (istioOwnedCNIConfigFileName) must be a file name, not a path: ${name}`;
  if (!name.endsWith('.conflist')) return `the owned config's name (istioOwnedCNIConfigFileName) must end in .conflist: ${name}`;
  return undefined;
}

/** The file is a conflist whose last plugin is ours: one we wrote, even if our record of it was lost. */
function holdsOurEntry(bytes: Buffer): boolean {
  const verdict = invalidReason(bytes, 'conflist');
  return !('reason' in verdict) && isChainedLast(verdict.parsed);
}

/** Removes an owned config of ours (recognised by our record's hash or our entry last); forgets it either way. */
async function dropOwned(state: InstallState, path: string): Promise<boolean> {
  const current = await readIfExists(path);
  const ours = current !== undefined && (sha256(current) === state.ownedConfig?.writtenSha256 || holdsOurEntry(current));
  if (ours) await removeIfExists(path);
  if (state.ownedConfig?.path === path) state.ownedConfig = undefined;
  state.ownedFiles = state.ownedFiles.filter((f) => f !== path);
  return ours;
}

/**
 * Chained mode's half of a switch from the owned config: once our entry is in the primary's file, our owned
 * file (recorded, or found under its name with our entry last: the record may be gone after a reboot) goes.
 * Returns the files removed.
 */
export async function dropOwnedConfig(o: Names, state: InstallState): Promise<string[]> {
  const paths = new Set([ownedConfigPath(o), ...(state.ownedConfig ? [state.ownedConfig.path] : [])]);
  const dropped: string[] = [];
  for (const path of paths) if (await dropOwned(state, path)) dropped.push(path);
  return dropped;
}

/**
 * Our owned file, written by us, since taken away or stripped of our entry by someone else (an exclusive
 * primary renames every other config): a removal for the fight guard, counted once. The primary rewriting
 * its own file is not one: that is what the owned config is for.
 */
async function ownedRemoved(state: InstallState, path: string): Promise<string[]> {
  if (state.ownedConfig?.path !== path) return [];
  const current = await readIfExists(path);
  if (current !== undefined && (sha256(current) === state.ownedConfig.writtenSha256 || holdsOurEntry(current))) return [];
  state.ownedConfig = undefined;
  return [path];
}

export interface OwnedPass {
  /** the watch's fight guard (fight.ts), told of removals of our owned file */
  hold?: (removed: string[]) => boolean;
  /** takes our entry out of every config an earlier chained pass put it into (install.ts); the files changed */
  releaseChained: () => Promise<string[]>;
}

/** One pass of the owned config: copy the primary's file with our entry last into ours, or remove ours and wait. */
export async function writeOwnedConfig(o: InstallOptions, state: InstallState, pass: OwnedPass): Promise<ConfigOutcome> {
  const name = ownedConfigName(o);
  const path = join(o.cniConfDir, name);
  const bad = badName(name);
  if (bad) return { action: 'waiting', reason: bad, skipped: [], removed: [] };

  // An owned config under a name used before (the value changed): it goes once the new one is in force.
  const previous = state.ownedConfig && state.ownedConfig.path !== path ? state.ownedConfig : undefined;
  const removed = await ownedRemoved(state, path);
  if (pass.hold?.(removed)) return { action: 'held', path, removed };

  const { primary, skipped, reason } = await chosenConfig(o.cniConfDir, o.cniConfFileName, notPrimary(o));
  if (!primary) {
    const dropped = await dropOwned(state, path);
    const what = dropped ? `removed our owned config ${path} so the runtime does not keep a stale copy of the primary's network config` : `our owned config ${path} is not written`;
    return { action: 'waiting', reason: `${reason ?? `no valid network config in ${o.cniConfDir} yet`}: ${what} until it is back`, skipped, removed };
  }

  // Made from the primary's text, as the chained entry is: every token of its plugins as written.
  const text = primary.bytes.toString('utf8');
  const desired = Buffer.from(primary.kind === 'conflist' ? insertIntoConflistText(text, o.pluginConfig) : convertConfText(text, o.pluginConfig));
  const current = await readIfExists(path);
  const written = current === undefined || !current.equals(desired);
  const record = { path, primary: primary.path, writtenSha256: sha256(desired) };
  if (written) {
    // Recorded before the write: a state dir that cannot be written fails the pass before the file exists.
    state.ownedConfig = record;
    if (!state.ownedFiles.includes(path)) state.ownedFiles.push(path);
    await saveState(o.stateDir, state);
    await writeFileAtomic(path, desired, await modeOf(primary.path, 0o644));
  }
  state.ownedConfig = record;
  if (!state.ownedFiles.includes(path)) state.ownedFiles.push(path);

  // Ours only counts if the runtime reads it first; until then an entry chained into the primary stays.
  const active = (await scanConfDir(o.cniConfDir)).primary;
  if (active?.path !== path) {
    return {
      action: 'waiting',
      reason: `our owned config ${path} is written, but the runtime reads ${active?.path ?? 'another file'} first: give istioOwnedCNIConfigFileName a name that sorts before it`,
      skipped,
      removed,
    };
  }
  const released = await pass.releaseChained();
  if (previous) {
    const current = await readIfExists(previous.path);
    if (current !== undefined && (sha256(current) === previous.writtenSha256 || holdsOurEntry(current))) {
      await removeIfExists(previous.path);
      released.push(previous.path);
    }
    state.ownedFiles = state.ownedFiles.filter((f) => f !== previous.path);
  }
  const action = !written ? 'unchanged' : removed.length > 0 ? 'reinserted' : 'inserted';
  return { action, path, released, removed };
}

/** What readiness reads in owned mode: the runtime's first valid config must be ours, with our entry last. */
export async function checkOwned(o: InstallOptions): Promise<Pick<InstallStatus, 'activeConfig' | 'entryInActiveConfig' | 'ownedConfig'>> {
  const path = ownedConfigPath(o);
  const active = (await scanConfDir(o.cniConfDir)).primary;
  const { primary } = await chosenConfig(o.cniConfDir, o.cniConfFileName, notPrimary(o));
  return {
    activeConfig: active?.path,
    entryInActiveConfig: active?.path === path && active.kind === 'conflist' && isChainedLast(active.parsed),
    ownedConfig: { path, primary: primary?.path, written: (await readIfExists(path)) !== undefined },
  };
}
