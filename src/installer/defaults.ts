/**
 * Defaults the agent and CLI share, and the conflist entry built from the agent's settings. The agent sees the
 * host's dirs under /host; the entry it writes is read by the runtime on the host, so its paths are host paths.
 */
import { join } from 'node:path';
import type { KubeconfigSource } from './kubeconfig';
import { PLUGIN_TYPE } from './conflist';

export const DEFAULT_CNI_BIN_DIR = '/host/opt/cni/bin';
export const DEFAULT_CNI_CONF_DIR = '/host/etc/cni/net.d';
export const HOST_CNI_CONF_DIR = '/etc/cni/net.d';
export { DEFAULT_STATE_DIR } from '../defaults';
/** no .conf/.conflist/.json ending, so the runtime never reads it as a network config */
export const KUBECONFIG_NAME = 'mesh-cni-kubeconfig';
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface PluginEntrySettings {
  backend?: string;
  logLevel?: string;
  /** the plugin's request log (default /var/log/mesh-cni/cni.log) */
  logFile?: string;
  /** host path of the kubeconfig written by install; omit with --no-kubernetes */
  kubeconfig?: string;
  excludeNamespaces?: string[];
  /** where ADD records attachments; the agent's reconciler reads the same place */
  stateDir?: string;
  /** ambient as the agent serves it: the standalone engine reads it to know (and refuse) an ambient pod */
  ambient?: { enablementSelectors?: unknown[]; systemNamespace?: string };
}

/** Our conflist entry (fields as src/cni/netconf.ts validates them). */
export function pluginEntry(s: PluginEntrySettings = {}): Record<string, unknown> {
  const entry: Record<string, unknown> = {
    type: PLUGIN_TYPE,
    // The runtime then passes the pod's annotations, so ADD can decide without an API call.
    capabilities: { 'io.kubernetes.cri.pod-annotations': true },
  };
  if (s.logLevel) entry.log_level = s.logLevel;
  if (s.logFile) entry.log_file = s.logFile;
  if (s.backend) entry.backend = s.backend;
  if (s.stateDir) entry.state_dir = s.stateDir;
  if (s.ambient) {
    entry.ambient = {
      enabled: true,
      ...(s.ambient.enablementSelectors ? { enablement_selectors: s.ambient.enablementSelectors } : {}),
      ...(s.ambient.systemNamespace ? { system_namespace: s.ambient.systemNamespace } : {}),
    };
  }
  if (s.kubeconfig || s.excludeNamespaces) {
    entry.kubernetes = {
      ...(s.kubeconfig ? { kubeconfig: s.kubeconfig } : {}),
      ...(s.excludeNamespaces ? { exclude_namespaces: s.excludeNamespaces } : {}),
    };
  }
  return entry;
}

/** Where the in-cluster kubeconfig comes from: the pod's service account and the kubelet's env. */
export function serviceAccountKubeconfig(env: NodeJS.ProcessEnv, cniConfDir = DEFAULT_CNI_CONF_DIR): KubeconfigSource {
  return {
    tokenPath: join(SERVICE_ACCOUNT_DIR, 'token'),
    caPath: join(SERVICE_ACCOUNT_DIR, 'ca.crt'),
    host: env.KUBERNETES_SERVICE_HOST ?? '',
    port: env.KUBERNETES_SERVICE_PORT ?? '',
    outPath: join(cniConfDir, KUBECONFIG_NAME),
  };
}
