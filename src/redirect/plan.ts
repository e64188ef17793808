/**
 * The plan: a pure function from RedirectConfig to the rules a pod's netns must hold, per IP family, as
 * data. Both renderers (iptables-restore text, nft script) and the read-back check start from this one
 * value, so no rule is ever written twice.
 *
 * Rules are emitted in the order Istio's istio-iptables emits them at HEAD (the layout of Istio 1.25 and
 * later: tools/istio-iptables/pkg/capture/run.go), one small function per concern. A match may carry a list
 * (ports, CIDRs, interfaces, the protocol pair): the iptables renderer writes one rule per element, as
 * Istio's loops do; the nftables renderer writes one rule with a set, so its rule count does not grow.
 */
import {
  CHAINS,
  DNS_PORT,
  DEFAULTS,
  LOOPBACK,
  PASSTHROUGH_SOURCE,
  type BuiltinChain,
  type ChainName,
  type Family,
  type Table,
} from './constants';
import type { RedirectConfig } from './config';

export type Protocol = 'tcp' | 'udp';

export type Match =
  | { kind: 'protocol'; protocol: Protocol }
  /** Each of these protocols (Istio writes one rule per protocol, inside its loop over the ports). */
  | { kind: 'protocols'; protocols: Protocol[] }
  /** iptables' explicit `-m tcp`/`-m udp` (Istio's ambient rules load it); nothing in nft, where the protocol implies it */
  | { kind: 'l4module'; protocol: Protocol }
  | { kind: 'dport' | 'sport'; ports: number[]; negate?: boolean }
  | { kind: 'daddr' | 'saddr'; cidrs: string[]; negate?: boolean }
  | { kind: 'iifname' | 'oifname'; names: string[]; negate?: boolean }
  | { kind: 'uid' | 'gid'; id: number; negate?: boolean }
  /** `mask`: compare only these bits (ambient's 0x539/0xfff), written in hex as Istio writes it */
  | { kind: 'mark'; mark: number; mask?: number; negate?: boolean }
  | { kind: 'connmark'; mark: number; mask?: number }
  /**
   * The packet comes from a socket on this host (iptables' `-m owner --socket-exists`). nftables has no such
   * match; Istio's nft host rule matches the kubelet's uid instead (`meta skuid`), so the plan carries it.
   */
  | { kind: 'localSocket'; nftUid: number }
  /** The destination is in a named set of this family's addresses (an ipset for iptables, a set of our table for nft). */
  | { kind: 'inSet'; set: string }
  | { kind: 'ctstate'; states: string[] };

export type Target =
  | { kind: 'return' }
  | { kind: 'accept' }
  | { kind: 'drop' }
  | { kind: 'jump'; chain: ChainName }
  /** `iptablesFlag`: Istio spells the UDP DNS redirect `--to-port`; kept so our text diffs clean against theirs. */
  | { kind: 'redirect'; port: number; iptablesFlag?: '--to-port' }
  | { kind: 'tproxy'; port: number; mark: number }
  | { kind: 'setMark'; mark: number }
  | { kind: 'saveMark' }
  /** `masks`: Istio's ambient rule spells out iptables' all-ones --nfmask/--ctmask */
  | { kind: 'restoreMark'; masks?: { nf: number; ct: number } }
  /** The connection's mark: the `mask` bits set to `mark`, the others kept (`CONNMARK --set-xmark mark/mask`) */
  | { kind: 'setConnmark'; mark: number; mask: number }
  /** Source NAT to one address (of the family the rule is planned for) */
  | { kind: 'snat'; to: string }
  | { kind: 'ctZone'; zone: number };

export interface Rule {
  table: Table;
  chain: ChainName | BuiltinChain;
  matches: Match[];
  target: Target;
  /** Insert at this 1-based position instead of appending (Istio's `-I CHAIN N`). */
  insertAt?: number;
  /**
   * Istio writes this rule inside the same loop over a list as the rule before it (per include CIDR: the
   * VM interfaces' PREROUTING inserts, then the ISTIO_OUTPUT append), so its iptables text alternates the two
   * per element. Only the text's order depends on it: each chain ends up the same either way.
   */
  sameLoopAsPrevious?: true;
  /** Why the rule exists, in a few words: shown by `plan`/`show`, never part of the rule itself. */
  purpose: string;
}

/** Netlink state the rules depend on: TPROXY and ambient policy routing, the IPv6 passthrough address. */
export type LinkSetup =
  | { kind: 'address'; family: Family; dev: string; cidr: string }
  /** `mask` and `priority`: ambient's `fwmark 0x111/0xfff pref 32764` */
  | { kind: 'rule'; family: Family; fwmark: number; mask?: number; priority?: number; table: number }
  | { kind: 'route'; family: Family; type: 'local'; dst: 'default'; dev: string; table: number };

export interface FamilyPlan {
  family: Family;
  rules: Rule[];
  links: LinkSetup[];
}

/** A sidecar plan's config is its RedirectConfig; an ambient plan carries its own (redirect/ambient/). */
export interface Plan<C = RedirectConfig> {
  config: C;
  ipv4: FamilyPlan;
  ipv6: FamilyPlan;
}

/** Any plan, for what only renders and applies it (the backends). */
export type AnyPlan = Plan<unknown>;

const tcp: Match = { kind: 'protocol', protocol: 'tcp' };
const udp: Match = { kind: 'protocol', protocol: 'udp' };
const toReturn: Target = { kind: 'return' };
const jump = (chain: ChainName): Target => ({ kind: 'jump', chain });

/** Collects rules in emission order. */
class RuleList {
  readonly rules: Rule[] = [];
  constructor(readonly family: Family) {}

  add(table: Table, chain: Rule['chain'], matches: Match[], target: Target, purpose: string, options: Pick<Rule, 'sameLoopAsPrevious'> = {}): void {
    this.rules.push({ table, chain, matches, target, purpose, ...options });
  }

  insert(table: Table, chain: Rule['chain'], position: number, matches: Match[], target: Target, purpose: string): void {
    this.rules.push({ table, chain, matches, target, purpose, insertAt: position });
  }
}

function cidrsOf(cfg: RedirectConfig['includeOutboundIPRanges'], family: Family): string[] {
  return family === 'ipv4' ? cfg.ipv4 : cfg.ipv6;
}

/** excludeInterfaces: traffic in or out of these interfaces is never captured. */
function excludeInterfaces(r: RuleList, cfg: RedirectConfig): void {
  if (cfg.excludeInterfaces.length === 0) return;
  const names = cfg.excludeInterfaces;
  // Istio alternates the PREROUTING and OUTPUT rule per interface; the effective chains are the same.
  for (const name of names) {
    r.add('nat', 'PREROUTING', [{ kind: 'iifname', names: [name] }], toReturn, 'exclude-interface');
    r.add('nat', 'OUTPUT', [{ kind: 'oifname', names: [name] }], toReturn, 'exclude-interface');
  }
  if (cfg.mode === 'TPROXY') {
    for (const name of names) {
      r.add('mangle', 'PREROUTING', [{ kind: 'iifname', names: [name] }], toReturn, 'exclude-interface');
      r.add('mangle', 'OUTPUT', [{ kind: 'oifname', names: [name] }], toReturn, 'exclude-interface');
    }
  }
}

/** kubevirtInterfaces: traffic entering from a VM's interface is not treated as inbound. */
function kubevirtShortCircuit(r: RuleList, cfg: RedirectConfig): void {
  for (const name of cfg.kubevirtInterfaces) {
    r.insert('nat', 'PREROUTING', 1, [{ kind: 'iifname', names: [name] }], toReturn, 'kubevirt-not-inbound');
  }
}

/**
 * INVALID_DROP: a packet conntrack calls INVALID (out of window, typically after a NAT'd connection's state
 * expired) is dropped rather than reaching the application, which would answer it with a reset.
 * Istio's text on iptables: `-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP`, `-A ISTIO_DROP -j DROP`.
 */
function invalidDrop(r: RuleList, cfg: RedirectConfig): void {
  if (!cfg.invalidDrop) return;
  r.add('mangle', 'PREROUTING', [{ kind: 'ctstate', states: ['INVALID'] }], jump(CHAINS.drop), 'drop-conntrack-invalid');
  r.add('mangle', CHAINS.drop, [], { kind: 'drop' }, 'drop-conntrack-invalid');
}

/** The target chains: the tunnel port bypass and the two REDIRECT chains. */
function redirectChains(r: RuleList, cfg: RedirectConfig): void {
  r.add('nat', CHAINS.inbound, [tcp, { kind: 'dport', ports: [cfg.inboundTunnelPort] }], toReturn, 'tunnel-port-not-captured');
  r.add('nat', CHAINS.redirect, [tcp], { kind: 'redirect', port: cfg.proxyPort }, 'outbound-to-proxy');
  r.add('nat', CHAINS.inRedirect, [tcp], { kind: 'redirect', port: cfg.inboundCapturePort }, 'inbound-to-proxy');
}

function inbound(r: RuleList, cfg: RedirectConfig): void {
  const include = cfg.includeInboundPorts;
  if (include !== '*' && include.length === 0) return;
  const tproxy = cfg.mode === 'TPROXY';
  const table: Table = tproxy ? 'mangle' : 'nat';
  if (tproxy) {
    r.add('mangle', CHAINS.divert, [], { kind: 'setMark', mark: cfg.tproxyMark }, 'tproxy-mark-diverted');
    r.add('mangle', CHAINS.divert, [], { kind: 'accept' }, 'tproxy-accept-diverted');
    r.add('mangle', CHAINS.tproxy, [{ kind: 'daddr', cidrs: [LOOPBACK[r.family]], negate: true }, tcp], { kind: 'tproxy', port: cfg.inboundCapturePort, mark: cfg.tproxyMark }, 'inbound-to-proxy');
  }
  r.add(table, 'PREROUTING', [tcp], jump(CHAINS.inbound), 'jump-inbound');
  if (include === '*') {
    const excluded = cfg.excludeInboundPorts;
    if (excluded.length > 0) r.add(table, CHAINS.inbound, [tcp, { kind: 'dport', ports: excluded }], toReturn, 'exclude-inbound-ports');
    if (tproxy) {
      r.add('mangle', CHAINS.inbound, [tcp, { kind: 'ctstate', states: ['RELATED', 'ESTABLISHED'] }], jump(CHAINS.divert), 'tproxy-established');
      r.add('mangle', CHAINS.inbound, [tcp], jump(CHAINS.tproxy), 'capture-inbound');
    } else {
      r.add('nat', CHAINS.inbound, [tcp], jump(CHAINS.inRedirect), 'capture-inbound');
    }
    return;
  }
  for (const port of include) {
    const dport: Match = { kind: 'dport', ports: [port] };
    if (tproxy) {
      r.add('mangle', CHAINS.inbound, [tcp, dport, { kind: 'ctstate', states: ['RELATED', 'ESTABLISHED'] }], jump(CHAINS.divert), 'tproxy-established');
      r.add('mangle', CHAINS.inbound, [tcp, dport], jump(CHAINS.tproxy), 'capture-inbound-port');
    }
  }
  if (!tproxy) r.add('nat', CHAINS.inbound, [tcp, { kind: 'dport', ports: include }], jump(CHAINS.inRedirect), 'capture-inbound-port');
}

/** The proxy's own traffic and loopback: what must not loop back into the proxy, and what must. */
function proxyOwnTraffic(r: RuleList, cfg: RedirectConfig): void {
  const loopback = LOOPBACK[r.family];
  const keepLoopbackReturn = !cfg.includeOutboundIPRanges.hasLoopback;
  const dns = cfg.dnsCapture;
  r.add('nat', CHAINS.output, [{ kind: 'oifname', names: ['lo'] }, { kind: 'saddr', cidrs: [PASSTHROUGH_SOURCE[r.family]] }], toReturn, 'inbound-passthrough-not-captured');
  for (const owner of ['uid', 'gid'] as const) {
    const id = owner === 'uid' ? cfg.proxyUid : cfg.proxyGid;
    // Istio skips port 53 here only in the uid rule (with multiport); the gid rule keeps the tunnel port alone.
    const notPorts = dns && owner === 'uid' ? [DNS_PORT, cfg.inboundTunnelPort] : [cfg.inboundTunnelPort];
    r.add(
      'nat',
      CHAINS.output,
      [{ kind: 'oifname', names: ['lo'] }, { kind: 'daddr', cidrs: [loopback], negate: true }, tcp, { kind: 'dport', ports: notPorts, negate: true }, { kind: owner, id }],
      jump(CHAINS.inRedirect),
      'proxy-to-own-pod-via-vip-is-inbound',
    );
    if (keepLoopbackReturn) {
      const matches: Match[] = dns
        ? [{ kind: 'oifname', names: ['lo'] }, tcp, { kind: 'dport', ports: [DNS_PORT], negate: true }, { kind: owner, id, negate: true }]
        : [{ kind: 'oifname', names: ['lo'] }, { kind: owner, id, negate: true }];
      r.add('nat', CHAINS.output, matches, toReturn, 'app-to-itself-not-captured');
    }
    r.add('nat', CHAINS.output, [{ kind: owner, id }], toReturn, 'proxy-traffic-not-captured');
  }
}

/**
 * nat OUTPUT sends every protocol into ISTIO_OUTPUT: what is not TCP only meets RETURNs there, the UDP DNS
 * redirect when DNS is captured, and ISTIO_REDIRECT, whose REDIRECT is TCP only.
 */
function outbound(r: RuleList, cfg: RedirectConfig): void {
  r.add('nat', 'OUTPUT', [], jump(CHAINS.output), 'jump-outbound');
  if (cfg.excludeOutboundPorts.length > 0) {
    // Both protocols: with DNS capture, UDP to an excluded port must leave before the DNS redirect.
    r.add('nat', CHAINS.output, [{ kind: 'protocols', protocols: ['tcp', 'udp'] }, { kind: 'dport', ports: cfg.excludeOutboundPorts }], toReturn, 'exclude-outbound-ports');
  }
  proxyOwnTraffic(r, cfg);
  dnsCapture(r, cfg);
  r.add('nat', CHAINS.output, [{ kind: 'daddr', cidrs: [LOOPBACK[r.family]] }], toReturn, 'localhost-not-captured');
  const excluded = cidrsOf(cfg.excludeOutboundIPRanges, r.family);
  if (excluded.length > 0) r.add('nat', CHAINS.output, [{ kind: 'daddr', cidrs: excluded }], toReturn, 'exclude-outbound-ranges');
  if (cfg.includeOutboundPorts.length > 0) {
    r.add('nat', CHAINS.output, [tcp, { kind: 'dport', ports: cfg.includeOutboundPorts }], jump(CHAINS.redirect), 'capture-outbound-ports');
  }
  const include = cfg.includeOutboundIPRanges;
  const kubevirt: Match[] = cfg.kubevirtInterfaces.length > 0 ? [{ kind: 'iifname', names: cfg.kubevirtInterfaces }] : [];
  if (include.all) {
    r.add('nat', CHAINS.output, [], jump(CHAINS.redirect), 'capture-outbound');
    if (kubevirt.length > 0) r.insert('nat', 'PREROUTING', 1, kubevirt, jump(CHAINS.redirect), 'kubevirt-outbound');
  } else {
    const cidrs = cidrsOf(include, r.family);
    if (cidrs.length === 0) return;
    if (kubevirt.length > 0) r.insert('nat', 'PREROUTING', 1, [...kubevirt, { kind: 'daddr', cidrs }], jump(CHAINS.redirect), 'kubevirt-outbound');
    r.add('nat', CHAINS.output, [{ kind: 'daddr', cidrs }], jump(CHAINS.redirect), 'capture-outbound-ranges', kubevirt.length > 0 ? { sameLoopAsPrevious: true } : {});
  }
}

/**
 * DNS capture (ISTIO_META_DNS_CAPTURE): TCP and UDP port 53 to the agent on 15053, from ISTIO_OUTPUT_DNS,
 * which nat ISTIO_OUTPUT jumps to after the proxy's own traffic has left and before the 127.0.0.1 return, so
 * an app's query to a resolver on localhost is captured too; and conntrack zones (raw) that keep the app's
 * flow to the agent apart from the agent's flow to the real resolver.
 */
function dnsCapture(r: RuleList, cfg: RedirectConfig): void {
  if (!cfg.dnsCapture) return;
  const dport53: Match = { kind: 'dport', ports: [DNS_PORT] };
  r.add('raw', 'OUTPUT', [], jump(CHAINS.outputDns), 'jump-dns');
  r.add('nat', CHAINS.output, [], jump(CHAINS.outputDns), 'jump-dns');
  r.add('nat', CHAINS.outputDns, [tcp, dport53], { kind: 'redirect', port: DEFAULTS.dnsListenerPort }, 'dns-tcp-to-agent');
  r.add('nat', CHAINS.outputDns, [udp, dport53], { kind: 'redirect', port: DEFAULTS.dnsListenerPort, iptablesFlag: '--to-port' }, 'dns-udp-to-agent');
  for (const owner of ['uid', 'gid'] as const) {
    const id = owner === 'uid' ? cfg.proxyUid : cfg.proxyGid;
    r.add('raw', CHAINS.outputDns, [udp, dport53, { kind: owner, id }], { kind: 'ctZone', zone: 1 }, 'dns-proxy-to-upstream-zone');
    r.add('raw', CHAINS.outputDns, [udp, { kind: 'sport', ports: [DEFAULTS.dnsListenerPort] }, { kind: owner, id }], { kind: 'ctZone', zone: 2 }, 'dns-proxy-to-app-zone');
  }
  r.add('raw', 'PREROUTING', [], jump(CHAINS.inbound), 'jump-dns-replies');
  r.add('raw', CHAINS.outputDns, [udp, dport53], { kind: 'ctZone', zone: 2 }, 'dns-app-to-proxy-zone');
  r.add('raw', CHAINS.inbound, [udp, { kind: 'sport', ports: [DNS_PORT] }], { kind: 'ctZone', zone: 1 }, 'dns-upstream-reply-zone');
}

/** TPROXY: marks that keep the proxy's own connections and replies out of the inbound divert. */
function tproxyMarks(r: RuleList, cfg: RedirectConfig): void {
  if (cfg.mode !== 'TPROXY') return;
  const mark = cfg.tproxyMark;
  const lo: Match = { kind: 'oifname', names: ['lo'] };
  r.add('mangle', 'PREROUTING', [tcp, { kind: 'mark', mark }], { kind: 'saveMark' }, 'tproxy-save-mark');
  r.add('mangle', 'OUTPUT', [tcp, lo, { kind: 'mark', mark }], toReturn, 'tproxy-marked-not-remarked');
  for (const owner of ['uid', 'gid'] as const) {
    const id = owner === 'uid' ? cfg.proxyUid : cfg.proxyGid;
    r.add('mangle', 'OUTPUT', [{ kind: 'daddr', cidrs: [LOOPBACK[r.family]], negate: true }, tcp, lo, { kind: owner, id }], { kind: 'setMark', mark: DEFAULTS.outboundMark }, 'tproxy-proxy-to-app-mark');
  }
  r.add('mangle', 'OUTPUT', [tcp, { kind: 'connmark', mark }], { kind: 'restoreMark' }, 'tproxy-restore-mark');
  r.insert('mangle', CHAINS.inbound, 1, [tcp, { kind: 'mark', mark }], toReturn, 'tproxy-no-loop');
  r.insert('mangle', CHAINS.inbound, 2, [tcp, { kind: 'saddr', cidrs: [PASSTHROUGH_SOURCE[r.family]] }, { kind: 'iifname', names: ['lo'] }], toReturn, 'inbound-passthrough-not-captured');
  r.insert('mangle', CHAINS.inbound, 3, [tcp, { kind: 'iifname', names: ['lo'] }, { kind: 'mark', mark: DEFAULTS.outboundMark, negate: true }], toReturn, 'app-to-itself-not-captured');
}

function links(cfg: RedirectConfig, family: Family): LinkSetup[] {
  const out: LinkSetup[] = [];
  // IPv6 lo only holds ::1/128, so the proxy needs ::6 added to bind its passthrough source.
  if (family === 'ipv6' && cfg.mode !== 'NONE') out.push({ kind: 'address', family, dev: 'lo', cidr: '::6/128' });
  if (cfg.mode === 'TPROXY') {
    out.push({ kind: 'rule', family, fwmark: cfg.tproxyMark, table: cfg.tproxyRouteTable });
    out.push({ kind: 'route', family, type: 'local', dst: 'default', dev: 'lo', table: cfg.tproxyRouteTable });
  }
  return out;
}

export function planFamily(cfg: RedirectConfig, family: Family): FamilyPlan {
  const r = new RuleList(family);
  if (cfg.mode === 'NONE') return { family, rules: [], links: [] };
  excludeInterfaces(r, cfg);
  kubevirtShortCircuit(r, cfg);
  invalidDrop(r, cfg);
  redirectChains(r, cfg);
  inbound(r, cfg);
  outbound(r, cfg);
  tproxyMarks(r, cfg);
  return { family, rules: r.rules, links: links(cfg, family) };
}

export function buildPlan(cfg: RedirectConfig): Plan {
  return { config: cfg, ipv4: planFamily(cfg, 'ipv4'), ipv6: planFamily(cfg, 'ipv6') };
}

/** The chains each table of a family plan uses, in order of first appearance (as Istio declares them). */
export function chainsByTable(rules: readonly Rule[]): Map<Table, ChainName[]> {
  const out = new Map<Table, ChainName[]>();
  const note = (table: Table, chain: string) => {
    if (!(Object.values(CHAINS) as string[]).includes(chain)) return;
    const list = out.get(table) ?? [];
    if (!list.includes(chain as ChainName)) list.push(chain as ChainName);
    out.set(table, list);
  };
  for (const rule of rules) note(rule.table, rule.chain);
  for (const rule of rules) if (rule.target.kind === 'jump') note(rule.table, rule.target.chain);
  return out;
}

/** Each chain's rules in their final order, after every `insertAt` took effect. */
export function effectiveChains<T extends { table: string; chain: string; insertAt?: number }>(rules: readonly T[]): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const rule of rules) {
    const key = `${rule.table}/${rule.chain}`;
    const list = out.get(key) ?? [];
    if (rule.insertAt === undefined) list.push(rule);
    else list.splice(rule.insertAt - 1, 0, rule);
    out.set(key, list);
  }
  return out;
}
