/**
 * Ambient's in-pod rules as a plan: the same Plan the sidecar rules are (../plan.ts), so the iptables and
 * nftables renderers, the backends, the read-back and `remove` serve both data planes. The rules are Istio
 * HEAD's (cni/pkg/iptables/iptables.go AppendInpodRules, cni/pkg/nftables/nftables.go), in its order, proven
 * against its goldens (test/redirect/ambient-golden.test.ts). What they do, in the pod's netns:
 *
 * - outbound TCP not to loopback goes to ztunnel's 15001; inbound TCP not to 15008 (HBONE, which ztunnel
 *   listens on itself) goes to its plaintext port 15006; DNS (UDP and TCP 53) to its proxy on 15053 when DNS
 *   capture is on;
 * - ztunnel marks its own sockets 0x539 (mask 0xfff): marked packets are never redirected, and an inbound
 *   connection ztunnel accepts gets the connection mark 0x111, restored onto its outbound packets so they
 *   leave unredirected (with routing table 100 sending them to the local stack: the links below);
 * - TCP from the node's probe SNAT address (169.254.7.127, fd16:9254:7127:1337:ffff:ffff:ffff:ffff) is
 *   accepted as is: kubelet's probes reach the app without ztunnel (host.ts SNATs them on the node).
 */
import { CHAINS, DNS_PORT, LOOPBACK, type Family } from '../constants';
import type { FamilyPlan, LinkSetup, Match, Plan, Rule, Target } from '../plan';
import type { AmbientConfig } from './config';

/** Istio's cni/pkg/config constants. */
export const AMBIENT = {
  /** ztunnel's mark on its own sockets (InpodMark 1337), and the bits compared (InpodMask) */
  mark: 0x539,
  mask: 0xfff,
  /** the connection mark of connections ztunnel accepted (InpodTProxyMark), and its mask (InpodTProxyMask) */
  connMark: 0x111,
  connMask: 0xfff,
  /** CONNMARK --restore-mark's masks as Istio spells them (InpodRestoreMask) */
  restoreMask: 0xffffffff,
  /** the policy routing table for marked packets (RouteTableInbound) and the rule's preference */
  routeTable: 100,
  rulePriority: 32764,
  outboundPort: 15001,
  inboundPlaintextPort: 15006,
  inboundHbonePort: 15008,
  dnsPort: 15053,
} as const;

const PRERT = CHAINS.ambientPrerouting;
const OUTPUT = CHAINS.output;

const tcp: Match = { kind: 'protocol', protocol: 'tcp' };
const udp: Match = { kind: 'protocol', protocol: 'udp' };
const ztunnelMarked: Match = { kind: 'mark', mark: AMBIENT.mark, mask: AMBIENT.mask };
const notZtunnelMarked: Match = { ...ztunnelMarked, negate: true };
const accept: Target = { kind: 'accept' };

class Rules {
  readonly rules: Rule[] = [];
  add(table: Rule['table'], chain: Rule['chain'], matches: Match[], target: Target, purpose: string): void {
    this.rules.push({ table, chain, matches, target, purpose });
  }
}

/** Jumps from the built-in chains into ours (Istio: "for easier cleanup"), in Istio's order. */
function jumps(r: Rules, c: AmbientConfig): void {
  r.add('mangle', 'PREROUTING', [], { kind: 'jump', chain: PRERT }, 'ambient-jump');
  r.add('mangle', 'OUTPUT', [], { kind: 'jump', chain: OUTPUT }, 'ambient-jump');
  r.add('nat', 'OUTPUT', [], { kind: 'jump', chain: OUTPUT }, 'ambient-jump');
  if (c.dnsCapture) {
    r.add('raw', 'PREROUTING', [], { kind: 'jump', chain: PRERT }, 'ambient-jump');
    r.add('raw', 'OUTPUT', [], { kind: 'jump', chain: OUTPUT }, 'ambient-jump');
  }
  r.add('nat', 'PREROUTING', [], { kind: 'jump', chain: PRERT }, 'ambient-jump');
}

/** Inbound TCP on a virtual interface is the VM's outbound: to ztunnel's outbound port, then out of our chain. */
function virtualInterfaces(r: Rules, c: AmbientConfig): void {
  for (const name of c.virtualInterfaces) {
    const on: Match = { kind: 'iifname', names: [name] };
    r.add('nat', PRERT, [on, tcp], { kind: 'redirect', port: AMBIENT.outboundPort }, 'virtual-interface-to-ztunnel-outbound');
    r.add('nat', PRERT, [on, tcp], { kind: 'return' }, 'virtual-interface-to-ztunnel-outbound');
  }
}

function inbound(r: Rules, c: AmbientConfig, family: Family): void {
  r.add('mangle', PRERT, [ztunnelMarked], { kind: 'setConnmark', mark: AMBIENT.connMark, mask: AMBIENT.connMask }, 'ztunnel-accepted-connection-mark');
  if (!c.ingressMode) {
    r.add('nat', PRERT, [{ kind: 'saddr', cidrs: [c.hostProbeSnat[family]] }, tcp, { kind: 'l4module', protocol: 'tcp' }], accept, 'kubelet-probe-not-captured');
  }
  r.add('nat', OUTPUT, [{ kind: 'daddr', cidrs: [c.hostProbeSnat[family]] }, tcp, { kind: 'l4module', protocol: 'tcp' }], accept, 'kubelet-probe-reply-not-captured');
  if (!c.ingressMode) {
    r.add(
      'nat',
      PRERT,
      [{ kind: 'daddr', cidrs: [LOOPBACK[family]], negate: true }, tcp, { kind: 'dport', ports: [AMBIENT.inboundHbonePort], negate: true }, notZtunnelMarked],
      { kind: 'redirect', port: AMBIENT.inboundPlaintextPort },
      'inbound-to-ztunnel',
    );
  }
  r.add('mangle', OUTPUT, [{ kind: 'connmark', mark: AMBIENT.connMark, mask: AMBIENT.connMask }], { kind: 'restoreMark', masks: { nf: AMBIENT.restoreMask, ct: AMBIENT.restoreMask } }, 'ztunnel-accepted-connection-mark');
}

function dns(r: Rules, c: AmbientConfig, family: Family): void {
  if (!c.dnsCapture) return;
  const port53: Match = { kind: 'dport', ports: [DNS_PORT] };
  r.add('nat', OUTPUT, [{ kind: 'oifname', names: ['lo'], negate: true }, udp, notZtunnelMarked, { kind: 'l4module', protocol: 'udp' }, port53], { kind: 'redirect', port: AMBIENT.dnsPort, iptablesFlag: '--to-port' }, 'dns-udp-to-ztunnel');
  r.add('nat', OUTPUT, [{ kind: 'daddr', cidrs: [LOOPBACK[family]], negate: true }, tcp, port53, notZtunnelMarked], { kind: 'redirect', port: AMBIENT.dnsPort }, 'dns-tcp-to-ztunnel');
  // Conntrack zones keep ztunnel's upstream DNS flows apart from the app's (istio/istio#33469).
  r.add('raw', OUTPUT, [udp, ztunnelMarked, { kind: 'l4module', protocol: 'udp' }, port53], { kind: 'ctZone', zone: 1 }, 'dns-ztunnel-to-upstream-zone');
  r.add('raw', PRERT, [udp, notZtunnelMarked, { kind: 'l4module', protocol: 'udp' }, { kind: 'sport', ports: [DNS_PORT] }], { kind: 'ctZone', zone: 1 }, 'dns-upstream-reply-zone');
}

function outbound(r: Rules, _c: AmbientConfig, family: Family): void {
  const notLoopback: Match = { kind: 'daddr', cidrs: [LOOPBACK[family]], negate: true };
  r.add('nat', OUTPUT, [tcp, { kind: 'mark', mark: AMBIENT.connMark, mask: AMBIENT.connMask }], accept, 'ztunnel-accepted-connection-not-captured');
  r.add('nat', OUTPUT, [notLoopback, { kind: 'oifname', names: ['lo'] }], accept, 'app-to-itself-not-captured');
  r.add('nat', OUTPUT, [notLoopback, tcp, notZtunnelMarked], { kind: 'redirect', port: AMBIENT.outboundPort }, 'outbound-to-ztunnel');
}

/** `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and `ip route add local default dev lo table 100` (cni/pkg/iptables/iptables_linux.go). */
export function ambientLinks(family: Family): LinkSetup[] {
  return [
    { kind: 'rule', family, fwmark: AMBIENT.connMark, mask: AMBIENT.connMask, priority: AMBIENT.rulePriority, table: AMBIENT.routeTable },
    { kind: 'route', family, type: 'local', dst: 'default', dev: 'lo', table: AMBIENT.routeTable },
  ];
}

export function planAmbientFamily(c: AmbientConfig, family: Family): FamilyPlan {
  const r = new Rules();
  jumps(r, c);
  virtualInterfaces(r, c);
  inbound(r, c, family);
  dns(r, c, family);
  outbound(r, c, family);
  return { family, rules: r.rules, links: ambientLinks(family) };
}

/** Both families' rules; which of them a pod gets is decided when applying (IPv6 only with AMBIENT_IPV6). */
export function buildAmbientPlan(c: AmbientConfig): Plan<AmbientConfig> {
  return { config: c, ipv4: planAmbientFamily(c, 'ipv4'), ipv6: planAmbientFamily(c, 'ipv6') };
}

/** Ambient's routing alone, for `remove` to take away whatever data plane programmed the netns. */
export const AMBIENT_LINKS: Plan<undefined> = {
  config: undefined,
  ipv4: { family: 'ipv4', rules: [], links: ambientLinks('ipv4') },
  ipv6: { family: 'ipv6', rules: [], links: ambientLinks('ipv6') },
};
