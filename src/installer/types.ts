import type { WriteAction } from './atomic-file';
import type { KubeconfigSource } from './kubeconfig';

export interface InstallOptions {
  /** host CNI binary dir as mounted in the agent's pod, e.g. /host/opt/cni/bin */
  cniBinDir: string;
  /** host CNI config dir as mounted in the agent's pod, e.g. /host/etc/cni/net.d */
  cniConfDir: string;
  /** the built native shim (build/mesh-cni), installed as <cniBinDir>/mesh-cni */
  shimPath: string;
  /** the self-contained engine directory (build/engine, from scripts/build-engine.js), installed as
   * <cniBinDir>/mesh-cni.d/ (where the shim looks for mesh-cni.d/mesh-cni.js) */
  enginePath: string;
  /** our conflist entry; its `type` must be 'mesh-cni'. Paths inside it are host paths, not /host/... */
  pluginConfig: Record<string, unknown>;
  /** write a kubeconfig for the plugin from the service account; omitted with --no-kubernetes */
  kubeconfig?: KubeconfigSource;
  /**
   * Istio's `chained`. true or unset: our entry is chained last into the primary CNI's config. false
   * (standalone, for Multus and OpenShift): our own config file holding only mesh-cni, named cniConfFileName
   * or zzz-mesh-cni.conflist, and the primary's file is never touched (src/installer/standalone-config.ts).
   */
  chained?: boolean;
  /** the demo's node with no primary CNI: our own 10-mesh-cni.conflist with standalonePlugins before our entry */
  standaloneConf?: boolean;
  /** with standaloneConf: plugins placed before ours in that conflist (e.g. bridge + host-local for a demo) */
  standalonePlugins?: Array<Record<string, unknown>>;
  /**
   * Istio's cniConfFileName: chain into this file of cniConfDir (a name, not a path) instead of the first valid
   * config; while it is absent or invalid the pass waits and says so. Empty or unset: the runtime's choice.
   * With chained: false it names our own file instead (as Istio's CNI_CONF_NAME does).
   */
  cniConfFileName?: string;
  /**
   * Istio's istioOwnedCNIConfig: leave the primary's file alone and write our own conflist (the primary's plugins
   * in order, then ours) under `ownedConfigFileName`, which sorts first (owned-config.ts).
   */
  ownedConfig?: boolean;
  /** Istio's istioOwnedCNIConfigFileName, a name in cniConfDir ending in .conflist; empty or unset: 02-mesh-cni.conflist */
  ownedConfigFileName?: string;
  /** where the record of what we changed lives (e.g. /var/run/mesh-cni): uninstall reads it */
  stateDir: string;
  /**
   * renameat2(RENAME_EXCHANGE) (src/netns/native.ts, the one native seam): false where the kernel or the
   * filesystem lacks it. Without it the primary's conflist is replaced by compare-then-rename alone, which
   * leaves a window of microseconds in which a rewrite by the primary CNI could be lost.
   */
  renameExchange?: (a: string, b: string) => boolean;
}

export type ConfigOutcome =
  | { action: 'waiting'; reason: string; skipped: Array<{ path: string; reason: string }>; removed: string[] }
  /** the primary keeps removing our entry (fight.ts): the config was left as it is; `path` is the active config */
  | { action: 'held'; path?: string; removed: string[] }
  | {
      /** inserted: first write; reinserted: our entry had been taken out or changed by someone else; unchanged: already right */
      action: 'inserted' | 'reinserted' | 'unchanged';
      path: string;
      /** the lone .conf this pass converted into `path` (and removed) */
      convertedFrom?: string;
      /** formerly active configs our entry was taken out of because another file became the active one */
      released: string[];
      /** configs that held our entry after our last write and no longer do: removed by someone else */
      removed: string[];
    };

export interface InstallReport {
  binaries: Array<{ path: string; action: WriteAction }>;
  kubeconfig?: { path: string; action: WriteAction };
  config: ConfigOutcome;
  /** whether anything on disk changed in this pass */
  changed: boolean;
  status: InstallStatus;
}

export interface InstallStatus {
  /**
   * the active config has our entry as its last plugin and both binaries match their sources; standalone: our
   * own file (then `activeConfig`) is in place with our entry
   */
  ready: boolean;
  activeConfig?: string;
  entryInActiveConfig: boolean;
  /** with ownedConfig: our own conflist and the primary's file it copies (absent while there is none) */
  ownedConfig?: { path: string; primary?: string; written: boolean };
  binaries: Array<{ path: string; inPlace: boolean }>;
  kubeconfig?: { path: string; present: boolean };
}

export type UninstallActionKind = 'restore-original' | 'restore-conf' | 'remove-entry' | 'delete-file' | 'leave';

export interface UninstallAction {
  action: UninstallActionKind;
  path: string;
  detail: string;
}

export interface UninstallReport {
  dryRun: boolean;
  actions: UninstallAction[];
}
