/**
 * One install pass, idempotent: binaries, kubeconfig, then the config entry (in that order, so a config never
 * names a plugin that is not on disk). Every write is skipped when the content is already right, so a pass
 * over an installed node touches nothing and a directory watcher sees no echo of its own work.
 */
import { mkdir, readFile, realpath, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { exists, fsyncDirOf, modeOf, readIfExists, removeIfExists, sha256, stageBeside, writeFileAtomic, writeIfChanged, type WriteAction } from './atomic-file';
import { ENGINE_DIR_NAME, engineInPlace, installEngineDir, treeDigest } from './engine-dir';
import { convertConfText, hasOurEntry, insertIntoConflistText, isChainedLast, isOurs, PLUGIN_TYPE, removeFromConflistText } from './conflist';
import { InstallerError } from '../errors';
import { buildKubeconfig, KUBECONFIG_MODE } from './kubeconfig';
import { chosenConfig, invalidReason } from './primary-config';
import { checkOwned, dropOwnedConfig, notPrimary, writeOwnedConfig } from './owned-config';
import { loadState, saveState, type ConfigRecord, type InstallState } from './state';
import { DEMO_CONF_NAME, ownConfInPlace, removeStaleOwnConfs, writeOwnConf, writesOwnConf } from './standalone-config';
import type { ConfigOutcome, InstallOptions, InstallReport, InstallStatus } from './types';

export const SHIM_NAME = 'mesh-cni';
export { ENGINE_DIR_NAME };
/** Where installs before the engine directory put the engine (one file that could not run on its own). */
export const LEGACY_ENGINE_NAME = 'mesh-cni.js';
export const STANDALONE_CONF_NAME = DEMO_CONF_NAME;
const CONFIG_MODE = 0o644;

export function installedPaths(o: Pick<InstallOptions, 'cniBinDir' | 'cniConfDir'>) {
  return {
    shim: join(o.cniBinDir, SHIM_NAME),
    engine: join(o.cniBinDir, ENGINE_DIR_NAME),
    legacyEngine: join(o.cniBinDir, LEGACY_ENGINE_NAME),
    standaloneConf: join(o.cniConfDir, STANDALONE_CONF_NAME),
  };
}

function validate(o: InstallOptions): void {
  if (!isOurs(o.pluginConfig)) {
    throw new InstallerError(`pluginConfig.type must be "${PLUGIN_TYPE}", got ${JSON.stringify(o.pluginConfig.type)}`, {
      hint: 'the installer finds and replaces its own entry by type',
    });
  }
  if (o.chained === false && o.ownedConfig) {
    throw new InstallerError('chained: false and the owned config (istioOwnedCNIConfig) both ask for a config file of our own, in two different ways', {
      hint: 'standalone (chained: false) writes a file with only mesh-cni for Multus; the owned config copies the primary with ours added: choose one',
    });
  }
}

async function readSource(path: string, what: string): Promise<Buffer> {
  const bytes = await readIfExists(path);
  if (bytes === undefined) throw new InstallerError(`the ${what} to install, ${path}, does not exist`, { hint: 'is the image built completely (npm run build, scripts/build-native.js)?' });
  return bytes;
}

/** The engine first: a new shim must never run before the engine it looks for is there. */
async function installBinaries(o: InstallOptions): Promise<InstallReport['binaries']> {
  const paths = installedPaths(o);
  await mkdir(o.cniBinDir, { recursive: true });
  const shim = await readSource(o.shimPath, 'shim');
  const engine = { path: paths.engine, action: await installEngineDir(o.enginePath, o.cniBinDir) };
  return [{ path: paths.shim, action: await writeIfChanged(paths.shim, shim, 0o755) }, engine];
}


/** Writes go to a symlink's target, so a config the primary CNI links into place stays linked. */
async function writeTarget(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return path;
  }
}

function upsert(state: InstallState, record: ConfigRecord): void {
  state.configs = [...state.configs.filter((r) => r.path !== record.path), record];
}

/** A record for the file as it is now, keeping the earlier original when the file is still what we wrote. */
function recordFor(state: InstallState, path: string, current: Buffer, mode: number): ConfigRecord {
  const previous = state.configs.find((r) => r.path === path);
  if (previous && previous.writtenSha256 === sha256(current)) return { ...previous };
  const text = current.toString('utf8');
  const ours = hasOurEntry(JSON.parse(text) as Record<string, unknown>);
  return {
    path,
    original: (ours ? Buffer.from(removeFromConflistText(text)) : current).toString('base64'),
    originalMode: mode,
    exact: !ours,
    writtenSha256: '',
    entryPresent: true,
  };
}

/** The conflist a lone .conf becomes: X.conf -> X.conflist, unless that name is someone else's file. */
async function conversionTarget(state: InstallState, confPath: string): Promise<string> {
  const stem = confPath.replace(/\.(conf|json)$/, '');
  const preferred = `${stem}.conflist`;
  const ours = state.configs.some((r) => r.path === preferred && r.convertedFrom !== undefined);
  if (ours || !(await exists(preferred))) return preferred;
  // '-' sorts before '.', so this name still comes before the other file's.
  return `${stem}-mesh-cni.conflist`;
}

/** Takes our entry out of a config that is no longer the active one. Returns whether the file changed. */
async function release(state: InstallState, record: ConfigRecord): Promise<boolean> {
  const current = await readIfExists(record.path);
  if (current === undefined) {
    state.configs = state.configs.filter((r) => r !== record);
    return false;
  }
  if (record.convertedFrom === undefined && record.exact && sha256(current) === record.writtenSha256) {
    await writeFileAtomic(record.path, Buffer.from(record.original, 'base64'), record.originalMode);
    state.configs = state.configs.filter((r) => r !== record);
    return true;
  }
  const verdict = invalidReason(current, 'conflist');
  if ('reason' in verdict || !hasOurEntry(verdict.parsed)) {
    state.configs = state.configs.filter((r) => r !== record);
    return false;
  }
  const stripped = Buffer.from(removeFromConflistText(current.toString('utf8')));
  await writeFileAtomic(record.path, stripped, await modeOf(record.path, CONFIG_MODE));
  if (record.convertedFrom !== undefined && sha256(current) === record.writtenSha256) {
    // Kept converted (restoring the .conf now could make it the active config again); uninstall reverses it.
    upsert(state, { ...record, writtenSha256: sha256(stripped), entryPresent: false });
  } else {
    state.configs = state.configs.filter((r) => r !== record);
  }
  return true;
}

/** Takes our entry out of every config that still holds it but `keep` (another file is now ours); returns those changed. */
async function releaseAll(state: InstallState, keep?: string): Promise<string[]> {
  const released: string[] = [];
  for (const record of state.configs.filter((r) => r.path !== keep && r.entryPresent)) {
    if (await release(state, record)) released.push(record.path);
  }
  return released;
}

/** renameat2(RENAME_EXCHANGE) where the caller handed it and the kernel and filesystem have it. */
function exchange(o: InstallOptions, a: string, b: string): boolean {
  try {
    return o.renameExchange?.(a, b) ?? false;
  } catch {
    return false;
  }
}

/**
 * Puts our entry into the primary CNI's conflist without ever writing over a newer version of it. A plain
 * read-modify-rename loses the primary's update when it rewrites the file between our read and our rename
 * (1 in 20-40 rounds of two rewrites 20-60 ms apart). So: compare the file with what we read just before
 * replacing it, and replace by exchanging (renameat2 RENAME_EXCHANGE), which hands back what the path held
 * at that instant: if that is not what we based our version on, the primary wrote in between, and its
 * content, now in hand, is merged and written again. Nothing the primary wrote is lost, only delayed by
 * one round. Where exchange is not supported the compare-before-rename still closes all but a microseconds
 * window. Returns the bytes the file holds at the end.
 */
async function replacePrimary(o: InstallOptions, path: string, read: Buffer, merge: (text: Buffer) => Buffer, mode: number): Promise<{ bytes: Buffer; written: boolean }> {
  let base = read;
  let atPath = read;
  let written = false;
  for (let attempt = 0; attempt < 50; attempt++) {
    const desired = merge(base);
    if (desired.equals(atPath)) return { bytes: desired, written };
    const temp = await stageBeside(path, desired, mode);
    try {
      const now = await readIfExists(path);
      if (!now || !now.equals(atPath)) {
        // Changed since we read it: start again from what is there now.
        if (!now) throw new InstallerError(`${path} disappeared while our entry was being added`);
        base = now;
        atPath = now;
        continue;
      }
      if (!exchange(o, temp, path)) {
        await rename(temp, path);
        await fsyncDirOf(path);
        return { bytes: desired, written: true };
      }
      written = true;
      const displaced = await readFile(temp);
      if (displaced.equals(atPath)) {
        await fsyncDirOf(path);
        return { bytes: desired, written };
      }
      // The primary wrote between our compare and the exchange: its write is `displaced`; merge it.
      base = displaced;
      atPath = desired;
    } finally {
      await rm(temp, { force: true });
    }
  }
  throw new InstallerError(`${path} kept changing while our entry was being added; retrying on the next change`);
}

/**
 * Records what a config held before the write that changes it: a state dir that cannot be written (full,
 * read-only) then fails the pass with the file as it was, instead of leaving our entry in it with no record
 * of the original (which uninstall could then only approximate).
 */
async function recordBeforeWriting(o: InstallOptions, state: InstallState, record: ConfigRecord): Promise<void> {
  upsert(state, record);
  await saveState(o.stateDir, state);
}

/**
 * The configs we had put our entry into that no longer hold it (rewritten without it, renamed or deleted):
 * each is a removal by someone else, counted once, since the pass that finds it either puts the entry back
 * (a new record) or, while held, marks the record as without the entry.
 */
async function removedEntries(state: InstallState): Promise<ConfigRecord[]> {
  const removed: ConfigRecord[] = [];
  for (const record of state.configs.filter((r) => r.entryPresent)) {
    const current = await readIfExists(record.path);
    if (current !== undefined && sha256(current) === record.writtenSha256) continue;
    const verdict = current === undefined ? undefined : invalidReason(current, 'conflist');
    if (verdict === undefined || 'reason' in verdict || !hasOurEntry(verdict.parsed)) removed.push(record);
  }
  return removed;
}

/** While held (fight.ts): the config is left as the primary wrote it; records of removed entries say so. */
async function holdConfig(o: InstallOptions, state: InstallState, removed: ConfigRecord[]): Promise<ConfigOutcome> {
  for (const record of removed) upsert(state, { ...record, entryPresent: false });
  const { primary } = await chosenConfig(o.cniConfDir, o.cniConfFileName, notPrimary(o));
  return { action: 'held', path: primary?.path, removed: removed.map((r) => r.path) };
}

async function chainIntoPrimary(o: InstallOptions, state: InstallState, hold: PassOptions['hold']): Promise<ConfigOutcome> {
  const removed = await removedEntries(state);
  if (hold?.(removed.map((r) => r.path))) return holdConfig(o, state, removed);
  const { primary, skipped, reason } = await chosenConfig(o.cniConfDir, o.cniConfFileName, notPrimary(o));
  if (!primary) {
    return { action: 'waiting', reason: reason ?? `no valid network config in ${o.cniConfDir} yet`, skipped, removed: removed.map((r) => r.path) };
  }
  const hadEntryBefore = state.configs.some((r) => r.entryPresent);
  let path: string;
  let convertedFrom: string | undefined;
  let action: 'inserted' | 'reinserted' | 'unchanged';

  if (primary.kind === 'conflist') {
    path = await writeTarget(primary.path);
    const mode = await modeOf(path, CONFIG_MODE);
    const record = recordFor(state, path, primary.bytes, mode);
    const merge = (bytes: Buffer) => Buffer.from(insertIntoConflistText(bytes.toString('utf8'), o.pluginConfig));
    const planned = merge(primary.bytes);
    if (!planned.equals(primary.bytes)) await recordBeforeWriting(o, state, { ...record, writtenSha256: sha256(planned), entryPresent: true });
    const { bytes: desired, written } = await replacePrimary(o, path, primary.bytes, merge, mode);
    action = written ? (hadEntryBefore ? 'reinserted' : 'inserted') : 'unchanged';
    upsert(state, { ...record, writtenSha256: sha256(desired), entryPresent: true });
  } else {
    convertedFrom = primary.path;
    path = await conversionTarget(state, primary.path);
    const mode = await modeOf(primary.path, CONFIG_MODE);
    const desired = Buffer.from(convertConfText(primary.bytes.toString('utf8'), o.pluginConfig));
    await recordBeforeWriting(o, state, {
      path,
      original: primary.bytes.toString('base64'),
      originalMode: mode,
      exact: true,
      convertedFrom,
      writtenSha256: sha256(desired),
      entryPresent: true,
    });
    // The conflist first, then the .conf goes: a moment without our entry rather than one without any network.
    await writeFileAtomic(path, desired, mode);
    await removeIfExists(primary.path);
    action = hadEntryBefore ? 'reinserted' : 'inserted';
  }

  const released = await releaseAll(state, path);
  return { action, path, convertedFrom, released, removed: removed.map((r) => r.path) };
}

/**
 * Standalone (chained: false, standalone-config.ts): our own file, then our entry out of any primary config an
 * earlier chained install put it in (the mode changed), so no pod passes through mesh-cni twice.
 */
async function writeStandalone(o: InstallOptions, state: InstallState): Promise<ConfigOutcome> {
  const outcome = await writeOwnConf(o, state);
  if (outcome.action === 'waiting' || outcome.action === 'held') return outcome;
  outcome.released.push(...(await releaseAll(state)));
  return outcome;
}

/** The config half of readiness, by mode: our own file (standalone), our owned config, or our entry in the primary's. */
async function configInPlace(o: InstallOptions): Promise<Pick<InstallStatus, 'activeConfig' | 'entryInActiveConfig' | 'ownedConfig'>> {
  if (writesOwnConf(o)) {
    const own = await ownConfInPlace(o);
    return { activeConfig: own.path, entryInActiveConfig: own.inPlace };
  }
  if (o.ownedConfig) return checkOwned(o);
  const { primary } = await chosenConfig(o.cniConfDir, o.cniConfFileName, notPrimary(o));
  return { activeConfig: primary?.path, entryInActiveConfig: primary !== undefined && primary.kind === 'conflist' && isChainedLast(primary.parsed) };
}

/** What is installed right now, read from disk (what readiness reports). */
export async function checkInstalled(o: InstallOptions): Promise<InstallStatus> {
  const paths = installedPaths(o);
  const binaries: InstallStatus['binaries'] = [];
  const [have, want] = await Promise.all([readIfExists(paths.shim), readIfExists(o.shimPath)]);
  binaries.push({ path: paths.shim, inPlace: have !== undefined && want !== undefined && have.equals(want) });
  const digest = await treeDigest(o.enginePath).catch(() => undefined);
  binaries.push({ path: paths.engine, inPlace: digest !== undefined && (await engineInPlace(o.cniBinDir, digest)) });
  const { activeConfig, entryInActiveConfig, ownedConfig } = await configInPlace(o);
  const kubeconfig = o.kubeconfig ? { path: o.kubeconfig.outPath, present: await exists(o.kubeconfig.outPath) } : undefined;
  return {
    ready: entryInActiveConfig && binaries.every((b) => b.inPlace) && (kubeconfig?.present ?? true),
    activeConfig,
    entryInActiveConfig,
    ...(ownedConfig ? { ownedConfig } : {}),
    binaries,
    kubeconfig,
  };
}

export interface PassOptions {
  /**
   * Hears the configs whose entry was removed since our last write (every pass, often none) and answers
   * whether to leave the config alone this pass: the watch's fight guard (fight.ts).
   */
  hold?: (removed: string[]) => boolean;
}

/** One pass: make the node hold our binaries, kubeconfig and config entry. Safe to repeat; do not run two at once. */
export async function install(o: InstallOptions, pass: PassOptions = {}): Promise<InstallReport> {
  validate(o);
  const state = await loadState(o.stateDir);
  const before = JSON.stringify(state);
  const binaries = await installBinaries(o);
  for (const b of binaries) if (!state.ownedFiles.includes(b.path)) state.ownedFiles.push(b.path);
  // An earlier install's single-file engine: the shim would still find it if the directory went missing.
  const legacy = installedPaths(o).legacyEngine;
  if (state.ownedFiles.includes(legacy)) {
    await removeIfExists(legacy);
    state.ownedFiles = state.ownedFiles.filter((f) => f !== legacy);
  }

  let kubeconfig: InstallReport['kubeconfig'];
  if (o.kubeconfig) {
    await mkdir(dirname(o.kubeconfig.outPath), { recursive: true });
    const text = await buildKubeconfig(o.kubeconfig);
    kubeconfig = { path: o.kubeconfig.outPath, action: await writeIfChanged(o.kubeconfig.outPath, text, KUBECONFIG_MODE) };
    if (!state.ownedFiles.includes(kubeconfig.path)) state.ownedFiles.push(kubeconfig.path);
  }

  await mkdir(o.cniConfDir, { recursive: true });
  const config = writesOwnConf(o)
    ? await writeStandalone(o, state)
    : o.ownedConfig
      ? await writeOwnedConfig(o, state, { hold: pass.hold, releaseChained: () => releaseAll(state) })
      : await chainIntoPrimary(o, state, pass.hold);
  // Any mode but the owned config: ours goes (chained: after the entry is in the primary's file; owned-config.ts).
  if (!o.standaloneConf && !o.ownedConfig) {
    const dropped = await dropOwnedConfig(o, state);
    if ('released' in config) config.released.push(...dropped);
  }
  const staleOwn = await removeStaleOwnConfs(o, state);
  if (JSON.stringify(state) !== before) await saveState(o.stateDir, state);

  const wrote = (a: WriteAction | undefined) => a === 'written';
  const changed =
    binaries.some((b) => wrote(b.action)) ||
    wrote(kubeconfig?.action) ||
    config.action === 'inserted' ||
    config.action === 'reinserted' ||
    (config.action === 'unchanged' && config.released.length > 0) ||
    staleOwn.length > 0;
  return { binaries, kubeconfig, config, changed, status: await checkInstalled(o) };
}
