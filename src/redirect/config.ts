/**
 * From a pod's annotations (and the proxy's settings) to a validated RedirectConfig.
 *
 * Names, defaults and meaning follow Istio's CNI plugin at HEAD (cni/pkg/plugin/sidecar_redirect.go
 * NewRedirect), so a pod annotated for Istio gets the same redirection. Where Istio accepts a value that then breaks at apply time (a `*` in a port exclusion list,
 * a malformed interface name), we reject it up front with a message naming the annotation, the value and
 * why. Nothing is silently dropped.
 */
import type * as IpAddress from 'ip-address';

let ipAddressModule: typeof IpAddress | undefined;
/**
 * ip-address, loaded on the first CIDR: building its regular expressions costs several milliseconds at load,
 * and most pods' annotations name no CIDR (the standalone ADD counts every millisecond of its start).
 */
function ipAddress(): typeof IpAddress {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return (ipAddressModule ??= require('ip-address') as typeof IpAddress);
}
import { InvalidConfigError } from '../errors';
import { ANNOTATIONS, effectiveProxyId } from '../mesh/istio-names';
import type { ProxySettings } from '../mesh/decision';
import { DEFAULTS } from './constants';

export type InterceptionMode = 'REDIRECT' | 'TPROXY' | 'NONE';

export type { ProxySettings } from '../mesh/decision';

/** A list of CIDRs split by family, in the order given; `all` is the `*` wildcard. */
export interface CidrList {
  all: boolean;
  ipv4: string[];
  ipv6: string[];
  /** A range whose address is a loopback address (127.x.x.x, ::1) was listed (Istio's HasLoopBackIP). */
  hasLoopback: boolean;
}

export interface RedirectConfig {
  mode: InterceptionMode;
  /** Outbound capture port (Envoy's virtualOutbound listener). */
  proxyPort: number;
  /** Inbound capture port (Envoy's virtualInbound listener). */
  inboundCapturePort: number;
  /** The HBONE tunnel port, never redirected. */
  inboundTunnelPort: number;
  proxyUid: number;
  proxyGid: number;
  /** `*` (all) or the listed ports; an empty list means no inbound capture at all. */
  includeInboundPorts: '*' | number[];
  excludeInboundPorts: number[];
  includeOutboundPorts: number[];
  excludeOutboundPorts: number[];
  includeOutboundIPRanges: CidrList;
  excludeOutboundIPRanges: CidrList;
  excludeInterfaces: string[];
  kubevirtInterfaces: string[];
  dnsCapture: boolean;
  /** INVALID_DROP: conntrack-INVALID packets are dropped in mangle PREROUTING (Istio's ISTIO_DROP chain). */
  invalidDrop: boolean;
  /**
   * ISTIO_DUAL_STACK. Istio programs IPv6 only when it is set (or the pod's first address is IPv6); mesh-cni
   * programs IPv6 whenever the pod has a global IPv6 address, set or not, so no IPv6 traffic bypasses the
   * proxy. Kept so `plan`/`explain` can say which Istio would have done.
   */
  dualStack: boolean;
  /** TPROXY: the mark of diverted inbound packets and the policy routing table they are looked up in. */
  tproxyMark: number;
  tproxyRouteTable: number;
}

function items(key: string, value: string): string[] {
  const trimmed = value.trim();
  if (trimmed === '') return [];
  const parts = trimmed.split(',').map((p) => p.trim());
  if (parts.some((p) => p === '')) throw new InvalidConfigError(key, value, 'the list has an empty element (check for ",," or a trailing comma)');
  return parts;
}

function parsePort(key: string, value: string, text: string): number {
  if (!/^\d+$/.test(text)) throw new InvalidConfigError(key, value, `"${text}" is not a port number (1-65535)`);
  const port = Number(text);
  if (port < 1 || port > 65535) throw new InvalidConfigError(key, value, `port ${text} is out of range (1-65535)`);
  return port;
}

function dedup<T>(list: T[]): T[] {
  return [...new Set(list)];
}

export function parsePortList(key: string, value: string, options: { wildcard: true }): '*' | number[];
export function parsePortList(key: string, value: string, options?: { wildcard?: false }): number[];
export function parsePortList(key: string, value: string, options: { wildcard?: boolean } = {}): '*' | number[] {
  if (value.trim() === '*') {
    if (options.wildcard) return '*';
    throw new InvalidConfigError(key, value, '"*" is not allowed here; list the ports instead');
  }
  const parts = items(key, value);
  if (options.wildcard && parts.includes('*')) throw new InvalidConfigError(key, value, '"*" must stand alone, not in a list');
  return dedup(parts.map((p) => parsePort(key, value, p)));
}

export function parseCidrList(key: string, value: string, options: { wildcard?: boolean } = {}): CidrList {
  if (value.trim() === '*') {
    if (options.wildcard) return { all: true, ipv4: [], ipv6: [], hasLoopback: false };
    throw new InvalidConfigError(key, value, '"*" is not allowed here; list the CIDRs instead');
  }
  const list: CidrList = { all: false, ipv4: [], ipv6: [], hasLoopback: false };
  const cidrs = items(key, value);
  const { Address4, Address6 } = cidrs.length > 0 ? ipAddress() : ({} as typeof IpAddress);
  for (const text of cidrs) {
    if (text === '*') throw new InvalidConfigError(key, value, '"*" must stand alone, not in a list');
    if (!text.includes('/')) {
      throw new InvalidConfigError(key, value, `"${text}" has no prefix length (write ${text}/${text.includes(':') ? 128 : 32} for one address)`);
    }
    // ip-address accepts a zone id (fe80::1%eth0/64) and drops it; a zone has no meaning in a rule's CIDR.
    if (text.includes('%')) throw new InvalidConfigError(key, value, `"${text}" has a zone id (%...); a CIDR in a rule cannot carry one`);
    if (Address4.isValid(text)) {
      const addr = new Address4(text);
      // The kernel keeps only the network part; normalising here makes plan, rules and read-back agree.
      list.ipv4.push(`${addr.startAddress().correctForm()}/${addr.subnetMask}`);
      if (addr.addressMinusSuffix.startsWith('127.')) list.hasLoopback = true;
    } else if (Address6.isValid(text)) {
      const addr = new Address6(text);
      list.ipv6.push(`${addr.startAddress().correctForm()}/${addr.subnetMask}`);
      if (new Address6(addr.addressMinusSuffix ?? '').correctForm() === '::1') list.hasLoopback = true;
    } else {
      throw new InvalidConfigError(key, value, `"${text}" is not an IPv4 or IPv6 CIDR`);
    }
  }
  list.ipv4 = dedup(list.ipv4);
  list.ipv6 = dedup(list.ipv6);
  return list;
}

// The kernel also refuses "/" and ":"; `"`, `\` and `*` would change meaning inside an nft string (quote,
// escape, wildcard), so they are refused for every backend alike rather than only for nftables. Control
// characters (NUL above all: iptables stops reading the name there) are refused too, and the length is the
// kernel's: 15 bytes of UTF-8, not 15 UTF-16 units.
const IFNAME = /^[^\s/:,"\\*\x00-\x1f\x7f]+$/;

/** A comma-separated list of interface names, each checked (the sidecar's and ambient's interface annotations). */
export function parseInterfaces(key: string, value: string): string[] {
  const names = items(key, value);
  for (const name of names) {
    if (!IFNAME.test(name) || Buffer.byteLength(name, 'utf8') > 15 || name === '.' || name === '..') {
      throw new InvalidConfigError(key, value, `"${name}" is not a valid interface name (1-15 bytes, no spaces, control characters, "/", ":", '"', "\\" or "*")`);
    }
  }
  return dedup(names);
}

function parseMode(value: string): InterceptionMode {
  if (value === 'REDIRECT' || value === 'TPROXY' || value === 'NONE') return value;
  throw new InvalidConfigError(ANNOTATIONS.interceptionMode, value, 'must be REDIRECT, TPROXY or NONE');
}

function parseId(key: string, value: number | undefined): number {
  const id = effectiveProxyId(value);
  if (!Number.isInteger(id) || id < 0 || id > 0xfffffffe) throw new InvalidConfigError(key, String(value), 'must be a uid/gid between 1 and 4294967294');
  return id;
}

/** `istio.io/reroute-virtual-interfaces` when present (even empty), else the deprecated kubevirtInterfaces. */
function rerouteInterfaces(annotations: Record<string, string>): string[] {
  const current = annotations[ANNOTATIONS.rerouteVirtualInterfaces];
  if (current !== undefined) return parseInterfaces(ANNOTATIONS.rerouteVirtualInterfaces, current);
  return parseInterfaces(ANNOTATIONS.kubevirtInterfaces, annotations[ANNOTATIONS.kubevirtInterfaces] ?? '');
}

/** Every annotation we read, so callers (the CLI, `explain`) can show which ones applied. */
export const KNOWN_ANNOTATIONS: readonly string[] = Object.values(ANNOTATIONS);

/**
 * Builds a RedirectConfig; throws InvalidConfigError naming the first bad annotation.
 * Unknown annotations are ignored (a pod carries many that are not ours).
 */
export function redirectConfigFromAnnotations(annotations: Record<string, string>, proxy: ProxySettings = {}): RedirectConfig {
  const get = (key: string, fallback: string) => annotations[key] ?? fallback;
  const mode = parseMode(get(ANNOTATIONS.interceptionMode, 'REDIRECT'));

  // Istio always keeps its own status, health and telemetry ports out of inbound capture, whatever the pod says.
  const excludeInbound = parsePortList(ANNOTATIONS.excludeInboundPorts, get(ANNOTATIONS.excludeInboundPorts, ''));
  const exclude = parseCidrList(ANNOTATIONS.excludeOutboundIPRanges, get(ANNOTATIONS.excludeOutboundIPRanges, ''));

  return {
    mode,
    proxyPort: DEFAULTS.proxyPort,
    inboundCapturePort: DEFAULTS.inboundCapturePort,
    inboundTunnelPort: DEFAULTS.inboundTunnelPort,
    proxyUid: parseId('proxy uid (runAsUser)', proxy.proxyUid),
    proxyGid: parseId('proxy gid (runAsGroup)', proxy.proxyGid),
    includeInboundPorts: parsePortList(ANNOTATIONS.includeInboundPorts, get(ANNOTATIONS.includeInboundPorts, '*'), { wildcard: true }),
    excludeInboundPorts: dedup([...excludeInbound, ...DEFAULTS.alwaysExcludedInboundPorts]),
    includeOutboundPorts: parsePortList(ANNOTATIONS.includeOutboundPorts, get(ANNOTATIONS.includeOutboundPorts, '')),
    // The default (15020) applies only when the annotation is absent: Istio replaces it, it does not add to it.
    excludeOutboundPorts: parsePortList(ANNOTATIONS.excludeOutboundPorts, get(ANNOTATIONS.excludeOutboundPorts, DEFAULTS.excludeOutboundPorts)),
    includeOutboundIPRanges: parseCidrList(ANNOTATIONS.includeOutboundIPRanges, get(ANNOTATIONS.includeOutboundIPRanges, '*'), { wildcard: true }),
    excludeOutboundIPRanges: exclude,
    excludeInterfaces: parseInterfaces(ANNOTATIONS.excludeInterfaces, get(ANNOTATIONS.excludeInterfaces, '')),
    kubevirtInterfaces: rerouteInterfaces(annotations),
    dnsCapture: proxy.dnsCapture ?? false,
    invalidDrop: proxy.invalidDrop ?? false,
    dualStack: proxy.dualStack ?? false,
    tproxyMark: DEFAULTS.tproxyMark,
    tproxyRouteTable: DEFAULTS.tproxyRouteTable,
  };
}

/**
 * A config that uses every feature that writes outside our own chains (TPROXY marks and routes, DNS zones,
 * interface exclusions, the INVALID drop): what `remove` and `show` derive the shapes of our rules from, whatever config wrote them.
 */
export function widestConfig(): RedirectConfig {
  return redirectConfigFromAnnotations(
    {
      [ANNOTATIONS.interceptionMode]: 'TPROXY',
      [ANNOTATIONS.excludeInterfaces]: 'any0',
      [ANNOTATIONS.kubevirtInterfaces]: 'any1',
    },
    { dnsCapture: true, invalidDrop: true },
  );
}

/** Parses `KEY=VALUE` pairs (CLI `--annotation`) into a map; the value may itself contain `=`. */
export function parseAnnotationArgs(pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new InvalidConfigError('--annotation', pair, 'expected KEY=VALUE');
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}
