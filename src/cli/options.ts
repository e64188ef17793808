/** Options several commands share: how a pod's config is given, which backend, which netns. */
import * as path from 'node:path';
import { BUNDLED_ENGINE, BUNDLED_SHIM } from '../installer/build-info';
import type { Options } from 'yargs';
import {
  DEFAULT_CNI_BIN_DIR,
  DEFAULT_CNI_CONF_DIR,
  DEFAULT_STATE_DIR,
  HOST_CNI_CONF_DIR,
  KUBECONFIG_NAME,
  OWNED_CONF_NAME,
  pluginEntry,
  serviceAccountKubeconfig,
  type InstallOptions,
} from '../installer';
import { parseAnnotationArgs, redirectConfigFromAnnotations, type RedirectConfig } from '../redirect/config';
import { BACKEND_NAMES, DEFAULT_AGENT_SOCKET, type BackendName } from '../defaults';
import { REPAIR_MODES, type RepairMode } from '../repair/reconciler';
import { DEFAULT_CRI_SOCKET } from '../repair/cri';
import { checkPodRef } from './pod-ref';
import { DEFAULT_AMBIENT_NODE, DEFAULT_HOST_PROBE_SNAT_IPV4, DEFAULT_HOST_PROBE_SNAT_IPV6, type AmbientNodeSettings } from '../redirect/ambient/config';
import * as net from 'node:net';
import { DEFAULT_ENABLEMENT_SELECTORS, parseEnablementSelectors } from '../mesh/enablement';
import type { AmbientSettings } from '../mesh/decision';

export const configOptions = {
  annotation: {
    alias: 'a',
    type: 'string',
    array: true,
    default: [] as string[],
    describe: 'a pod annotation KEY=VALUE (repeatable), e.g. traffic.sidecar.istio.io/excludeOutboundPorts=5432',
  },
  'proxy-uid': { type: 'number', describe: "the proxy's uid (default 1337)" },
  'proxy-gid': { type: 'number', describe: "the proxy's gid (default 1337)" },
  'dns-capture': { type: 'boolean', default: false, describe: "capture DNS to the agent on 15053 (Istio's ISTIO_META_DNS_CAPTURE)" },
  'invalid-drop': { type: 'boolean', default: false, describe: "drop conntrack-INVALID packets (Istio's INVALID_DROP)" },
} satisfies Record<string, Options>;

/**
 * The node-wide ambient settings, Istio's names beside ours: `plan --dataplane ambient` takes the probe
 * addresses, the agent all four (the chart's ambient.dnsCapture and ambient.ipv6 set the first two).
 */
export const hostProbeOptions = {
  'host-probe-snat-ip': { type: 'string', coerce: once('host-probe-snat-ip'), default: process.env.HOST_PROBE_SNAT_IP || DEFAULT_HOST_PROBE_SNAT_IPV4, describe: "where the node SNATs kubelet's probes to ambient pods (Istio's HOST_PROBE_SNAT_IP)" },
  'host-probe-snat-ipv6': { type: 'string', coerce: once('host-probe-snat-ipv6'), default: process.env.HOST_PROBE_SNAT_IPV6 || DEFAULT_HOST_PROBE_SNAT_IPV6, describe: "the same for IPv6 (Istio's HOST_PROBE_SNAT_IPV6)" },
} satisfies Record<string, Options>;

export interface HostProbeArgs {
  'host-probe-snat-ip': string;
  'host-probe-snat-ipv6': string;
}

/** Checks the probe addresses are addresses of their family (they go into rules as they are). */
export function checkHostProbe(args: { 'host-probe-snat-ip'?: unknown; 'host-probe-snat-ipv6'?: unknown }): true | string {
  const v4 = String(args['host-probe-snat-ip'] ?? DEFAULT_HOST_PROBE_SNAT_IPV4);
  const v6 = String(args['host-probe-snat-ipv6'] ?? DEFAULT_HOST_PROBE_SNAT_IPV6);
  if (net.isIPv4(v4) !== true) return `--host-probe-snat-ip ${JSON.stringify(v4)} is not an IPv4 address`;
  if (net.isIPv6(v6) !== true) return `--host-probe-snat-ipv6 ${JSON.stringify(v6)} is not an IPv6 address`;
  return true;
}

export function ambientNodeFromArgs(args: HostProbeArgs & { 'dns-capture'?: boolean; ipv6?: boolean }): AmbientNodeSettings {
  return {
    dnsCapture: args['dns-capture'] ?? DEFAULT_AMBIENT_NODE.dnsCapture,
    ipv6: args.ipv6 ?? DEFAULT_AMBIENT_NODE.ipv6,
    hostProbeSnatIpv4: args['host-probe-snat-ip'],
    hostProbeSnatIpv6: args['host-probe-snat-ipv6'],
  };
}

const envBool = (name: string, fallback: boolean) => {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v === 'true';
};

/**
 * Ambient mode as the agent runs it, for the agent and for the commands that decide as it does (`explain`,
 * `pods`). Each defaults to the environment variable the DaemonSet sets from the ConfigMap (Istio's names),
 * so `kubectl exec ds/mesh-cni -- mesh-cni explain` decides with the agent's settings.
 */
export const ambientOptions = {
  ambient: { type: 'boolean', default: envBool('AMBIENT_ENABLED', false), describe: "serve ambient pods: Istio's in-pod rules and ztunnel's ZDS socket (AMBIENT_ENABLED; the chart's ambient.enabled)" },
  'ambient-enablement-selectors': {
    type: 'string',
    coerce: once('ambient-enablement-selectors'),
    default: process.env.AMBIENT_ENABLEMENT_SELECTOR || undefined,
    describe: "which pods are ambient: a YAML list of {podSelector, namespaceSelector} (AMBIENT_ENABLEMENT_SELECTOR; default Istio's: pod label istio.io/dataplane-mode=ambient, or the namespace's unless the pod says none)",
  },
  'ambient-dns-capture': { type: 'boolean', default: envBool('AMBIENT_DNS_CAPTURE', true), describe: 'ambient pods send DNS to ztunnel on 15053 (AMBIENT_DNS_CAPTURE; a pod may say otherwise with ambient.istio.io/dns-capture)' },
  'ambient-ipv6': { type: 'boolean', default: envBool('AMBIENT_IPV6', true), describe: "program ambient pods' IPv6 rules too, where their netns has IPv6 (AMBIENT_IPV6)" },
  'istio-system-namespace': { type: 'string', coerce: once('istio-system-namespace'), default: process.env.SYSTEM_NAMESPACE || 'istio-system', describe: "Istio's namespace: its app=ztunnel pods are never captured (SYSTEM_NAMESPACE)" },
  ...hostProbeOptions,
} satisfies Record<string, Options>;

export interface AmbientArgs extends HostProbeArgs {
  ambient: boolean;
  'ambient-enablement-selectors'?: string;
  'ambient-dns-capture': boolean;
  'ambient-ipv6': boolean;
  'istio-system-namespace': string;
}

/** The decision's ambient options from the flags; undefined when ambient is off. */
export function ambientFromArgs(args: AmbientArgs): AmbientSettings | undefined {
  if (!args.ambient) return undefined;
  const selectors = args['ambient-enablement-selectors'] ? parseEnablementSelectors(args['ambient-enablement-selectors']) : DEFAULT_ENABLEMENT_SELECTORS;
  return {
    enabled: true,
    selectors,
    systemNamespace: args['istio-system-namespace'],
    node: ambientNodeFromArgs({ ...args, 'dns-capture': args['ambient-dns-capture'], ipv6: args['ambient-ipv6'] }),
  };
}

export const backendOption = {
  backend: { choices: BACKEND_NAMES, default: 'auto' as BackendName, describe: 'how rules are programmed (auto: what this node already uses)' },
  'host-netns': { type: 'string', describe: "the node's own netns: where --backend auto looks for the node's rules, and where ambient's kubelet-probe rules go (default: this process's netns)" },
} satisfies Record<string, Options>;

export const netnsOption = {
  netns: { type: 'string', demandOption: true, describe: 'the pod network namespace, e.g. /var/run/netns/NAME or /proc/PID/ns/net' },
} satisfies Record<string, Options>;

/**
 * yargs turns a string option given twice into an array, which then reached code expecting one path (the
 * agent died with a TypeError on `--socket a --socket b`). A one-valued option given twice is a usage error.
 */
export function once(name: string): (value: string) => string {
  return (value: string | string[]) => {
    if (Array.isArray(value)) throw new Error(`--${name} was given ${value.length} times (${value.map((v) => JSON.stringify(String(v))).join(', ')}); give it once`);
    return value;
  };
}

/** Where the CLI finds this node's API, name, recorded attachments and agent; shared by every node command. */
export const nodeOptions = {
  kubeconfig: { type: 'string', coerce: once('kubeconfig'), describe: "a kubeconfig file; when absent, $KUBECONFIG's (as kubectl reads it), else the in-cluster service account" },
  'node-name': { type: 'string', coerce: once('node-name'), default: process.env.NODE_NAME, describe: "this node's name (default $NODE_NAME, from the downward API)" },
  'state-dir': { type: 'string', coerce: once('state-dir'), default: DEFAULT_STATE_DIR, describe: 'where install records what it changed and the plugin records attachments' },
  socket: { type: 'string', coerce: once('socket'), default: DEFAULT_AGENT_SOCKET, describe: "the agent's UNIX socket (the shim's, mode 0600, root only)" },
} satisfies Record<string, Options>;

export interface NodeArgs {
  kubeconfig?: string;
  'node-name'?: string;
  'state-dir': string;
  socket: string;
}

export const DEFAULT_EXCLUDE_NAMESPACES: readonly string[] = ['kube-system'];

export const excludeNamespacesOption = {
  'exclude-namespaces': {
    type: 'string',
    array: true,
    // No yargs default: it would also replace an explicit empty list (the DaemonSet passes
    // --exclude-namespaces= for none); excludedNamespaces() applies it.
    defaultDescription: DEFAULT_EXCLUDE_NAMESPACES.join(','),
    // The DaemonSet passes the ConfigMap's one comma-separated value (--exclude-namespaces=a,b).
    coerce: (values: string[]) => values.flatMap((v) => String(v).split(',')).map((v) => v.trim()).filter((v) => v !== ''),
    describe: "namespaces never redirected (the netconf's kubernetes.exclude_namespaces); repeat it or separate with commas",
  },
} satisfies Record<string, Options>;

/** The namespaces given, or the default when the flag is absent. */
export function excludedNamespaces(args: { 'exclude-namespaces'?: string[] }): string[] {
  return args['exclude-namespaces'] ?? [...DEFAULT_EXCLUDE_NAMESPACES];
}

/** Where a pod's netns is looked for when ADD recorded none: the runtime over CRI, then /proc, as the agent does. */
export const netnsLookupOptions = {
  'proc-root': { type: 'string', default: '/proc', describe: "the host's /proc (the DaemonSet mounts it at /host/proc)" },
  'cri-socket': { type: 'string', default: DEFAULT_CRI_SOCKET, describe: "the container runtime's CRI socket, to find the netns of pods whose ADD we never saw ('' : do not ask)" },
} satisfies Record<string, Options>;

export interface NetnsLookupArgs {
  'proc-root': string;
  'cri-socket': string;
}

/**
 * A pod's netns given directly (--netns) or found from the pod (--pod NAMESPACE/POD: the API for the pod, then
 * what ADD recorded or a /proc scan for its netns). Exactly one of the two; the check makes that a usage error.
 */
export const podOrNetnsOptions = {
  netns: { type: 'string', describe: 'the pod network namespace, e.g. /var/run/netns/NAME or /proc/PID/ns/net' },
  pod: { type: 'string', describe: 'NAMESPACE/POD: find the netns (and, for apply, the annotations) from the pod' },
  ...nodeOptions,
  ...netnsLookupOptions,
} satisfies Record<string, Options>;

export interface PodOrNetnsArgs extends NodeArgs, NetnsLookupArgs {
  netns?: string;
  pod?: string;
}

export function checkPodOrNetns(args: { netns?: unknown; pod?: unknown }): true | string {
  if (args.netns !== undefined && args.pod !== undefined) return 'give --netns or --pod, not both';
  if (args.netns === undefined && args.pod === undefined) return 'give --netns PATH or --pod NAMESPACE/POD';
  return checkPodRef(args.pod, '--pod');
}

export interface ConfigArgs {
  annotation: string[];
  'proxy-uid'?: number;
  'proxy-gid'?: number;
  'dns-capture': boolean;
  'invalid-drop'?: boolean;
}

export function configFromArgs(args: ConfigArgs): RedirectConfig {
  return redirectConfigFromAnnotations(parseAnnotationArgs(args.annotation), {
    proxyUid: args['proxy-uid'],
    proxyGid: args['proxy-gid'],
    dnsCapture: args['dns-capture'],
    invalidDrop: args['invalid-drop'] ?? false,
  });
}

export const repairOptions = {
  'repair-mode': { choices: REPAIR_MODES, default: 'repair' as RepairMode, describe: 'what to do with a meshed pod whose rules are missing or wrong' },
  'repair-rate': { type: 'number', default: 5, describe: 'repair actions per second at most' },
  'repair-burst': { type: 'number', default: 10, describe: 'repair actions allowed at once after a quiet spell' },
  ...netnsLookupOptions,
  ...backendOption,
} satisfies Record<string, Options>;

export interface RepairArgs extends NetnsLookupArgs {
  'repair-mode': RepairMode;
  'repair-rate': number;
  'repair-burst': number;
  'exclude-namespaces'?: string[];
  backend: BackendName;
}

export function repairSettings(args: RepairArgs) {
  return {
    mode: args['repair-mode'],
    ratePerSecond: args['repair-rate'],
    burst: args['repair-burst'],
    excludeNamespaces: excludedNamespaces(args),
    procRoot: args['proc-root'],
    criSocket: args['cri-socket'],
    backend: args.backend,
  };
}

export const installOptions = {
  'cni-bin-dir': { type: 'string', default: DEFAULT_CNI_BIN_DIR, describe: "the host's CNI binary dir as mounted here" },
  'cni-conf-dir': { type: 'string', default: DEFAULT_CNI_CONF_DIR, describe: "the host's CNI config dir as mounted here" },
  'host-cni-conf-dir': { type: 'string', default: HOST_CNI_CONF_DIR, describe: 'the same config dir as the runtime on the host sees it (for paths inside our entry)' },
  'cni-conf-file-name': {
    type: 'string',
    default: '',
    describe: "chain into this file of the config dir (Istio's cniConfFileName) instead of the first valid config; not ready while it is absent ('': the runtime's choice). With --chained=false: the name of our own file",
  },
  chained: {
    type: 'boolean',
    default: envBool('CHAINED_CNI_PLUGIN', true),
    describe: "Istio's chained: chain our entry into the primary CNI's config (true), or write our own config file holding only mesh-cni and never touch the primary's (false: standalone, for Multus; the file is --cni-conf-file-name or zzz-mesh-cni.conflist) (CHAINED_CNI_PLUGIN)",
  },
  'owned-cni-config': {
    type: 'boolean',
    default: envBool('ISTIO_OWNED_CNI_CONFIG', false),
    describe: "leave the primary's file alone: write our own conflist, sorting first, holding the primary's plugins and then ours (Istio's istioOwnedCNIConfig; ISTIO_OWNED_CNI_CONFIG)",
  },
  'owned-cni-config-file-name': {
    type: 'string',
    coerce: once('owned-cni-config-file-name'),
    default: process.env.ISTIO_OWNED_CNI_CONF_FILENAME ?? '',
    describe: `the owned config's name in the config dir, ending in .conflist and sorting before the primary's (Istio's istioOwnedCNIConfigFileName; ISTIO_OWNED_CNI_CONF_FILENAME; '': ${OWNED_CONF_NAME})`,
  },
  ...excludeNamespacesOption,
  'standalone-conf': { type: 'boolean', default: false, describe: 'write our own conflist instead of chaining into the primary CNI (nodes without one)' },
  'state-dir': nodeOptions['state-dir'],
  'log-level': { choices: ['debug', 'info', 'warn', 'error'] as const, default: 'info' as const, describe: "the plugin's log level (in our conflist entry)" },
  'plugin-log-file': { type: 'string', describe: "the plugin's request log as the host sees it (in our conflist entry; default /var/log/mesh-cni/cni.log)" },
} satisfies Record<string, Options>;

export interface InstallArgs {
  'cni-bin-dir': string;
  'cni-conf-dir': string;
  'host-cni-conf-dir': string;
  'cni-conf-file-name'?: string;
  'owned-cni-config'?: boolean;
  'owned-cni-config-file-name'?: string;
  /** Istio's chained; false: our own config file (standalone) */
  chained?: boolean;
  'standalone-conf': boolean;
  'state-dir': string;
  'log-level': string;
  'plugin-log-file'?: string;
  'exclude-namespaces'?: string[];
  backend: BackendName;
  socket?: string;
  /** write a kubeconfig from the service account (in a cluster) */
  kubernetes?: boolean;
  /** ambient on: our entry says so (and carries the selectors) */
  ambient?: AmbientSettings;
}

/** The exchange the installer swaps the primary's conflist with; koffi loads only when an install writes. */
function renameExchange(a: string, b: string): boolean {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return (require('../netns/native') as typeof import('../netns/native')).renameExchange(a, b);
}

export function installSettings(args: InstallArgs, env: NodeJS.ProcessEnv = process.env): InstallOptions {
  const inCluster = args.kubernetes !== false && Boolean(env.KUBERNETES_SERVICE_HOST);
  return {
    cniBinDir: args['cni-bin-dir'],
    cniConfDir: args['cni-conf-dir'],
    cniConfFileName: args['cni-conf-file-name'] || undefined,
    ownedConfig: args['owned-cni-config'] === true,
    ownedConfigFileName: args['owned-cni-config-file-name'] || undefined,
    chained: args.chained !== false,
    shimPath: BUNDLED_SHIM,
    enginePath: BUNDLED_ENGINE,
    pluginConfig: pluginEntry({
      backend: args.backend,
      logLevel: args['log-level'],
      logFile: args['plugin-log-file'],
      kubeconfig: inCluster ? path.join(args['host-cni-conf-dir'], KUBECONFIG_NAME) : undefined,
      excludeNamespaces: excludedNamespaces(args),
      stateDir: args['state-dir'] === DEFAULT_STATE_DIR ? undefined : args['state-dir'],
      ...(args.ambient ? { ambient: { enablementSelectors: args.ambient.selectors as unknown[], systemNamespace: args.ambient.systemNamespace } } : {}),
    }),
    kubeconfig: inCluster ? serviceAccountKubeconfig(env, args['cni-conf-dir']) : undefined,
    standaloneConf: args['standalone-conf'],
    stateDir: args['state-dir'],
    renameExchange,
  };
}
