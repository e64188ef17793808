/**
 * Puts the node back. A config no one else touched since our last write gets its recorded original bytes back
 * (and a converted .conf returns in place of our .conflist); a config someone else changed only loses our
 * entry. Then the files we own go. With dryRun the same plan is returned and nothing is written.
 */
import { join } from 'node:path';
import { lstat, readdir, rm } from 'node:fs/promises';
import { exists, modeOf, readIfExists, removeIfExists, sha256, writeFileAtomic } from './atomic-file';
import { hasOurEntry, isChainedLast, removeFromConflistText } from './conflist';
import { installedPaths } from './install';
import { engineVersions, removeEngineDir } from './engine-dir';
import { kindOf, listConfFiles, invalidReason } from './primary-config';
import { ownedConfigPath } from './owned-config';
import { loadState, STATE_FILE, type ConfigRecord } from './state';
import type { InstallOptions, UninstallAction, UninstallReport } from './types';
import { STATE_FILES } from '../defaults';
import { isOwnConfContent, ownConfPath, writesOwnConf } from './standalone-config';

const ATTACHMENTS_DIR = STATE_FILES.attachments;
const KEPT_DETECTION_FILE = STATE_FILES.keptDetection;

interface Step extends UninstallAction {
  apply?: () => Promise<void>;
}


/** Our entry taken out of a conflist someone else has also changed; everything else of theirs stays. */
async function removeEntryStep(path: string, current: Buffer, why: string): Promise<Step | undefined> {
  const verdict = invalidReason(current, 'conflist');
  if ('reason' in verdict || !hasOurEntry(verdict.parsed)) return undefined;
  const mode = await modeOf(path, 0o644);
  const stripped = removeFromConflistText(current.toString('utf8'));
  return {
    action: 'remove-entry',
    path,
    detail: `remove the mesh-cni entry (${why})`,
    apply: () => writeFileAtomic(path, stripped, mode),
  };
}

async function stepsForRecord(record: ConfigRecord): Promise<Step[]> {
  const current = await readIfExists(record.path);
  if (current === undefined) {
    return [{ action: 'leave', path: record.path, detail: 'no longer exists (removed or renamed by another component); nothing to restore' }];
  }
  const untouched = record.exact && sha256(current) === record.writtenSha256;
  const original = Buffer.from(record.original, 'base64');
  if (untouched && record.convertedFrom !== undefined) {
    const conf = record.convertedFrom;
    if (await exists(conf)) {
      // The primary CNI has written its .conf again since; that file is the config now, ours only goes.
      return [{ action: 'delete-file', path: record.path, detail: `delete the conflist converted from ${conf} (${conf} exists again)`, apply: async () => void (await removeIfExists(record.path)) }];
    }
    return [
      { action: 'restore-conf', path: conf, detail: `restore the original ${conf} (${original.length} bytes) that was converted to ${record.path}`, apply: () => writeFileAtomic(conf, original, record.originalMode) },
      { action: 'delete-file', path: record.path, detail: `delete the conflist converted from ${conf}`, apply: async () => void (await removeIfExists(record.path)) },
    ];
  }
  if (untouched) {
    return [{ action: 'restore-original', path: record.path, detail: `restore the original bytes (${original.length} bytes, unchanged since install)`, apply: () => writeFileAtomic(record.path, original, record.originalMode) }];
  }
  const why = record.exact ? 'the file was changed by another component since install' : 'no exact original was recorded';
  const step = await removeEntryStep(record.path, current, why);
  return step ? [step] : [{ action: 'leave', path: record.path, detail: `${why}; it holds no mesh-cni entry` }];
}

export async function planUninstall(o: InstallOptions): Promise<Step[]> {
  const state = await loadState(o.stateDir);
  const steps: Step[] = [];
  for (const record of state.configs) steps.push(...(await stepsForRecord(record)));

  // Entries with no record (the state was lost, e.g. /var/run cleared by a reboot): take them out too.
  const planned = new Set(steps.map((s) => s.path));
  const owned = new Set(state.ownedFiles);
  // Standalone: our own file goes even when the record was lost, but only while it holds nothing but mesh-cni.
  const ownConf = writesOwnConf(o) ? ownConfPath(o) : undefined;
  if (ownConf !== undefined) {
    const bytes = await readIfExists(ownConf);
    const kind = kindOf(ownConf);
    if (bytes !== undefined && (o.standaloneConf || (kind !== undefined && isOwnConfContent(bytes, kind)))) owned.add(ownConf);
  }
  for (const name of await listConfFiles(o.cniConfDir)) {
    const path = join(o.cniConfDir, name);
    if (planned.has(path) || owned.has(path) || kindOf(name) !== 'conflist') continue;
    const current = await readIfExists(path);
    if (path === ownedConfigPath(o) && current) {
      // Our owned config (owned-config.ts) found with no record: it goes whole. Stripped of our entry it would be
      // a stale copy of the primary's config that the runtime keeps reading first.
      const verdict = invalidReason(current, 'conflist');
      if (!('reason' in verdict) && isChainedLast(verdict.parsed)) {
        steps.push({ action: 'delete-file', path, detail: 'our owned config, found with no install record', apply: async () => void (await removeIfExists(path)) });
      }
      continue;
    }
    const step = current && (await removeEntryStep(path, current, 'found with no install record'));
    if (step) steps.push(step);
  }

  const paths = installedPaths(o);
  const files = new Set([...owned, paths.shim, paths.legacyEngine, ...(o.kubeconfig ? [o.kubeconfig.outPath] : [])]);
  files.delete(paths.engine);
  for (const path of files) {
    if (await exists(path)) {
      steps.push({ action: 'delete-file', path, detail: 'installed by mesh-cni', apply: async () => void (await removeIfExists(path)) });
    }
  }
  // What ADD recorded per pod (src/state/attachments.ts): only the plugin and reconciler read it, and both go.
  const attachmentDirs = new Set([join(o.stateDir, ATTACHMENTS_DIR)]);
  if (typeof o.pluginConfig.state_dir === 'string') attachmentDirs.add(join(o.pluginConfig.state_dir, ATTACHMENTS_DIR));
  for (const dir of attachmentDirs) {
    const records = await readdir(dir).catch(() => undefined);
    if (records === undefined) continue;
    steps.push({
      action: 'delete-file',
      path: dir,
      detail: `the plugin's attachment records (${records.length} file${records.length === 1 ? '' : 's'})`,
      apply: () => rm(dir, { recursive: true, force: true }),
    });
  }
  for (const dir of new Set([o.stateDir, ...(typeof o.pluginConfig.state_dir === 'string' ? [o.pluginConfig.state_dir] : [])])) {
    const kept = join(dir, KEPT_DETECTION_FILE);
    if (await exists(kept)) {
      steps.push({ action: 'delete-file', path: kept, detail: "the standalone plugin's remembered `auto` backend", apply: async () => void (await removeIfExists(kept)) });
    }
  }
  const hold = join(o.stateDir, STATE_FILES.installHold);
  if (await exists(hold)) {
    steps.push({ action: 'delete-file', path: hold, detail: "the agent's hold on a primary CNI that kept removing our entry", apply: async () => void (await removeIfExists(hold)) });
  }
  const versions = await engineVersions(o.cniBinDir);
  if (versions.length > 0 || (await lstat(paths.engine).catch(() => undefined))) {
    steps.push({
      action: 'delete-file',
      path: paths.engine,
      detail: `installed by mesh-cni: the standalone engine directory (${versions.length} version${versions.length === 1 ? '' : 's'})`,
      apply: () => removeEngineDir(o.cniBinDir),
    });
  }
  return steps;
}

/**
 * Undo install. Configs first, binaries last, so no config ever names a plugin that is gone. The state record
 * is removed at the end (kept if a step fails, so a second run can finish the job).
 */
export async function uninstall(o: InstallOptions, options: { dryRun?: boolean } = {}): Promise<UninstallReport> {
  const steps = await planUninstall(o);
  const dryRun = options.dryRun === true;
  if (!dryRun) {
    for (const step of steps) await step.apply?.();
    await rm(join(o.stateDir, STATE_FILE), { force: true });
  }
  return { dryRun, actions: steps.map(({ action, path, detail }) => ({ action, path, detail })) };
}
