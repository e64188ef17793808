/**
 * Injected pods in the shapes Istio's sidecar injector emits today (learned from its templates and testdata,
 * written here in our own words): where istio-proxy sits (a regular container, or an init container with
 * `restartPolicy: Always` — a native sidecar), its args, env and securityContext, the status annotation the
 * injector writes, and the labels and annotations that change the plugin's decision.
 *
 * Each fixture states what Istio's CNI plugin decides for it (`expect`), and, where the annotations alone
 * cannot tell, what mesh-cni does with Kubernetes turned off (`annotationsOnly`, with the reason).
 */
import type { V1Container, V1Pod } from '@kubernetes/client-node';

export interface Outcome {
  /** `meshed` or the skip reason */
  reason: string;
  /** the proxy uid/gid the rules must exempt (meshed only) */
  uid?: number;
  gid?: number;
  /** more text the programmed rules must hold (iptables-save of the pod netns) */
  rules?: RegExp[];
  /** text they must not hold */
  noRules?: RegExp[];
}

export interface Fixture {
  name: string;
  /** what the fixture stands for */
  about: string;
  namespace: string;
  /** labels of the namespace (created with the fixture) */
  namespaceLabels?: Record<string, string>;
  pod: V1Pod;
  expect: Outcome;
  /** with Kubernetes turned off; absent: the same as `expect` */
  annotationsOnly?: Outcome & { why: string };
}

const PROXY_IMAGE = 'docker.io/istio/proxyv2:1.28.0';

type Injection = 'istio-init' | 'cni';

interface ProxyOptions {
  type?: string;
  env?: Record<string, string>;
  runAsUser?: number;
  runAsGroup?: number;
  native?: boolean;
  tproxy?: boolean;
}

function fieldRef(name: string, fieldPath: string) {
  return { name, valueFrom: { fieldRef: { fieldPath } } };
}

/** istio-proxy as the injector writes it: pilot-agent args, its env, probes, drain hook, non-root identity. */
function proxyContainer(o: ProxyOptions = {}): V1Container {
  const env = [
    { name: 'PILOT_CERT_PROVIDER', value: 'istiod' },
    { name: 'CA_ADDR', value: 'istiod.istio-system.svc:15012' },
    fieldRef('POD_NAME', 'metadata.name'),
    fieldRef('POD_NAMESPACE', 'metadata.namespace'),
    fieldRef('INSTANCE_IP', 'status.podIP'),
    { name: 'ISTIO_META_INTERCEPTION_MODE', value: o.tproxy ? 'TPROXY' : 'REDIRECT' },
    { name: 'ISTIO_META_CLUSTER_ID', value: 'Kubernetes' },
    { name: 'ISTIO_META_MESH_ID', value: 'cluster.local' },
    ...Object.entries(o.env ?? {}).map(([name, value]) => ({ name, value })),
  ];
  const readiness = { httpGet: { path: '/healthz/ready', port: 15021 }, periodSeconds: 15, failureThreshold: 4, timeoutSeconds: 3 };
  return {
    name: 'istio-proxy',
    image: PROXY_IMAGE,
    args: ['proxy', o.type ?? 'sidecar', '--domain', '$(POD_NAMESPACE).svc.cluster.local', '--proxyLogLevel=warning', '--log_output_level=default:info'],
    env,
    ports: [{ containerPort: 15090, name: 'http-envoy-prom', protocol: 'TCP' }],
    readinessProbe: readiness,
    ...(o.native ? { restartPolicy: 'Always', startupProbe: { ...readiness, periodSeconds: 1, failureThreshold: 600 } } : {}),
    lifecycle: { preStop: { exec: { command: ['pilot-agent', 'request', '--debug-port=15020', 'POST', 'drain'] } } },
    securityContext: {
      allowPrivilegeEscalation: false,
      privileged: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: (o.runAsUser ?? 1337) !== 0,
      runAsUser: o.runAsUser ?? 1337,
      runAsGroup: o.runAsGroup ?? 1337,
      capabilities: o.tproxy ? { add: ['NET_ADMIN'], drop: ['ALL'] } : { drop: ['ALL'] },
    },
    volumeMounts: [{ mountPath: '/etc/istio/proxy', name: 'istio-envoy' }],
  } as V1Container;
}

/** istio-init (the privileged init container mesh-cni replaces) or istio-validation (CNI mode's check). */
function initContainer(kind: Injection, tproxy = false): V1Container {
  const args = ['istio-iptables', '-p', '15001', '-z', '15006', '-u', '1337', '-m', tproxy ? 'TPROXY' : 'REDIRECT', '-i', '*', '-x', '', '-b', '*', '-d', '15090,15021,15020', '--log_output_level=default:info'];
  return kind === 'istio-init'
    ? { name: 'istio-init', image: PROXY_IMAGE, args, securityContext: { runAsUser: 0, runAsGroup: 0, runAsNonRoot: false, capabilities: { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] } } }
    : { name: 'istio-validation', image: PROXY_IMAGE, args: [...args, '--run-validation', '--skip-rule-apply'], securityContext: { runAsUser: 1337, runAsGroup: 1337, runAsNonRoot: true, capabilities: { drop: ['ALL'] } } };
}

const app = (name = 'app'): V1Container => ({ name, image: 'docker.io/library/busybox:1.36', ports: [{ containerPort: 8080, name: 'http' }] });

interface InjectOptions {
  name: string;
  namespace?: string;
  injection?: Injection;
  /** istio-proxy as a native sidecar (an init container) */
  native?: boolean;
  proxy?: ProxyOptions;
  /** the injector adds no init container (gateway and proxyless templates) */
  noInit?: boolean;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  apps?: V1Container[];
  extraSpec?: Partial<NonNullable<V1Pod['spec']>>;
}

/** A pod after injection: init containers, proxy placement and the status annotation listing what was added. */
export function injected(o: InjectOptions): V1Pod {
  const injection = o.injection ?? 'cni';
  const tproxy = o.proxy?.tproxy ?? false;
  const proxy = proxyContainer({ ...o.proxy, native: o.native });
  const inits = o.noInit ? [] : [initContainer(injection, tproxy)];
  const initContainers = o.native ? [...inits, proxy] : inits;
  const containers = o.native ? (o.apps ?? [app()]) : [...(o.apps ?? [app()]), proxy];
  const status = {
    initContainers: initContainers.length > 0 ? initContainers.map((c) => c.name) : null,
    containers: o.native ? null : ['istio-proxy'],
    volumes: ['workload-socket', 'istio-envoy', 'istio-data', 'istio-podinfo', 'istio-token', 'istiod-ca-cert'],
    imagePullSecrets: null,
    revision: 'default',
  };
  return {
    metadata: {
      name: o.name,
      namespace: o.namespace,
      labels: { app: o.name.replace(/-[a-z0-9]{5}$/, ''), 'security.istio.io/tlsMode': 'istio', 'service.istio.io/canonical-name': o.name, ...o.labels },
      annotations: {
        'istio.io/rev': 'default',
        'kubectl.kubernetes.io/default-container': (o.apps ?? [app()])[0]?.name ?? 'istio-proxy',
        'prometheus.io/path': '/stats/prometheus',
        'prometheus.io/port': '15020',
        'prometheus.io/scrape': 'true',
        ...(tproxy ? { 'sidecar.istio.io/interceptionMode': 'TPROXY' } : {}),
        ...o.annotations,
        'sidecar.istio.io/status': JSON.stringify(status),
      },
    },
    spec: {
      ...(initContainers.length > 0 ? { initContainers } : {}),
      containers,
      volumes: [{ name: 'istio-envoy', emptyDir: { medium: 'Memory' } }],
      ...o.extraSpec,
    },
  };
}

/** A pod the injector never touched. */
function plain(name: string, labels: Record<string, string> = {}, annotations: Record<string, string> = {}): V1Pod {
  return { metadata: { name, labels: { app: name, ...labels }, annotations }, spec: { containers: [app()] } };
}

const meshed = (uid = 1337, gid = uid, rules: RegExp[] = []): Outcome => ({ reason: 'meshed', uid, gid, rules });
const skip = (reason: string): Outcome => ({ reason });
const DNS = /--to-ports 15053/;
const DROP = /-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP/;
const ASSUMED_DEFAULTS = 'the proxy container is not in the annotations: its uid/gid, env and args are assumed at Istio\'s defaults';

export const FIXTURES: Fixture[] = [
  {
    name: 'classic-istio-init',
    about: 'classic sidecar: istio-init programs the rules itself',
    namespace: 'shop',
    pod: injected({ name: 'cart-7d9f4', injection: 'istio-init' }),
    expect: skip('has-istio-init'),
  },
  {
    name: 'classic-native-istio-init',
    about: 'native sidecar with istio-init (no CNI): istio-init still there',
    namespace: 'shop',
    pod: injected({ name: 'cart-native-1', injection: 'istio-init', native: true }),
    expect: skip('has-istio-init'),
  },
  {
    name: 'cni-classic',
    about: 'CNI mode: istio-validation, istio-proxy a regular container',
    namespace: 'shop',
    pod: injected({ name: 'web-6b8c9' }),
    expect: meshed(),
  },
  {
    name: 'cni-native',
    about: 'CNI mode with a native sidecar: initContainers [istio-validation, istio-proxy], status containers null',
    namespace: 'shop',
    pod: injected({ name: 'web-native-2', native: true }),
    expect: meshed(),
  },
  {
    name: 'cni-native-openshift-uid',
    about: 'native sidecar, OpenShift-style uid/gid from the namespace range',
    namespace: 'openshift-app',
    pod: injected({ name: 'api-5f7d2', native: true, proxy: { runAsUser: 1000620000, runAsGroup: 1000620000 } }),
    expect: meshed(1000620000),
    annotationsOnly: { ...meshed(1337), why: ASSUMED_DEFAULTS },
  },
  {
    name: 'cni-classic-custom-uid-gid',
    about: 'regular sidecar with a uid and gid that differ',
    namespace: 'openshift-app',
    pod: injected({ name: 'api-classic-3', proxy: { runAsUser: 1000650000, runAsGroup: 1000650001 } }),
    expect: meshed(1000650000, 1000650001),
    annotationsOnly: { ...meshed(1337), why: ASSUMED_DEFAULTS },
  },
  {
    name: 'cni-native-tproxy',
    about: 'TPROXY: the proxy runs as uid 0 (absent or 0 means 1337), gid 1337',
    namespace: 'shop',
    pod: injected({ name: 'tproxy-1', native: true, proxy: { tproxy: true, runAsUser: 0, runAsGroup: 1337 } }),
    expect: meshed(1337, 1337, [/-j TPROXY --on-port 15006 .*--tproxy-mark 0x539\/0xffffffff/]),
  },
  {
    name: 'cni-classic-tproxy',
    about: 'TPROXY with a regular sidecar',
    namespace: 'shop',
    pod: injected({ name: 'tproxy-2', proxy: { tproxy: true, runAsUser: 0, runAsGroup: 1337 } }),
    expect: meshed(1337, 1337, [/TPROXY/]),
  },
  {
    name: 'cni-dns-capture',
    about: 'DNS capture through ISTIO_META_DNS_CAPTURE in the proxy env',
    namespace: 'shop',
    pod: injected({ name: 'dns-1', proxy: { env: { ISTIO_META_DNS_CAPTURE: 'true', ISTIO_META_DNS_AUTO_ALLOCATE: 'true' } } }),
    expect: meshed(1337, 1337, [DNS]),
    annotationsOnly: { ...meshed(1337), noRules: [DNS], why: 'ISTIO_META_DNS_CAPTURE lives in the proxy env, not in the annotations: assumed unset' },
  },
  {
    name: 'cni-native-dns-capture',
    about: 'DNS capture with a native sidecar',
    namespace: 'shop',
    pod: injected({ name: 'dns-native-2', native: true, proxy: { env: { ISTIO_META_DNS_CAPTURE: 'True' } } }),
    expect: meshed(1337, 1337, [DNS]),
    annotationsOnly: { ...meshed(1337), noRules: [DNS], why: 'ISTIO_META_DNS_CAPTURE lives in the proxy env: assumed unset' },
  },
  {
    name: 'gateway-router',
    about: 'an ingress gateway (gateway template): proxy router, no init container',
    namespace: 'istio-ingress',
    pod: injected({ name: 'istio-ingressgateway-7c9d8', noInit: true, proxy: { type: 'router' }, apps: [], annotations: { 'inject.istio.io/templates': 'gateway' } }),
    expect: skip('not-a-sidecar'),
    annotationsOnly: { ...meshed(1337), why: 'the proxy type is in the proxy args, not in the annotations: assumed sidecar (a gateway must not run where Kubernetes is off)' },
  },
  {
    name: 'proxyless-grpc',
    about: 'proxyless gRPC (grpc-agent template): DISABLE_ENVOY=true, no init container',
    namespace: 'grpc',
    pod: injected({ name: 'grpc-echo-1', noInit: true, proxy: { env: { DISABLE_ENVOY: 'true', GRPC_XDS_BOOTSTRAP: '/etc/istio/proxy/grpc-bootstrap.json' } }, annotations: { 'inject.istio.io/templates': 'grpc-agent' } }),
    expect: skip('proxyless'),
    annotationsOnly: { ...meshed(1337), why: 'DISABLE_ENVOY is in the proxy env, not in the annotations: assumed unset' },
  },
  {
    name: 'proxyless-native',
    about: 'proxyless with the proxy as a native sidecar',
    namespace: 'grpc',
    pod: injected({ name: 'grpc-echo-native', native: true, noInit: true, proxy: { env: { DISABLE_ENVOY: '1' } } }),
    expect: skip('proxyless'),
    annotationsOnly: { ...meshed(1337), why: 'DISABLE_ENVOY is in the proxy env: assumed unset' },
  },
  {
    name: 'inject-label-false',
    about: 'an injected pod labelled sidecar.istio.io/inject=false',
    namespace: 'shop',
    pod: injected({ name: 'label-false', labels: { 'sidecar.istio.io/inject': 'false' } }),
    expect: skip('injection-disabled'),
    annotationsOnly: { ...meshed(1337), why: 'labels do not reach the plugin with the annotations: no label assumed' },
  },
  {
    name: 'inject-annotation-false',
    about: 'an injected pod annotated sidecar.istio.io/inject=false',
    namespace: 'shop',
    pod: injected({ name: 'annotation-false', annotations: { 'sidecar.istio.io/inject': 'false' } }),
    expect: skip('injection-disabled'),
  },
  {
    name: 'inject-label-true-annotation-false',
    about: 'conflicting: the label (true) wins over the annotation (false)',
    namespace: 'shop',
    pod: injected({ name: 'conflict-1', labels: { 'sidecar.istio.io/inject': 'true' }, annotations: { 'sidecar.istio.io/inject': 'false' } }),
    expect: meshed(),
    annotationsOnly: { ...skip('injection-disabled'), why: 'the label that overrides the annotation is not visible: the annotation decides' },
  },
  {
    name: 'inject-label-false-annotation-true',
    about: 'conflicting: the label (false) wins over the annotation (true)',
    namespace: 'shop',
    pod: injected({ name: 'conflict-2', labels: { 'sidecar.istio.io/inject': 'false' }, annotations: { 'sidecar.istio.io/inject': 'true' } }),
    expect: skip('injection-disabled'),
    annotationsOnly: { ...meshed(1337), why: 'the label is not visible: the annotation (true) decides' },
  },
  {
    name: 'inject-label-unparsable',
    about: 'an unparsable label wins over annotation false and does not disable (Go ParseBool)',
    namespace: 'shop',
    pod: injected({ name: 'conflict-3', labels: { 'sidecar.istio.io/inject': 'enabled' }, annotations: { 'sidecar.istio.io/inject': 'false' } }),
    expect: meshed(),
    annotationsOnly: { ...skip('injection-disabled'), why: 'the label is not visible: the annotation (false) decides' },
  },
  {
    name: 'not-injected-template-opt-out',
    about: 'a template with inject=false: the injector left it alone (no proxy, no status)',
    namespace: 'shop',
    pod: plain('batch-opt-out', { 'sidecar.istio.io/inject': 'false' }),
    expect: skip('no-istio-proxy'),
    annotationsOnly: { ...skip('not-injected'), why: 'no status annotation: certainly not meshed; without the spec the plugin cannot name the earlier rule' },
  },
  {
    name: 'ambient-pod-label',
    about: 'ambient: istio.io/dataplane-mode=ambient on the pod',
    namespace: 'shop',
    pod: plain('ambient-1', { 'istio.io/dataplane-mode': 'ambient' }, { 'ambient.istio.io/redirection': 'enabled' }),
    expect: skip('ambient'),
    annotationsOnly: { ...skip('not-injected'), why: 'labels are not visible: the missing status annotation decides' },
  },
  {
    name: 'ambient-namespace-label',
    about: 'ambient: istio.io/dataplane-mode=ambient on the namespace',
    namespace: 'ambient-ns',
    namespaceLabels: { 'istio.io/dataplane-mode': 'ambient' },
    pod: plain('ambient-2'),
    expect: skip('ambient'),
    annotationsOnly: { ...skip('not-injected'), why: 'namespace labels are not visible: the missing status annotation decides' },
  },
  {
    name: 'ambient-namespace-pod-opt-out',
    about: 'ambient namespace, pod opted out with istio.io/dataplane-mode=none',
    namespace: 'ambient-ns',
    namespaceLabels: { 'istio.io/dataplane-mode': 'ambient' },
    pod: plain('ambient-none', { 'istio.io/dataplane-mode': 'none' }),
    expect: skip('no-istio-proxy'),
    annotationsOnly: { ...skip('not-injected'), why: 'no status annotation decides' },
  },
  {
    name: 'own-agent-pod',
    about: "mesh-cni's own agent pod (its namespace and DaemonSet name prefix), even if it looked injected",
    namespace: 'mesh-cni-system',
    pod: injected({ name: 'mesh-cni-k8x2v' }),
    expect: skip('own-agent-pod'),
  },
  {
    name: 'excluded-namespace',
    about: 'an injected pod in an excluded namespace (kube-system)',
    namespace: 'kube-system',
    pod: injected({ name: 'coredns-injected' }),
    expect: skip('namespace-excluded'),
  },
  {
    name: 'job',
    about: 'a pod of a Job template (restartPolicy Never, job labels)',
    namespace: 'batch',
    pod: injected({ name: 'report-28511-x7g2k', labels: { 'job-name': 'report-28511', 'batch.kubernetes.io/job-name': 'report-28511' }, annotations: { 'proxy.istio.io/config': '{ "holdApplicationUntilProxyStarts": true }' }, extraSpec: { restartPolicy: 'Never' } }),
    expect: meshed(),
  },
  {
    name: 'cronjob-native',
    about: 'a pod of a CronJob template, native sidecar (the proxy stops with the job)',
    namespace: 'batch',
    pod: injected({ name: 'nightly-28511040-q9z4m', native: true, labels: { 'job-name': 'nightly-28511040' }, extraSpec: { restartPolicy: 'OnFailure' } }),
    expect: meshed(),
  },
  {
    name: 'statefulset',
    about: 'a pod of a StatefulSet template (stable name, hostname and subdomain)',
    namespace: 'data',
    pod: injected({ name: 'db-0', labels: { 'statefulset.kubernetes.io/pod-name': 'db-0', 'apps.kubernetes.io/pod-index': '0' }, extraSpec: { hostname: 'db-0', subdomain: 'db' } }),
    expect: meshed(),
  },
  {
    name: 'interception-none',
    about: 'interceptionMode NONE: ADD succeeds with no rules (Istio fails the ADD)',
    namespace: 'shop',
    pod: injected({ name: 'no-intercept', native: true, annotations: { 'sidecar.istio.io/interceptionMode': 'NONE' } }),
    expect: skip('interception-mode-none'),
  },
  {
    name: 'invalid-drop',
    about: 'INVALID_DROP=true in the proxy env: conntrack-INVALID packets dropped',
    namespace: 'shop',
    pod: injected({ name: 'invalid-drop', native: true, proxy: { env: { INVALID_DROP: 'true' } } }),
    expect: meshed(1337, 1337, [DROP, /-A ISTIO_DROP -j DROP/]),
    annotationsOnly: { ...meshed(1337), noRules: [DROP], why: 'INVALID_DROP is in the proxy env: assumed unset' },
  },
  {
    name: 'dual-stack',
    about: 'ISTIO_DUAL_STACK=true (this netns has no IPv6 address: IPv4 rules only, either way)',
    namespace: 'shop',
    pod: injected({ name: 'dual-1', native: true, proxy: { env: { ISTIO_DUAL_STACK: 'true' } } }),
    expect: meshed(),
  },
  {
    name: 'reroute-virtual-interfaces',
    about: 'a KubeVirt VM pod: istio.io/reroute-virtual-interfaces preferred over the deprecated kubevirtInterfaces',
    namespace: 'vms',
    pod: injected({ name: 'virt-launcher-vm1-abcde', annotations: { 'istio.io/reroute-virtual-interfaces': 'k6t-eth0', 'traffic.sidecar.istio.io/kubevirtInterfaces': 'tap0' } }),
    expect: { ...meshed(), rules: [/-A PREROUTING -i k6t-eth0 -j ISTIO_REDIRECT/], noRules: [/tap0/] },
  },
  {
    name: 'disable-envoy-valuefrom',
    about: 'DISABLE_ENVOY from a ConfigMap (valueFrom): Istio reads it as "", not proxyless',
    namespace: 'shop',
    pod: (() => {
      const p = injected({ name: 'valuefrom-1' });
      const proxy = p.spec!.containers.find((c) => c.name === 'istio-proxy')!;
      proxy.env!.push({ name: 'DISABLE_ENVOY', valueFrom: { configMapKeyRef: { name: 'flags', key: 'disable-envoy', optional: true } } });
      return p;
    })(),
    expect: meshed(),
  },
  {
    name: 'plain-pod',
    about: 'a pod the injector never touched',
    namespace: 'shop',
    pod: plain('legacy-batch'),
    expect: skip('no-istio-proxy'),
    annotationsOnly: { ...skip('not-injected'), why: 'no status annotation: certainly not meshed, decided without the spec' },
  },
];

/**
 * kube-apiserver 1.20 (the one this machine builds) predates native sidecars: it rejects probes and a
 * lifecycle on init containers, so those are taken out before the pod is created. `restartPolicy` is sent as
 * written; 1.20 does not know the field and drops it on decode (the test checks that it is gone). The decision
 * never reads any of them (neither does Istio's plugin): a native sidecar is known by istio-proxy's place
 * in initContainers, which 1.20 keeps, and by the status annotation's initContainers list.
 */
export const STRIPPED_FOR_APISERVER_1_20 = ['readinessProbe', 'livenessProbe', 'startupProbe', 'lifecycle'] as const;

export function forApiserver120(pod: V1Pod): { pod: V1Pod; stripped: string[] } {
  const copy = JSON.parse(JSON.stringify(pod)) as V1Pod;
  const stripped: string[] = [];
  for (const c of copy.spec?.initContainers ?? []) {
    const fields = c as unknown as Record<string, unknown>;
    for (const field of STRIPPED_FOR_APISERVER_1_20) {
      if (fields[field] !== undefined) {
        delete fields[field];
        stripped.push(`initContainers[${c.name}].${field}`);
      }
    }
  }
  return { pod: copy, stripped };
}
