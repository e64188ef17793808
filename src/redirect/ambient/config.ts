/**
 * What an ambient pod's in-pod rules depend on: the node's settings (Istio's AMBIENT_DNS_CAPTURE,
 * AMBIENT_IPV6, HOST_PROBE_SNAT_IP, HOST_PROBE_SNAT_IPV6) and the pod's three annotations, read as Istio HEAD's
 * node agent reads them (cni/pkg/nodeagent/net.go getPodLevelTrafficOverrides):
 *
 * - `ambient.istio.io/dns-capture`: true or false overrides the node's DNS capture for this pod;
 * - `ambient.istio.io/bypass-inbound-capture`: true is Istio's "ingress mode" (inbound is not redirected to
 *   ztunnel, and the kubelet-probe accept is not needed);
 * - `istio.io/reroute-virtual-interfaces`: interfaces whose inbound TCP is sent to ztunnel's outbound port
 *   (KubeVirt, VMs).
 * Ambient reads no `traffic.sidecar.istio.io/*` annotation.
 *
 * Istio logs a boolean annotation that strconv.ParseBool cannot read and carries on as if it were absent. We
 * refuse it (InvalidConfigError, the ADD's code 101, naming the annotation), as we refuse every bad sidecar
 * annotation: a typo would otherwise run the pod quietly with a capture other than the one asked for
 * (`dns-capture: flase` captures DNS), and the pod's events say exactly what to fix.
 */
import { InvalidConfigError } from '../../errors';
import { AMBIENT_ANNOTATIONS, ANNOTATIONS, parseGoBool } from '../../mesh/istio-names';
import { parseInterfaces } from '../config';

/** The node-wide settings, at Istio's chart defaults (manifests/charts/istio-cni values.yaml, nodeagent/options.go). */
export type { AmbientNodeSettings } from '../../mesh/decision';
import type { AmbientNodeSettings } from '../../mesh/decision';

export const DEFAULT_HOST_PROBE_SNAT_IPV4 = '169.254.7.127';
export const DEFAULT_HOST_PROBE_SNAT_IPV6 = 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff';

export const DEFAULT_AMBIENT_NODE: AmbientNodeSettings = Object.freeze({
  dnsCapture: true,
  ipv6: true,
  hostProbeSnatIpv4: DEFAULT_HOST_PROBE_SNAT_IPV4,
  hostProbeSnatIpv6: DEFAULT_HOST_PROBE_SNAT_IPV6,
});

/** Everything one pod's ambient rules are made from. */
export interface AmbientConfig {
  dnsCapture: boolean;
  /** `bypass-inbound-capture`: inbound goes straight to the app (Istio's IngressMode) */
  ingressMode: boolean;
  virtualInterfaces: string[];
  ipv6: boolean;
  hostProbeSnat: { ipv4: string; ipv6: string };
  /** Which annotation set what, for `plan` and `explain`. */
  sources: string[];
}

function podBool(annotations: Record<string, string>, key: string): boolean | undefined {
  const value = annotations[key];
  if (value === undefined) return undefined;
  const parsed = parseGoBool(value);
  if (parsed === undefined) throw new InvalidConfigError(key, value, 'not a boolean (Go strconv.ParseBool: true, false, 1, 0, t, f, TRUE, FALSE, True, False)');
  return parsed;
}

export function ambientConfigFromAnnotations(annotations: Record<string, string>, node: AmbientNodeSettings = DEFAULT_AMBIENT_NODE): AmbientConfig {
  const sources: string[] = [];
  const dns = podBool(annotations, AMBIENT_ANNOTATIONS.dnsCapture);
  if (dns !== undefined) sources.push(`${AMBIENT_ANNOTATIONS.dnsCapture}=${annotations[AMBIENT_ANNOTATIONS.dnsCapture]} (the node says ${node.dnsCapture})`);
  const ingress = podBool(annotations, AMBIENT_ANNOTATIONS.bypassInboundCapture) ?? false;
  if (annotations[AMBIENT_ANNOTATIONS.bypassInboundCapture] !== undefined) sources.push(`${AMBIENT_ANNOTATIONS.bypassInboundCapture}=${annotations[AMBIENT_ANNOTATIONS.bypassInboundCapture]}`);
  const virt = annotations[ANNOTATIONS.rerouteVirtualInterfaces];
  const virtualInterfaces = virt === undefined ? [] : parseInterfaces(ANNOTATIONS.rerouteVirtualInterfaces, virt);
  if (virt !== undefined) sources.push(`${ANNOTATIONS.rerouteVirtualInterfaces}=${virt}`);
  return {
    dnsCapture: dns ?? node.dnsCapture,
    ingressMode: ingress,
    virtualInterfaces,
    ipv6: node.ipv6,
    hostProbeSnat: { ipv4: node.hostProbeSnatIpv4, ipv6: node.hostProbeSnatIpv6 },
    sources,
  };
}
