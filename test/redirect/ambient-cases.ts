/**
 * Istio HEAD's ambient in-pod cases (test/golden/istio/ambient/SOURCE.md): the node's settings and the pod's
 * annotations that ask for each, shared by the golden tests and the kernel tests.
 */
import { DEFAULT_AMBIENT_NODE, type AmbientNodeSettings } from '../../src/redirect/ambient/config';

export interface AmbientCase {
  /** the golden's name in cni/pkg/iptables/testdata and cni/pkg/nftables/testdata */
  name: string;
  dnsCapture: boolean;
  annotations: Record<string, string>;
}

export const AMBIENT_CASES: AmbientCase[] = [
  { name: 'default', dnsCapture: true, annotations: {} },
  { name: 'ingress', dnsCapture: false, annotations: { 'ambient.istio.io/bypass-inbound-capture': 'true' } },
  { name: 'virtual_interfaces', dnsCapture: false, annotations: { 'istio.io/reroute-virtual-interfaces': 'fake1s0f0,fake1s0f1' } },
  { name: 'ingress_and_virtual_interfaces', dnsCapture: false, annotations: { 'ambient.istio.io/bypass-inbound-capture': 'true', 'istio.io/reroute-virtual-interfaces': 'fake1s0f0,fake1s0f1' } },
  { name: 'dns_pod_enabled_and_off_globally', dnsCapture: false, annotations: { 'ambient.istio.io/dns-capture': 'true' } },
  { name: 'dns_pod_disabled_and_on_globally', dnsCapture: true, annotations: { 'ambient.istio.io/dns-capture': 'false' } },
];

/** Istio's test config (cni/pkg/iptables/iptables_test.go constructTestConfig): the IPv6 probe address is its own. */
export const ISTIO_TEST_NODE: AmbientNodeSettings = { ...DEFAULT_AMBIENT_NODE, hostProbeSnatIpv6: 'e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164' };
