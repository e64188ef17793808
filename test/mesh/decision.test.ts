/**
 * Istio's rules for which pods are meshed (cni/pkg/plugin CmdAdd at HEAD), one row per rule, in its order;
 * the reason strings are part of the contract. Pods come through podInfoFromPod, as every caller feeds them.
 */
import test, { type ExecutionContext } from 'ava';
import { cachedStatusCount, certainSkipFromAnnotations, decideMeshing, injectedContainersFromStatus, MAX_CACHED_STATUSES, parseGoBool, SKIP_REASONS, type DecisionStep, type MeshDecision, type PodInfo } from '../../src/mesh/decision';
import { podInfoFromPod } from '../../src/kube/pod-api';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { INJECTED } from '../cni/helpers';

interface Container {
  name: string;
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: unknown }>;
  securityContext?: { runAsUser?: number; runAsGroup?: number };
  restartPolicy?: string;
}
interface Spec {
  namespace?: string;
  name?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  initContainers?: Container[];
  containers?: Container[];
}

const sidecarProxy: Container = { name: 'istio-proxy', args: ['proxy', 'sidecar', '--domain', '$(POD_NAMESPACE).svc.cluster.local'], securityContext: { runAsUser: 1337, runAsGroup: 1337 } };

function pod(spec: Spec = {}): PodInfo {
  return podInfoFromPod({
    metadata: { name: spec.name ?? 'cart-7d9', namespace: spec.namespace ?? 'shop', labels: spec.labels ?? {}, annotations: spec.annotations ?? { ...INJECTED } },
    spec: { initContainers: spec.initContainers ?? [{ name: 'istio-validation' }], containers: spec.containers ?? [{ name: 'cart' }, sidecarProxy] },
  });
}

const options = { excludeNamespaces: ['kube-system', 'istio-system'] };
/** The config the redirect makes of a meshed pod's facts. */
function configOf(d: MeshDecision) {
  if (!d.meshed || d.dataplane === 'ambient') throw new Error('expected a meshed sidecar pod');
  return redirectConfigFromAnnotations(d.annotations, d.proxy);
}

const decide = test.macro({
  exec(t: ExecutionContext, info: PodInfo, expected: string) {
    const d = decideMeshing(info, options);
    t.is(d.meshed ? 'meshed' : d.reason, expected);
    if (!d.meshed) t.true((SKIP_REASONS as readonly string[]).includes(d.reason));
  },
  title: (title = '', _p, expected: string) => `decision: ${title} → ${expected}`,
});

const proxyWith = (extra: Partial<Container>): Container => ({ ...sidecarProxy, ...extra });
const nativeProxy = proxyWith({ restartPolicy: 'Always' });
const env = (pairs: Record<string, string>) => Object.entries(pairs).map(([name, value]) => ({ name, value }));

test('classic sidecar in containers', decide, pod(), 'meshed');
test('native sidecar: istio-proxy an init container', decide, pod({ initContainers: [{ name: 'istio-validation' }, nativeProxy], containers: [{ name: 'cart' }] }), 'meshed');
test('our own agent pod', decide, pod({ namespace: 'mesh-cni-system', name: 'mesh-cni-x7k2p' }), 'own-agent-pod');
test('another pod in the agent namespace is not ours', decide, pod({ namespace: 'mesh-cni-system', name: 'debug' }), 'meshed');
test('excluded namespace', decide, pod({ namespace: 'kube-system' }), 'namespace-excluded');
test('other excluded namespace from the netconf', decide, pod({ namespace: 'istio-system' }), 'namespace-excluded');
test('ambient label on the pod', decide, pod({ labels: { 'istio.io/dataplane-mode': 'ambient' }, annotations: {}, initContainers: [], containers: [{ name: 'cart' }] }), 'ambient');
test('ambient label on the namespace', decide, { ...pod({ annotations: {}, initContainers: [], containers: [{ name: 'cart' }] }), namespaceLabels: { 'istio.io/dataplane-mode': 'ambient' } }, 'ambient');
test(
  'ambient namespace, pod opted out with none',
  decide,
  { ...pod({ labels: { 'istio.io/dataplane-mode': 'none' }, annotations: {}, initContainers: [], containers: [{ name: 'cart' }] }), namespaceLabels: { 'istio.io/dataplane-mode': 'ambient' } },
  'no-istio-proxy',
);
test('ambient label but injected: a sidecar pod', decide, pod({ labels: { 'istio.io/dataplane-mode': 'ambient' } }), 'meshed');
test('istio-init init container present', decide, pod({ initContainers: [{ name: 'istio-init' }] }), 'has-istio-init');
test('istio-init in containers counts too (Istio looks at both lists)', decide, pod({ initContainers: [], containers: [{ name: 'istio-init' }, sidecarProxy] }), 'has-istio-init');
test('DISABLE_ENVOY=true: proxyless gRPC', decide, pod({ containers: [{ name: 'cart' }, proxyWith({ env: env({ DISABLE_ENVOY: 'true' }) })] }), 'proxyless');
test('DISABLE_ENVOY=1 (Go ParseBool)', decide, pod({ containers: [{ name: 'cart' }, proxyWith({ env: env({ DISABLE_ENVOY: '1' }) })] }), 'proxyless');
test('DISABLE_ENVOY=yes is not a Go bool: not proxyless', decide, pod({ containers: [{ name: 'cart' }, proxyWith({ env: env({ DISABLE_ENVOY: 'yes' }) })] }), 'meshed');
test('DISABLE_ENVOY=false', decide, pod({ containers: [{ name: 'cart' }, proxyWith({ env: env({ DISABLE_ENVOY: 'false' }) })] }), 'meshed');
test(
  'DISABLE_ENVOY from valueFrom reads as "" (not true)',
  decide,
  pod({ containers: [{ name: 'cart' }, proxyWith({ env: [{ name: 'DISABLE_ENVOY', valueFrom: { configMapKeyRef: { name: 'x', key: 'y' } } }] })] }),
  'meshed',
);
test('no istio-proxy container', decide, pod({ containers: [{ name: 'cart' }] }), 'no-istio-proxy');
test('gateway: proxy router', decide, pod({ initContainers: [], containers: [proxyWith({ args: ['proxy', 'router', '--domain', 'x'] })] }), 'not-a-sidecar');
test('istio-proxy args not starting with proxy: no type, a sidecar', decide, pod({ containers: [{ name: 'cart' }, proxyWith({ args: ['--log', 'debug'] })] }), 'meshed');
test('inject annotation false', decide, pod({ annotations: { ...INJECTED, 'sidecar.istio.io/inject': 'false' } }), 'injection-disabled');
test('inject annotation "0" (Go ParseBool)', decide, pod({ annotations: { ...INJECTED, 'sidecar.istio.io/inject': '0' } }), 'injection-disabled');
test('inject label false', decide, pod({ labels: { 'sidecar.istio.io/inject': 'false' } }), 'injection-disabled');
test('inject label true wins over annotation false', decide, pod({ labels: { 'sidecar.istio.io/inject': 'true' }, annotations: { ...INJECTED, 'sidecar.istio.io/inject': 'false' } }), 'meshed');
test('inject label false wins over annotation true', decide, pod({ labels: { 'sidecar.istio.io/inject': 'false' }, annotations: { ...INJECTED, 'sidecar.istio.io/inject': 'true' } }), 'injection-disabled');
test('unparsable inject label wins and does not disable', decide, pod({ labels: { 'sidecar.istio.io/inject': 'maybe' }, annotations: { ...INJECTED, 'sidecar.istio.io/inject': 'false' } }), 'meshed');
test('no sidecar.istio.io/status annotation', decide, pod({ annotations: {} }), 'not-injected');
test('interception mode NONE', decide, pod({ annotations: { ...INJECTED, 'sidecar.istio.io/interceptionMode': 'NONE' } }), 'interception-mode-none');
test('interception mode TPROXY', decide, pod({ annotations: { ...INJECTED, 'sidecar.istio.io/interceptionMode': 'TPROXY' } }), 'meshed');

test('Istio\'s order: istio-init before DISABLE_ENVOY before no-istio-proxy before the gateway check before inject before status', (t) => {
  const reason = (p: PodInfo) => {
    const d = decideMeshing(p, options);
    return d.meshed ? 'meshed' : d.reason;
  };
  const everything = pod({
    labels: { 'sidecar.istio.io/inject': 'false' },
    annotations: {},
    initContainers: [{ name: 'istio-init' }],
    containers: [proxyWith({ args: ['proxy', 'router'], env: env({ DISABLE_ENVOY: 'true' }) })],
  });
  t.is(reason(everything), 'has-istio-init');
  t.is(reason(pod({ labels: { 'sidecar.istio.io/inject': 'false' }, annotations: {}, containers: [proxyWith({ args: ['proxy', 'router'], env: env({ DISABLE_ENVOY: 'true' }) })] })), 'proxyless');
  t.is(reason(pod({ labels: { 'sidecar.istio.io/inject': 'false' }, annotations: {}, containers: [proxyWith({ args: ['proxy', 'router'] })] })), 'not-a-sidecar');
  t.is(reason(pod({ labels: { 'sidecar.istio.io/inject': 'false' }, annotations: {} })), 'injection-disabled');
  t.is(reason(pod({ labels: { 'sidecar.istio.io/inject': 'false' }, annotations: {}, containers: [{ name: 'cart' }] })), 'no-istio-proxy');
});

test('uid/gid from the proxy container: absent or 0 means 1337; the pod-level securityContext is not read', (t) => {
  const cfg = (c: Container) => {
    const d = decideMeshing(pod({ containers: [{ name: 'cart' }, c] }), options);
    if (!d.meshed) throw new Error('expected meshed');
    return [configOf(d).proxyUid, configOf(d).proxyGid];
  };
  t.deepEqual(cfg(proxyWith({ securityContext: { runAsUser: 1000620000, runAsGroup: 1000620001 } })), [1000620000, 1000620001]);
  t.deepEqual(cfg(proxyWith({ securityContext: { runAsUser: 0, runAsGroup: 0 } })), [1337, 1337]);
  t.deepEqual(cfg(proxyWith({ securityContext: {} })), [1337, 1337]);
  t.deepEqual(cfg({ name: 'istio-proxy', args: ['proxy', 'sidecar'] }), [1337, 1337]);
  const podLevel = podInfoFromPod({
    metadata: { name: 'p', namespace: 'shop', annotations: INJECTED },
    spec: { securityContext: { runAsUser: 2000 }, containers: [{ name: 'istio-proxy' }] },
  });
  const d = decideMeshing(podLevel, options);
  t.true(d.meshed && configOf(d).proxyUid === 1337);
});

test('native sidecar with custom uid/gid: the init container\'s securityContext is the one read', (t) => {
  const d = decideMeshing(pod({ initContainers: [proxyWith({ restartPolicy: 'Always', securityContext: { runAsUser: 1000650000, runAsGroup: 1000650000 } })], containers: [{ name: 'cart' }] }), options);
  t.true(d.meshed);
  if (d.meshed) t.deepEqual([configOf(d).proxyUid, configOf(d).proxyGid], [1000650000, 1000650000]);
});

test('proxy env shapes the config: DNS capture, INVALID_DROP, ISTIO_DUAL_STACK (Go ParseBool; unparsable is false)', (t) => {
  const cfg = (pairs: Record<string, string>) => {
    const d = decideMeshing(pod({ containers: [{ name: 'cart' }, proxyWith({ env: env(pairs) })] }), options);
    if (!d.meshed) throw new Error('expected meshed');
    return { dns: configOf(d).dnsCapture, drop: configOf(d).invalidDrop, dual: configOf(d).dualStack };
  };
  t.deepEqual(cfg({}), { dns: false, drop: false, dual: false });
  t.deepEqual(cfg({ ISTIO_META_DNS_CAPTURE: 'true', INVALID_DROP: 'T', ISTIO_DUAL_STACK: '1' }), { dns: true, drop: true, dual: true });
  t.deepEqual(cfg({ ISTIO_META_DNS_CAPTURE: 'on', INVALID_DROP: 'false' }), { dns: false, drop: false, dual: false });
});

test('an istio-proxy in both lists: the regular container is read last, as Istio\'s loop does', (t) => {
  const info = pod({
    initContainers: [proxyWith({ env: env({ DISABLE_ENVOY: 'true', ISTIO_META_DNS_CAPTURE: 'true' }), securityContext: { runAsUser: 1500 } })],
    containers: [proxyWith({ env: env({ DISABLE_ENVOY: 'false' }), securityContext: { runAsUser: 1600, runAsGroup: 1601 } })],
  });
  t.deepEqual(info.proxy?.lists, ['initContainers', 'containers']);
  t.deepEqual(info.proxy?.env, { DISABLE_ENVOY: 'false', ISTIO_META_DNS_CAPTURE: 'true' });
  const d = decideMeshing(info, options);
  t.true(d.meshed && configOf(d).proxyUid === 1600 && configOf(d).proxyGid === 1601 && configOf(d).dnsCapture);
});

test('the trail names the container list each fact came from', (t) => {
  const trail: DecisionStep[] = [];
  decideMeshing(pod({ initContainers: [{ name: 'istio-validation' }, nativeProxy], containers: [{ name: 'cart' }] }), options, trail);
  const by = Object.fromEntries(trail.map((s) => [s.rule, s]));
  t.regex(by['no-istio-proxy']!.detail, /istio-proxy in initContainers \(from the pod spec\)/);
  t.regex(by['proxyless']!.detail, /env of istio-proxy in initContainers/);
  t.regex(by['not-a-sidecar']!.detail, /proxy type sidecar \(args of istio-proxy in initContainers\)/);
  t.regex(by['proxy-settings']!.detail, /securityContext of istio-proxy in initContainers: runAsUser 1337, runAsGroup 1337/);
  t.is(trail.at(-1)!.outcome, 'meshed');
});

// The annotations-only path (--no-kubernetes): containers from the status JSON, everything else assumed.
const annotationsOnly = (annotations: Record<string, string>): PodInfo => ({ name: 'cart-7d9', namespace: 'shop', annotations });
const nativeStatus = JSON.stringify({ initContainers: ['istio-validation', 'istio-proxy'], containers: null, volumes: ['istio-envoy'], imagePullSecrets: null, revision: 'default' });

test('status JSON: containers from both lists, null lists are fine', (t) => {
  t.deepEqual(injectedContainersFromStatus(nativeStatus), [
    { name: 'istio-validation', list: 'initContainers' },
    { name: 'istio-proxy', list: 'initContainers' },
  ]);
  t.deepEqual(injectedContainersFromStatus('{"initContainers":null,"containers":null}'), []);
  t.is(injectedContainersFromStatus('{'), undefined);
  t.is(injectedContainersFromStatus('[]'), undefined);
});

test('status JSON is remembered per text: bounded, a text that does not parse is not kept, another text gives its own lists', (t) => {
  const status = (n: number) => JSON.stringify({ initContainers: null, containers: [`c${n}`, 'istio-proxy'] });
  const first = injectedContainersFromStatus(status(0));
  t.is(injectedContainersFromStatus(status(0)), first, 'the same text: the same (shared) answer');
  t.true(Object.isFrozen(first) && Object.isFrozen(first![0]), 'shared, so frozen');
  t.deepEqual(injectedContainersFromStatus(status(1))?.map((c) => c.name), ['c1', 'istio-proxy'], 'another text: its own containers');
  const before = cachedStatusCount();
  t.is(injectedContainersFromStatus('{"containers":'), undefined);
  t.is(injectedContainersFromStatus('"a string"'), undefined);
  t.is(cachedStatusCount(), before, 'texts that do not parse are not remembered');
  for (let n = 0; n < MAX_CACHED_STATUSES * 2; n++) injectedContainersFromStatus(status(n));
  t.is(cachedStatusCount(), MAX_CACHED_STATUSES);
  t.deepEqual(injectedContainersFromStatus(status(0))?.map((c) => c.name), ['c0', 'istio-proxy'], 'a forgotten text is parsed again');
});

test('annotations only: a native sidecar is meshed, and every assumed fact is named', (t) => {
  const trail: DecisionStep[] = [];
  const d = decideMeshing(annotationsOnly({ 'sidecar.istio.io/status': nativeStatus }), options, trail);
  t.true(d.meshed);
  t.regex(trail.find((s) => s.rule === 'no-istio-proxy')!.detail, /istio-proxy in initContainers \(from the sidecar.istio.io\/status annotation\)/);
  const assumed = d.assumed!.join('\n');
  for (const fact of [/DISABLE_ENVOY/, /proxy type sidecar/, /uid\/gid 1337/, /ISTIO_META_DNS_CAPTURE/, /INVALID_DROP/, /labels unknown/]) t.regex(assumed, fact);
  t.deepEqual(trail.filter((s) => s.outcome === 'assumed').map((s) => s.rule), ['proxyless', 'not-a-sidecar', 'injection-disabled', 'proxy-settings']);
});

test('annotations only: istio-init and a missing proxy come from the status JSON', (t) => {
  const reason = (status: unknown) => {
    const d = decideMeshing(annotationsOnly({ 'sidecar.istio.io/status': JSON.stringify(status) }), options);
    return d.meshed ? 'meshed' : d.reason;
  };
  t.is(reason({ initContainers: ['istio-init'], containers: ['istio-proxy'] }), 'has-istio-init');
  t.is(reason({ initContainers: null, containers: ['other'] }), 'no-istio-proxy');
  t.is(reason({ initContainers: null, containers: ['istio-proxy'] }), 'meshed');
});

test('annotations only: an unreadable status assumes the default proxy', decide, annotationsOnly({ 'sidecar.istio.io/status': '{' }), 'meshed');
test('annotations only: inject=false annotation skips, assuming no label overrides it', (t) => {
  const d = decideMeshing(annotationsOnly({ ...INJECTED, 'sidecar.istio.io/inject': 'false' }), options);
  t.false(d.meshed);
  t.true(d.assumed!.some((a) => /no sidecar.istio.io\/inject label/.test(a)));
});

test('a skip certain from the annotations alone, so it needs no API call', (t) => {
  t.is(certainSkipFromAnnotations({}), 'not-injected');
  t.is(certainSkipFromAnnotations({ 'sidecar.istio.io/status': JSON.stringify({ initContainers: ['istio-init'], containers: ['istio-proxy'] }) }), 'has-istio-init');
  t.is(certainSkipFromAnnotations({ 'sidecar.istio.io/status': nativeStatus }), undefined);
  t.is(certainSkipFromAnnotations({ ...INJECTED, 'sidecar.istio.io/inject': 'false' }), undefined, 'a label may override the annotation');
});

test('Go ParseBool', (t) => {
  for (const v of ['1', 't', 'T', 'TRUE', 'true', 'True']) t.true(parseGoBool(v));
  for (const v of ['0', 'f', 'F', 'FALSE', 'false', 'False']) t.false(parseGoBool(v));
  for (const v of ['', 'yes', 'tRUE', ' true']) t.is(parseGoBool(v), undefined);
});

test('skip reasons are stable strings, in Istio\'s order', (t) => {
  t.deepEqual([...SKIP_REASONS], [
    'own-agent-pod',
    'not-a-kubernetes-pod',
    'namespace-excluded',
    'ztunnel',
    'ambient',
    'has-istio-init',
    'proxyless',
    'no-istio-proxy',
    'not-a-sidecar',
    'injection-disabled',
    'not-injected',
    'interception-mode-none',
  ]);
});
