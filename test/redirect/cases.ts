/** The annotation combinations every renderer is pinned on (golden files) and the kernel tests reuse. */
import type { ProxySettings } from '../../src/redirect/config';

export interface PodCase {
  name: string;
  annotations: Record<string, string>;
  proxy?: ProxySettings;
}

const T = 'traffic.sidecar.istio.io/';

export const PLAN_CASES: PodCase[] = [
  { name: 'basic', annotations: {} },
  { name: 'include-exclude-ports', annotations: { [`${T}includeInboundPorts`]: '1111,2222', [`${T}excludeInboundPorts`]: '3333,4444', [`${T}excludeOutboundPorts`]: '5555,6666' } },
  { name: 'tproxy', annotations: { 'sidecar.istio.io/interceptionMode': 'TPROXY' } },
  { name: 'tproxy-include-ports', annotations: { 'sidecar.istio.io/interceptionMode': 'TPROXY', [`${T}includeInboundPorts`]: '8080,9090' } },
  { name: 'include-exclude-ip', annotations: { [`${T}includeOutboundIPRanges`]: '127.0.0.0/8', [`${T}excludeOutboundIPRanges`]: '10.0.0.0/8' } },
  { name: 'ip-ranges-mixed', annotations: { [`${T}includeOutboundIPRanges`]: '10.0.0.0/8,fd00::/8', [`${T}excludeOutboundIPRanges`]: '10.1.0.0/16,192.168.0.0/16,fd00:1::/32' } },
  { name: 'include-ipv4-only', annotations: { [`${T}includeOutboundIPRanges`]: '10.96.0.0/12' } },
  { name: 'include-outbound-ports', annotations: { [`${T}includeOutboundIPRanges`]: '', [`${T}includeOutboundPorts`]: '80,443' } },
  { name: 'no-inbound', annotations: { [`${T}includeInboundPorts`]: '' } },
  { name: 'exclude-interfaces', annotations: { [`${T}excludeInterfaces`]: 'net1,net2' } },
  { name: 'exclude-interfaces-tproxy', annotations: { 'sidecar.istio.io/interceptionMode': 'TPROXY', [`${T}excludeInterfaces`]: 'net1' } },
  { name: 'kubevirt', annotations: { [`${T}kubevirtInterfaces`]: 'k6t-eth0,tap0' } },
  { name: 'kubevirt-ranges', annotations: { [`${T}kubevirtInterfaces`]: 'k6t-eth0', [`${T}includeOutboundIPRanges`]: '10.0.0.0/8,172.16.0.0/12' } },
  { name: 'dns', annotations: {}, proxy: { dnsCapture: true } },
  { name: 'dns-tproxy', annotations: { 'sidecar.istio.io/interceptionMode': 'TPROXY' }, proxy: { dnsCapture: true } },
  { name: 'custom-uid', annotations: {}, proxy: { proxyUid: 1000670000, proxyGid: 1000670001 } },
  { name: 'none', annotations: { 'sidecar.istio.io/interceptionMode': 'NONE' } },
  { name: 'invalid-drop', annotations: {}, proxy: { invalidDrop: true } },
  { name: 'invalid-drop-tproxy-dns', annotations: { 'sidecar.istio.io/interceptionMode': 'TPROXY' }, proxy: { invalidDrop: true, dnsCapture: true } },
  // The current annotation wins over the deprecated one, which is then not read at all.
  { name: 'reroute-virtual-interfaces', annotations: { 'istio.io/reroute-virtual-interfaces': 'k6t-eth0', [`${T}kubevirtInterfaces`]: 'tap9' } },
];
