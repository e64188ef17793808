/**
 * Standalone mode (Istio's `chained: false`): instead of chaining into the primary CNI's config, the installer
 * writes its own config file holding only mesh-cni, and never touches the primary's file. This is what Multus
 * (and OpenShift, where Multus is the primary) wants: Multus invokes the file as an additional network for
 * the pods that name it (a NetworkAttachmentDefinition without spec.config, which Multus resolves to the file
 * in its conf dir whose network `name` is the NAD's name). That name is Istio's, `istio-cni`: Istio's sidecar
 * injector (pilot.cni.provider=multus) adds `k8s.v1.cni.cncf.io/networks: default/istio-cni` to every pod it
 * injects, so the chart's NAD is default/istio-cni and the file must answer to that name.
 *
 * The file's name: cniConfFileName when given (as Istio's CNI_CONF_NAME means in standalone mode), else
 * DEFAULT_STANDALONE_CONF_NAME. A `.conflist` name gets a conflist with our one entry; a `.conf` or `.json`
 * name gets a single plugin config (libcni reads a `.conf` as one plugin, so a list there would be refused).
 *
 * The demo's own conflist (InstallOptions.standaloneConf: bridge + host-local + ours, 10-mesh-cni.conflist,
 * for a node with no primary CNI) is written by the same code.
 */
import { join } from 'node:path';
import { readIfExists, removeIfExists, writeIfChanged } from './atomic-file';
import { isOurs, PLUGIN_TYPE } from './conflist';
import { invalidReason, kindOf, type ConfigKind } from './primary-config';
import type { InstallState } from './state';
import type { ConfigOutcome, InstallOptions } from './types';

/**
 * Istio writes `YYY-istio-cni.conf`, meant to sort after the primary's `NN-name` files. An upper-case Y sorts
 * before any lower-case name (`calico.conflist`, `flannel.conf`), where the runtime would then take our file as
 * the pod network; `zzz-` sorts after every usual name, so the runtime never picks ours over a primary.
 */
export const DEFAULT_STANDALONE_CONF_NAME = 'zzz-mesh-cni.conflist';
/** The demo's conflist (standaloneConf): the only network on its node, so it may sort first. */
export const DEMO_CONF_NAME = '10-mesh-cni.conflist';
/** The network `name` inside the file: the NetworkAttachmentDefinition's name, by which Multus finds the file. */
export const STANDALONE_NETWORK_NAME = 'istio-cni';
/** The demo's network name (its conflist is the node's only network). */
export const DEMO_NETWORK_NAME = 'mesh-cni';
const CONFIG_MODE = 0o644;

/** Whether this install writes its own config file (standalone or the demo) rather than chaining. */
export function writesOwnConf(o: Pick<InstallOptions, 'chained' | 'standaloneConf'>): boolean {
  return o.chained === false || o.standaloneConf === true;
}

/** Our own config file's name, or why the name given cannot be one. */
export function ownConfName(o: Pick<InstallOptions, 'cniConfFileName' | 'standaloneConf'>): { name: string; kind: ConfigKind } | { reason: string } {
  if (o.standaloneConf) return { name: DEMO_CONF_NAME, kind: 'conflist' };
  const name = o.cniConfFileName || DEFAULT_STANDALONE_CONF_NAME;
  if (name.includes('/') || name === '.' || name === '..') return { reason: `cniConfFileName must be a file name, not a path: ${name}` };
  const kind = kindOf(name);
  if (!kind) return { reason: `cniConfFileName ${name} does not end in .conf, .conflist or .json: neither the runtime nor Multus would read it` };
  return { name, kind };
}

export function ownConfPath(o: Pick<InstallOptions, 'cniConfDir' | 'cniConfFileName' | 'standaloneConf'>): string | undefined {
  const chosen = ownConfName(o);
  return 'name' in chosen ? join(o.cniConfDir, chosen.name) : undefined;
}

function versionOf(entry: Record<string, unknown>): string {
  return typeof entry.cniVersion === 'string' ? entry.cniVersion : '1.0.0';
}

/** The file's text: a conflist of `before` (the demo's plugins) and our entry, or our entry as one plugin. */
export function ownConfText(entry: Record<string, unknown>, kind: ConfigKind, before: Array<Record<string, unknown>> = [], name = STANDALONE_NETWORK_NAME): string {
  const cniVersion = versionOf(entry);
  const value = kind === 'conflist' ? { cniVersion, name, plugins: [...before, entry] } : { cniVersion, name, ...entry };
  return `${JSON.stringify(value, null, 2)}\n`;
}

/**
 * Whether the bytes are a standalone config of ours: a valid config whose plugins are all mesh-cni (a conflist
 * holding only our entry, or a single plugin config of our type). Anything else is someone else's file.
 */
export function isOwnConfContent(bytes: Buffer, kind: ConfigKind): boolean {
  const verdict = invalidReason(bytes, kind);
  if ('reason' in verdict) return false;
  if (kind === 'conf') return verdict.parsed.type === PLUGIN_TYPE;
  const plugins = verdict.parsed.plugins as unknown[];
  return plugins.length > 0 && plugins.every(isOurs);
}

/**
 * Writes our own config file when its content differs. A file of that name that is not ours (cniConfFileName
 * naming the primary's file, as it does in chained mode) is left alone and the pass waits, saying so.
 */
export async function writeOwnConf(o: InstallOptions, state: InstallState): Promise<ConfigOutcome> {
  const chosen = ownConfName(o);
  if ('reason' in chosen) return { action: 'waiting', reason: chosen.reason, skipped: [], removed: [] };
  const path = join(o.cniConfDir, chosen.name);
  const current = await readIfExists(path);
  if (current !== undefined && !o.standaloneConf && !state.ownedFiles.includes(path) && !isOwnConfContent(current, chosen.kind)) {
    return {
      action: 'waiting',
      reason: `${path} holds another network's config; with chained: false mesh-cni writes a file of its own and never changes another's: set cniConfFileName to a new name (or leave it empty for ${DEFAULT_STANDALONE_CONF_NAME})`,
      skipped: [],
      removed: [],
    };
  }
  const text = o.standaloneConf ? ownConfText(o.pluginConfig, chosen.kind, o.standalonePlugins, DEMO_NETWORK_NAME) : ownConfText(o.pluginConfig, chosen.kind);
  const written = await writeIfChanged(path, text, CONFIG_MODE);
  if (!state.ownedFiles.includes(path)) state.ownedFiles.push(path);
  const action = written === 'unchanged' ? 'unchanged' : current === undefined ? 'inserted' : 'reinserted';
  return { action, path, released: [], removed: [] };
}

/**
 * Own config files an earlier pass wrote that this one no longer wants (the mode went back to chained, or
 * cniConfFileName changed): removed, so Multus and the runtime never read a stale mesh-cni network. Only files
 * in the conf dir with a config's name are considered (the kubeconfig there has none).
 */
export async function removeStaleOwnConfs(o: InstallOptions, state: InstallState): Promise<string[]> {
  const keep = writesOwnConf(o) ? ownConfPath(o) : undefined;
  const removed: string[] = [];
  for (const path of state.ownedFiles) {
    // The owned config (owned-config.ts) is kept or dropped by its own code.
    if (path === keep || path === state.ownedConfig?.path || !path.startsWith(`${o.cniConfDir}/`) || path.slice(o.cniConfDir.length + 1).includes('/')) continue;
    const kind = kindOf(path);
    if (!kind) continue;
    const current = await readIfExists(path);
    // The demo's conflist carries other plugins; any file that is no longer our own content is not ours to delete.
    if (current !== undefined && (isOwnConfContent(current, kind) || path.endsWith(`/${DEMO_CONF_NAME}`))) await removeIfExists(path);
    removed.push(path);
  }
  state.ownedFiles = state.ownedFiles.filter((p) => !removed.includes(p));
  return removed;
}

/** Readiness in standalone mode: our own file is in place, valid, and holds our entry as the last plugin. */
export async function ownConfInPlace(o: InstallOptions): Promise<{ path?: string; inPlace: boolean }> {
  const chosen = ownConfName(o);
  if ('reason' in chosen) return { inPlace: false };
  const path = join(o.cniConfDir, chosen.name);
  const bytes = await readIfExists(path);
  if (bytes === undefined) return { path, inPlace: false };
  const verdict = invalidReason(bytes, chosen.kind);
  if ('reason' in verdict) return { path, inPlace: false };
  if (chosen.kind === 'conf') return { path, inPlace: verdict.parsed.type === PLUGIN_TYPE };
  const plugins = verdict.parsed.plugins as unknown[];
  return { path, inPlace: isOurs(plugins[plugins.length - 1]) && plugins.filter(isOurs).length === 1 };
}
