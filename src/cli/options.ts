/** Options several commands share: how a pod's config is given, which backend, which netns. */
import type { Options } from 'yargs';
import { parseAnnotationArgs, redirectConfigFromAnnotations, type RedirectConfig } from '../redirect/config';
import { BACKEND_NAMES, type BackendName } from '../redirect/engine';
import { REPAIR_MODES, type RepairMode } from '../repair/reconciler';

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
} satisfies Record<string, Options>;

export const backendOption = {
  backend: { choices: BACKEND_NAMES, default: 'auto' as BackendName, describe: 'how rules are programmed (auto: what this node already uses)' },
  'host-netns': { type: 'string', describe: "where --backend auto looks for the node's rules (default: this process's netns)" },
} satisfies Record<string, Options>;

export const netnsOption = {
  netns: { type: 'string', demandOption: true, describe: 'the pod network namespace, e.g. /var/run/netns/NAME or /proc/PID/ns/net' },
} satisfies Record<string, Options>;

export interface ConfigArgs {
  annotation: string[];
  'proxy-uid'?: number;
  'proxy-gid'?: number;
  'dns-capture': boolean;
}

export function configFromArgs(args: ConfigArgs): RedirectConfig {
  return redirectConfigFromAnnotations(parseAnnotationArgs(args.annotation), {
    proxyUid: args['proxy-uid'],
    proxyGid: args['proxy-gid'],
    dnsCapture: args['dns-capture'],
  });
}

export const repairOptions = {
  'repair-mode': { choices: REPAIR_MODES, default: 'repair' as RepairMode, describe: 'what to do with a meshed pod whose rules are missing or wrong' },
  'repair-rate': { type: 'number', default: 5, describe: 'repair actions per second at most' },
  'repair-burst': { type: 'number', default: 10, describe: 'repair actions allowed at once after a quiet spell' },
  'exclude-namespaces': { type: 'string', array: true, default: ['kube-system'], describe: 'namespaces never redirected (as the netconf\'s kubernetes.exclude_namespaces)' },
  'proc-root': { type: 'string', default: '/proc', describe: "the host's /proc (the DaemonSet mounts it at /host/proc)" },
  ...backendOption,
} satisfies Record<string, Options>;

export interface RepairArgs {
  'repair-mode': RepairMode;
  'repair-rate': number;
  'repair-burst': number;
  'exclude-namespaces': string[];
  'proc-root': string;
  backend: BackendName;
}

export function repairSettings(args: RepairArgs) {
  return {
    mode: args['repair-mode'],
    ratePerSecond: args['repair-rate'],
    burst: args['repair-burst'],
    excludeNamespaces: args['exclude-namespaces'],
    procRoot: args['proc-root'],
    backend: args.backend,
  };
}
