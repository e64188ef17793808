/** Names and numbers shared by config, plan and both renderers: one place, so none is spelled twice. */

/** Istio's defaults at HEAD (cni/pkg/plugin/sidecar_redirect.go and tools/istio-iptables). */
export const DEFAULTS = {
  proxyPort: 15001,
  inboundCapturePort: 15006,
  inboundTunnelPort: 15008,
  alwaysExcludedInboundPorts: [15020, 15021, 15090],
  excludeOutboundPorts: '15020',
  dnsListenerPort: 15053,
  tproxyMark: 1337,
  /** TPROXY: the proxy marks its own outbound-to-inbound packets so they are not diverted again. */
  outboundMark: 1338,
  tproxyRouteTable: 133,
} as const;

export const CHAINS = {
  inbound: 'ISTIO_INBOUND',
  redirect: 'ISTIO_REDIRECT',
  inRedirect: 'ISTIO_IN_REDIRECT',
  output: 'ISTIO_OUTPUT',
  /** DNS capture: the 15053 redirects (nat) and the conntrack zones of queries (raw) */
  outputDns: 'ISTIO_OUTPUT_DNS',
  divert: 'ISTIO_DIVERT',
  tproxy: 'ISTIO_TPROXY',
  /** INVALID_DROP: conntrack-INVALID packets jump here and are dropped */
  drop: 'ISTIO_DROP',
  /** Ambient, in the pod: Istio's in-pod prerouting chain (its output chain is ISTIO_OUTPUT, shared in name) */
  ambientPrerouting: 'ISTIO_PRERT',
  /** Ambient, on the node: the kubelet probe SNAT (Istio's is ISTIO_POSTRT; ours is named apart, see redirect/ambient/host.ts) */
  hostProbe: 'MESH_CNI_PROBE',
} as const;

export type ChainName = (typeof CHAINS)[keyof typeof CHAINS];
export const OUR_CHAINS: readonly string[] = Object.values(CHAINS);

export const BUILTIN_CHAINS = ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'] as const;
export type BuiltinChain = (typeof BUILTIN_CHAINS)[number];

export type Table = 'mangle' | 'nat' | 'raw';
export type Family = 'ipv4' | 'ipv6';
export const FAMILIES: readonly Family[] = ['ipv4', 'ipv6'];

/** Loopback addresses per family, and the source the proxy uses for inbound passthrough (127.0.0.6 / ::6). */
export const LOOPBACK: Record<Family, string> = { ipv4: '127.0.0.1/32', ipv6: '::1/128' };
export const PASSTHROUGH_SOURCE: Record<Family, string> = { ipv4: '127.0.0.6/32', ipv6: '::6/128' };
export const DNS_PORT = 53;

/** nftables: one `inet` table per iptables table, so both families share one ruleset and one transaction. */
export const NFT_TABLES: Record<Table, string> = { nat: 'mesh-cni-nat', mangle: 'mesh-cni-mangle', raw: 'mesh-cni-raw' };
export const NFT_TABLE_NAMES: readonly string[] = Object.values(NFT_TABLES);

/** Where Istio's nft name is not its iptables name lower-cased: ambient's in-pod prerouting chain (cni/pkg/nftables). */
const NFT_CHAIN_NAMES: Record<string, string> = { ISTIO_PRERT: 'istio-prerouting' };

/** Istio's nft chain names are its iptables names in lower case with dashes (ISTIO_IN_REDIRECT → istio-in-redirect). */
export function nftChainName(chain: string): string {
  return NFT_CHAIN_NAMES[chain] ?? chain.toLowerCase().replace(/_/g, '-');
}
