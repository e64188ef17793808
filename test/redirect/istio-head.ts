/**
 * Istio HEAD's own rule goldens (test/golden/istio, see SOURCE.md there) and, for each, the pod that asks for
 * the same rules through Istio's CNI path, or why no pod can.
 *
 * Two sources:
 * - tools/istio-iptables/pkg/capture/run_test.go: istio-iptables driven directly with a config
 *   (constructTestConfig, then each case's changes). `captureConfig` below is that config.
 * - cni/pkg/plugin/plugin_dryrun_test.go: Istio's CNI plugin given a pod (annotations, the istio-proxy
 *   container's env and securityContext). Those pods are fed to our decision as they are.
 *
 * How Istio's CNI plugin turns a pod into istio-iptables' config (cni/pkg/plugin/sidecar_redirect.go
 * NewRedirect, sidecar_iptables_linux.go Program), which `podForCapture` inverts:
 * - the annotations give interception mode, include/exclude inbound ports, include/exclude outbound ports and
 *   IP ranges, excluded interfaces and reroute-virtual-interfaces, each with the plugin's default when absent
 *   (`*` for inbound ports and outbound ranges, 15020 for excluded outbound ports, none for the rest);
 * - 15020,15021,15090 are always appended to the inbound exclusions;
 * - runAsUser/runAsGroup of istio-proxy give PROXY_UID/PROXY_GID (absent or 0: 1337);
 * - ISTIO_META_DNS_CAPTURE sets both REDIRECT_DNS and CAPTURE_ALL_DNS; INVALID_DROP sets DROP_INVALID;
 * - ports 15001/15006/15008, the TPROXY mark and route table are fixed;
 * - the owner-group filters and the IPv4 loopback CIDR come from the CNI plugin process's own environment
 *   (FillConfigFromEnvironment), the same for every pod of a node; ENABLE_INBOUND_IPV6 from the pod's address.
 */
import type { PodInfo } from '../../src/mesh/decision';
import type { Family } from '../../src/redirect/constants';

/** The fields of Istio's tools/common/config.Config its capture tests set (Go names, Go zero values when absent). */
export interface IstioCaptureConfig {
  InboundInterceptionMode?: string;
  InboundPortsInclude?: string;
  InboundPortsExclude?: string;
  OutboundPortsInclude?: string;
  OutboundPortsExclude?: string;
  OutboundIPRangesInclude?: string;
  OutboundIPRangesExclude?: string;
  RerouteVirtualInterfaces?: string;
  ExcludeInterfaces?: string;
  ProxyUID: string;
  ProxyGID: string;
  RedirectDNS?: boolean;
  CaptureAllDNS?: boolean;
  DNSServersV4?: string[];
  DNSServersV6?: string[];
  DropInvalid?: boolean;
  EnableIPv6?: boolean;
  OwnerGroupsInclude: string;
  OwnerGroupsExclude?: string;
  HostIPv4LoopbackCidr: string;
}

/** run_test.go constructTestConfig: what every capture case starts from. */
const CAPTURE_BASE: IstioCaptureConfig = { ProxyUID: '1337', ProxyGID: '1337', OwnerGroupsInclude: '*', HostIPv4LoopbackCidr: '127.0.0.1/32' };

/** run_test.go getCommonTestCases, in its order: each case's changes to constructTestConfig. */
const CAPTURE_CASES: Array<[name: string, changes: Partial<IstioCaptureConfig>]> = [
  ['ipv6-empty-inbound-ports', { InboundPortsInclude: '', EnableIPv6: true }],
  ['ip-range', { OutboundIPRangesExclude: '1.1.0.0/16', OutboundIPRangesInclude: '9.9.0.0/16', RedirectDNS: true, EnableIPv6: false, ProxyGID: '1,2', ProxyUID: '3,4', DNSServersV4: ['127.0.0.53'] }],
  [
    'tproxy',
    {
      InboundInterceptionMode: 'TPROXY',
      InboundPortsInclude: '*',
      OutboundIPRangesExclude: '1.1.0.0/16',
      OutboundIPRangesInclude: '9.9.0.0/16',
      RedirectDNS: true,
      DNSServersV4: ['127.0.0.53'],
      ProxyGID: '1337',
      ProxyUID: '1337',
      ExcludeInterfaces: 'not-istio-nic',
      EnableIPv6: true,
    },
  ],
  ['ipv6-inbound-ports', { InboundPortsInclude: '4000,5000', EnableIPv6: true }],
  ['ipv6-virt-interfaces', { InboundPortsInclude: '4000,5000', RerouteVirtualInterfaces: 'eth0,eth1', EnableIPv6: true }],
  ['ipv6-ipnets', { InboundPortsInclude: '4000,5000', InboundPortsExclude: '6000,7000,', RerouteVirtualInterfaces: 'eth0,eth1', OutboundIPRangesExclude: '2001:db8::/32', OutboundIPRangesInclude: '2001:db8::/32', EnableIPv6: true }],
  ['ipv6-uid-gid', { InboundPortsInclude: '4000,5000', InboundPortsExclude: '6000,7000', RerouteVirtualInterfaces: 'eth0,eth1', ProxyGID: '1,2', ProxyUID: '3,4', EnableIPv6: true, OutboundIPRangesExclude: '2001:db8::/32', OutboundIPRangesInclude: '2001:db8::/32' }],
  ['ipv6-outbound-ports', { InboundPortsInclude: '', OutboundPortsInclude: '32000,31000', EnableIPv6: true }],
  ['empty', {}],
  ['kube-virt-interfaces', { RerouteVirtualInterfaces: 'eth1,eth2', OutboundIPRangesInclude: '*' }],
  ['ipnets', { OutboundIPRangesInclude: '10.0.0.0/8' }],
  ['ipnets-with-kube-virt-interfaces', { RerouteVirtualInterfaces: 'eth1,eth2', OutboundIPRangesInclude: '10.0.0.0/8' }],
  ['inbound-ports-include', { InboundPortsInclude: '32000,31000' }],
  ['inbound-ports-wildcard', { InboundPortsInclude: '*' }],
  ['inbound-ports-tproxy', { InboundPortsInclude: '32000,31000', InboundInterceptionMode: 'TPROXY' }],
  ['inbound-ports-wildcard-tproxy', { InboundPortsInclude: '*', InboundInterceptionMode: 'TPROXY' }],
  ['dns-uid-gid', { RedirectDNS: true, DNSServersV4: ['127.0.0.53'], DNSServersV6: ['::127.0.0.53'], ProxyGID: '1,2', ProxyUID: '3,4', EnableIPv6: true }],
  ['ipv6-dns-uid-gid', { EnableIPv6: true, RedirectDNS: true, ProxyGID: '1,2', ProxyUID: '3,4' }],
  ['outbound-owner-groups', { OwnerGroupsInclude: 'java,202' }],
  ['outbound-owner-groups-exclude', { OwnerGroupsExclude: '888,ftp' }],
  ['ipv6-dns-outbound-owner-groups', { EnableIPv6: true, RedirectDNS: true, OwnerGroupsInclude: 'java,202' }],
  ['ipv6-dns-outbound-owner-groups-exclude', { EnableIPv6: true, RedirectDNS: true, OwnerGroupsExclude: '888,ftp' }],
  ['outbound-ports-include', { OutboundPortsInclude: '32000,31000' }],
  ['loopback-outbound-iprange', { OutboundIPRangesInclude: '127.1.2.3/32', RedirectDNS: true, DNSServersV4: ['127.0.0.53'], EnableIPv6: false, ProxyGID: '1,2', ProxyUID: '3,4' }],
  ['basic-exclude-nic', { ExcludeInterfaces: 'not-istio-nic' }],
  ['drop-invalid', { DropInvalid: true }],
  ['host-ipv4-loopback-cidr', { HostIPv4LoopbackCidr: '127.0.0.1/8' }],
];

/** A pod as Istio's plugin test builds it (buildFakeDryRunPod): containers test, istio-proxy, istio-validate. */
export interface IstioTestPod {
  annotations: Record<string, string>;
  proxyEnv: Record<string, string>;
  runAsUser?: number;
  runAsGroup?: number;
}

export interface IstioCase {
  /** `capture/<name>` or `cni-plugin/<name>`: the golden file under test/golden/istio, without `.golden` */
  id: string;
  golden: string;
  /** the config istio-iptables ran with (capture cases) */
  config?: IstioCaptureConfig;
  /** the pod (plugin cases, and capture cases a pod can express) */
  pod?: IstioTestPod;
  /** the families the golden holds: IPv6 only where the case enabled it (the plugin's tests are IPv4) */
  families: Family[];
  /** why no pod can ask for these rules through the CNI path */
  skip?: string[];
}

const T = 'traffic.sidecar.istio.io/';
const STATUS = { 'sidecar.istio.io/status': 'true' };
/** What NewRedirect always appends to the inbound exclusions. */
const ALWAYS_EXCLUDED_INBOUND = ['15020', '15021', '15090'];

const list = (value: string | undefined) => (value ?? '').split(',').filter((p) => p !== '');

/**
 * The pod whose annotations, proxy env and securityContext make Istio's CNI plugin run istio-iptables with
 * `cfg` (every annotation written out, since the plugin's defaults differ from the capture tests'), or
 * the reasons no pod can.
 */
export function podForCapture(cfg: IstioCaptureConfig): { pod: IstioTestPod } | { skip: string[] } {
  const skip: string[] = [];
  if (cfg.ProxyUID.includes(',') || cfg.ProxyGID.includes(',')) {
    skip.push(`several proxy ids (PROXY_UID=${cfg.ProxyUID}, PROXY_GID=${cfg.ProxyGID}): the plugin takes one uid and one gid, istio-proxy's runAsUser and runAsGroup`);
  }
  if (cfg.RedirectDNS && !cfg.CaptureAllDNS) {
    skip.push("DNS capture limited to resolv.conf's servers (CAPTURE_ALL_DNS off): the plugin sets CAPTURE_ALL_DNS whenever ISTIO_META_DNS_CAPTURE is on");
  }
  if (cfg.OwnerGroupsInclude !== '*' || (cfg.OwnerGroupsExclude ?? '') !== '') {
    skip.push('owner-group filters (ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]): read from the CNI plugin process\'s environment, node-wide, not from the pod');
  }
  if (cfg.HostIPv4LoopbackCidr !== '127.0.0.1/32') {
    skip.push(`IPv4 loopback CIDR ${cfg.HostIPv4LoopbackCidr} (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR): read from the CNI plugin process's environment, node-wide, not from the pod`);
  }
  const includeInbound = cfg.InboundPortsInclude ?? '';
  const excludeInbound = list(cfg.InboundPortsExclude);
  // Exclusions only write rules when every inbound port is captured; then the plugin's forced ones must be all there is.
  const userExcluded = excludeInbound.slice(0, Math.max(0, excludeInbound.length - ALWAYS_EXCLUDED_INBOUND.length));
  if (includeInbound === '*' && excludeInbound.slice(userExcluded.length).join(',') !== ALWAYS_EXCLUDED_INBOUND.join(',')) {
    const excluded = excludeInbound.length > 0 ? `exclusions ${excludeInbound.join(',')}` : 'no exclusion';
    skip.push(`every inbound port captured with ${excluded}: the plugin always excludes ${ALWAYS_EXCLUDED_INBOUND.join(',')} as well`);
  }
  if (skip.length > 0) return { skip };
  const annotations: Record<string, string> = {
    ...STATUS,
    'sidecar.istio.io/interceptionMode': cfg.InboundInterceptionMode === 'TPROXY' ? 'TPROXY' : 'REDIRECT',
    [`${T}includeInboundPorts`]: includeInbound,
    [`${T}excludeInboundPorts`]: (includeInbound === '*' ? userExcluded : excludeInbound).join(','),
    [`${T}includeOutboundPorts`]: cfg.OutboundPortsInclude ?? '',
    [`${T}excludeOutboundPorts`]: cfg.OutboundPortsExclude ?? '',
    [`${T}includeOutboundIPRanges`]: cfg.OutboundIPRangesInclude ?? '',
    [`${T}excludeOutboundIPRanges`]: cfg.OutboundIPRangesExclude ?? '',
    [`${T}excludeInterfaces`]: cfg.ExcludeInterfaces ?? '',
    'istio.io/reroute-virtual-interfaces': cfg.RerouteVirtualInterfaces ?? '',
  };
  const proxyEnv: Record<string, string> = {};
  if (cfg.RedirectDNS) proxyEnv.ISTIO_META_DNS_CAPTURE = 'true';
  if (cfg.DropInvalid) proxyEnv.INVALID_DROP = 'true';
  return { pod: { annotations, proxyEnv, runAsUser: Number(cfg.ProxyUID), runAsGroup: Number(cfg.ProxyGID) } };
}

/** plugin_dryrun_test.go TestIPTablesRuleGeneration, in its order (every pod carries sidecar.istio.io/status). */
const PLUGIN_CASES: Array<[name: string, golden: string, pod: IstioTestPod]> = [
  ['basic', 'basic', { annotations: { ...STATUS }, proxyEnv: {} }],
  ['include-exclude-ip', 'include-exclude-ip', { annotations: { ...STATUS, [`${T}includeOutboundIPRanges`]: '127.0.0.0/8', [`${T}excludeOutboundIPRanges`]: '10.0.0.0/8' }, proxyEnv: {} }],
  [
    'include-exclude-ports',
    'include-exclude-ports',
    { annotations: { ...STATUS, [`${T}includeInboundPorts`]: '1111,2222', [`${T}excludeInboundPorts`]: '3333,4444', [`${T}excludeOutboundPorts`]: '5555,6666' }, proxyEnv: {} },
  ],
  ['tproxy', 'tproxy', { annotations: { ...STATUS, 'sidecar.istio.io/interceptionMode': 'TPROXY' }, proxyEnv: {} }],
  ['DNS', 'dns', { annotations: { ...STATUS }, proxyEnv: { ISTIO_META_DNS_CAPTURE: 'true' } }],
  ['invalid-drop', 'invalid-drop', { annotations: { ...STATUS }, proxyEnv: { INVALID_DROP: 'true' } }],
  ['custom-uid', 'custom-uid', { annotations: { ...STATUS }, proxyEnv: {}, runAsUser: 1000670000, runAsGroup: 1000670001 }],
  ['custom-uid-zero', 'basic', { annotations: { ...STATUS }, proxyEnv: {}, runAsUser: 0 }],
  ['custom-uid-tproxy', 'custom-uid-tproxy', { annotations: { ...STATUS, 'sidecar.istio.io/interceptionMode': 'TPROXY' }, proxyEnv: {}, runAsUser: 1000670000, runAsGroup: 1000670001 }],
];

export const ISTIO_HEAD_CASES: IstioCase[] = [
  ...CAPTURE_CASES.map(([name, changes]): IstioCase => {
    const config: IstioCaptureConfig = { ...CAPTURE_BASE, ...changes };
    const families: Family[] = config.EnableIPv6 ? ['ipv4', 'ipv6'] : ['ipv4'];
    const mapped = podForCapture(config);
    return { id: `capture/${name}`, golden: `capture/${name}.golden`, config, families, ...mapped };
  }),
  ...PLUGIN_CASES.map(([name, golden, pod]): IstioCase => ({ id: `cni-plugin/${name}`, golden: `cni-plugin/${golden}.txt.golden`, pod, families: ['ipv4'] })),
];

/** Goldens kept as data that no test of Istio's reads any more, so they say nothing about HEAD. */
export const UNREFERENCED_GOLDENS: Array<[file: string, why: string]> = [
  ['cni-plugin/status-ports.txt.golden', 'no test at HEAD reads it (added in 2021 with the first dry-run test, never refreshed: it shows a layout older than 1.24, with no tunnel-port rule)'],
];

/** The pod as our decision sees it, built the way Istio's plugin test builds it. */
export function podInfo(pod: IstioTestPod): PodInfo {
  return {
    name: 'pod-name',
    namespace: 'testns',
    labels: {},
    namespaceLabels: {},
    annotations: pod.annotations,
    containers: [
      { name: 'test', list: 'containers' },
      { name: 'istio-proxy', list: 'containers' },
      { name: 'istio-validate', list: 'containers' },
    ],
    proxy: { lists: ['containers'], env: pod.proxyEnv, runAsUser: pod.runAsUser, runAsGroup: pod.runAsGroup },
  };
}

/**
 * One golden as restore texts per family. A capture golden is the stub's record of every command run:
 * `iptables-save`/`ip6tables-save` lines around one restore per enabled family, each a run of `* table ...
 * COMMIT` blocks in table order, so a table name that does not sort after the previous one starts the next
 * family. A plugin golden is one family's blocks.
 */
export function restoresOf(text: string): string[] {
  const restores: string[] = [];
  let current = '';
  let lastTable = '';
  let table: string | undefined;
  for (const line of text.split('\n')) {
    if (line === 'iptables-save' || line === 'ip6tables-save' || line.trim() === '') continue;
    if (line.startsWith('* ')) {
      table = line.slice(2);
      if (current !== '' && table <= lastTable) {
        restores.push(current);
        current = '';
      }
      lastTable = table;
    }
    current += `${line}\n`;
  }
  if (current !== '') restores.push(current);
  return restores;
}

const SHOWN_CONFIG_KEYS: Array<keyof IstioCaptureConfig> = [
  'InboundInterceptionMode',
  'InboundPortsInclude',
  'InboundPortsExclude',
  'OutboundPortsInclude',
  'OutboundIPRangesInclude',
  'OutboundIPRangesExclude',
  'RerouteVirtualInterfaces',
  'ExcludeInterfaces',
  'ProxyUID',
  'ProxyGID',
  'RedirectDNS',
  'DNSServersV4',
  'DNSServersV6',
  'DropInvalid',
  'EnableIPv6',
  'OwnerGroupsInclude',
  'OwnerGroupsExclude',
  'HostIPv4LoopbackCidr',
];

/** What a case sets, in one cell: a capture case's changes to constructTestConfig, a plugin case's pod. */
function describeInput(c: IstioCase): string {
  const q = (v: unknown) => `\`${typeof v === 'boolean' ? String(v) : JSON.stringify(v)}\``;
  if (c.config) {
    const set = SHOWN_CONFIG_KEYS.filter((k) => c.config![k] !== undefined && c.config![k] !== CAPTURE_BASE[k]).map((k) => `${k}=${q(c.config![k])}`);
    return set.length > 0 ? set.join(', ') : '(constructTestConfig as is)';
  }
  return describePod(c.pod!);
}

function describePod(pod: IstioTestPod): string {
  const parts = Object.entries(pod.annotations)
    .filter(([k, v]) => !(k in STATUS) && v !== undefined)
    .map(([k, v]) => `${k.replace(T, '')}=${JSON.stringify(v)}`);
  for (const [k, v] of Object.entries(pod.proxyEnv)) parts.push(`env ${k}=${v}`);
  if (pod.runAsUser !== undefined) parts.push(`runAsUser ${pod.runAsUser}`);
  if (pod.runAsGroup !== undefined) parts.push(`runAsGroup ${pod.runAsGroup}`);
  return parts.length > 0 ? parts.map((p) => `\`${p}\``).join(', ') : '(no annotation, no env)';
}

/** The case table of test/golden/istio/SOURCE.md, made from the cases above (the golden test keeps the two equal). */
export function casesTable(): string {
  const rows = ISTIO_HEAD_CASES.map((c) => {
    const verdict = c.skip ? `skipped: ${c.skip.join('; ')}` : c.config ? `pod: ${describePod(c.pod!)}` : 'the same pod';
    return `| ${c.id} | \`${c.golden}\` | ${describeInput(c)} | ${c.families.map((f) => (f === 'ipv4' ? 'v4' : 'v6')).join(', ')} | ${verdict} |`;
  });
  const unreferenced = UNREFERENCED_GOLDENS.map(([file, why]) => `| | \`${file}\` | (none) | | not compared: ${why} |`);
  return ['| case | golden | Istio\'s input | families | through the CNI path |', '|---|---|---|---|---|', ...rows, ...unreferenced].join('\n') + '\n';
}
