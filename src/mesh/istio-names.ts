/**
 * Istio's API names that mesh-cni reads or writes: annotations, labels, the taint, container names and the
 * proxy's env. They are Istio's contract, not ours, so they live in one module that every room may import
 * (it imports nothing; Go's ParseBool, how Istio reads every boolean of a pod, is here too), and none is spelled twice.
 */

/** The annotations that shape the redirect (Istio's cni/pkg/plugin NewRedirect and tools/istio-iptables). */
export const ANNOTATIONS = {
  interceptionMode: 'sidecar.istio.io/interceptionMode',
  includeOutboundIPRanges: 'traffic.sidecar.istio.io/includeOutboundIPRanges',
  excludeOutboundIPRanges: 'traffic.sidecar.istio.io/excludeOutboundIPRanges',
  includeInboundPorts: 'traffic.sidecar.istio.io/includeInboundPorts',
  excludeInboundPorts: 'traffic.sidecar.istio.io/excludeInboundPorts',
  includeOutboundPorts: 'traffic.sidecar.istio.io/includeOutboundPorts',
  excludeOutboundPorts: 'traffic.sidecar.istio.io/excludeOutboundPorts',
  excludeInterfaces: 'traffic.sidecar.istio.io/excludeInterfaces',
  /** deprecated by `istio.io/reroute-virtual-interfaces`, read only when that one is absent (as Istio does) */
  kubevirtInterfaces: 'traffic.sidecar.istio.io/kubevirtInterfaces',
  rerouteVirtualInterfaces: 'istio.io/reroute-virtual-interfaces',
} as const;

/** The annotations and labels that decide whether a pod is meshed at all. */
export const SIDECAR_STATUS_ANNOTATION = 'sidecar.istio.io/status';
export const INJECT_KEY = 'sidecar.istio.io/inject';
export const DATAPLANE_MODE_LABEL = 'istio.io/dataplane-mode';
/** The values of DATAPLANE_MODE_LABEL Istio acts on (pkg/config/constants: DataplaneModeAmbient, DataplaneModeNone). */
export const DATAPLANE_MODE_AMBIENT = 'ambient';
export const DATAPLANE_MODE_NONE = 'none';

/**
 * Ambient's per-pod annotations (istio.io/api annotation: AmbientDnsCapture, AmbientBypassInboundCapture; read by
 * cni/pkg/nodeagent/net.go getPodLevelTrafficOverrides together with ANNOTATIONS.rerouteVirtualInterfaces), and
 * the one the node agent writes on a pod once it is captured (AmbientRedirection: `enabled`, or `pending` while
 * no ztunnel has it), which istiod reads to send the pod HBONE.
 */
export const AMBIENT_ANNOTATIONS = {
  dnsCapture: 'ambient.istio.io/dns-capture',
  bypassInboundCapture: 'ambient.istio.io/bypass-inbound-capture',
  redirection: 'ambient.istio.io/redirection',
} as const;
/** ztunnel's own pods: app=ztunnel in Istio's system namespace (cni/pkg/util IsZtunnelPod) are never captured. */
export const ZTUNNEL_APP_LABEL = 'ztunnel';

/** Istio's label for pods whose redirection is not in place, so existing tooling works. */
export const UNINITIALIZED_LABEL = 'cni.istio.io/uninitialized';
/** The node taint that keeps pods off a node until its CNI can redirect them (Istio uses the same key). */
export const NOT_READY_TAINT_KEY = 'cni.istio.io/not-ready';

export const PROXY_CONTAINER = 'istio-proxy';
/** The proxy's uid and gid when its container names none, or names 0 (uid 0 is never the proxy): Istio's 1337. */
export const PROXY_DEFAULT_ID = 1337;

/** The proxy's uid or gid as Istio takes it from the container's securityContext (ExtractPodInfo). */
export function effectiveProxyId(id: number | undefined): number {
  return id === undefined || id === 0 ? PROXY_DEFAULT_ID : id;
}
export const INIT_CONTAINER = 'istio-init';
/** Istio's init container that checks the redirection and exits 126 when it is not in place. */
export const VALIDATION_CONTAINER = 'istio-validation';

/** Istio's proxy env that shape or skip the redirect (ExtractPodInfo reads them from istio-proxy). */
export const PROXY_ENV = {
  disableEnvoy: 'DISABLE_ENVOY',
  dnsCapture: 'ISTIO_META_DNS_CAPTURE',
  invalidDrop: 'INVALID_DROP',
  dualStack: 'ISTIO_DUAL_STACK',
} as const;

/** Go's strconv.ParseBool, which Istio uses for every boolean it reads from a pod. */
export function parseGoBool(value: string): boolean | undefined {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(value)) return false;
  return undefined;
}
