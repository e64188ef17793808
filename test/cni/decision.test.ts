/** Istio's rules for which pods are meshed, one row per rule; the reason strings are part of the contract. */
import test, { type ExecutionContext } from 'ava';
import { decideMeshing, SKIP_REASONS, type PodInfo } from '../../src/cni/decision';
import { fakeBuildConfig, INJECTED } from './helpers';

const base: PodInfo = {
  name: 'cart-7d9',
  namespace: 'shop',
  labels: {},
  annotations: { ...INJECTED },
  containers: ['cart', 'istio-proxy'],
  initContainers: ['istio-validation'],
};

const decide = test.macro({
  exec(t: ExecutionContext, change: Partial<PodInfo>, expected: string) {
    const pod = { ...base, ...change };
    const d = decideMeshing(pod, { excludeNamespaces: ['kube-system', 'istio-system'], buildConfig: fakeBuildConfig });
    t.is(d.meshed ? 'meshed' : d.reason, expected);
    if (!d.meshed) t.true((SKIP_REASONS as readonly string[]).includes(d.reason));
  },
  title: (title = '', _c, expected: string) => `decision: ${title} → ${expected}`,
});

test('injected pod with istio-proxy', decide, {}, 'meshed');
test('excluded namespace', decide, { namespace: 'kube-system' }, 'namespace-excluded');
test('other excluded namespace from the netconf', decide, { namespace: 'istio-system' }, 'namespace-excluded');
test('no sidecar.istio.io/status annotation', decide, { annotations: {} }, 'not-injected');
test('inject annotation false', decide, { annotations: { ...INJECTED, 'sidecar.istio.io/inject': 'false' } }, 'injection-disabled');
test('inject annotation "0" (Go ParseBool)', decide, { annotations: { ...INJECTED, 'sidecar.istio.io/inject': '0' } }, 'injection-disabled');
test('inject label false', decide, { labels: { 'sidecar.istio.io/inject': 'false' } }, 'injection-disabled');
test('inject label true wins over annotation false', decide, { labels: { 'sidecar.istio.io/inject': 'true' }, annotations: { ...INJECTED, 'sidecar.istio.io/inject': 'false' } }, 'meshed');
test('inject label false wins over annotation true', decide, { labels: { 'sidecar.istio.io/inject': 'false' }, annotations: { ...INJECTED, 'sidecar.istio.io/inject': 'true' } }, 'injection-disabled');
test('unparseable inject value does not disable', decide, { annotations: { ...INJECTED, 'sidecar.istio.io/inject': 'maybe' } }, 'meshed');
test('istio-init init container present', decide, { initContainers: ['istio-init'] }, 'has-istio-init');
test('no istio-proxy container', decide, { containers: ['cart'] }, 'no-istio-proxy');
test('interception mode NONE', decide, { annotations: { ...INJECTED, 'sidecar.istio.io/interceptionMode': 'NONE' } }, 'interception-mode-none');
test('interception mode TPROXY', decide, { annotations: { ...INJECTED, 'sidecar.istio.io/interceptionMode': 'TPROXY' } }, 'meshed');
test(
  'containers unknown: istio-init from the status annotation',
  decide,
  { containers: undefined, initContainers: undefined, annotations: { 'sidecar.istio.io/status': JSON.stringify({ initContainers: ['istio-init'], containers: ['istio-proxy'] }) } },
  'has-istio-init',
);
test(
  'containers unknown: no proxy in the status annotation',
  decide,
  { containers: undefined, initContainers: undefined, annotations: { 'sidecar.istio.io/status': JSON.stringify({ containers: ['other'] }) } },
  'no-istio-proxy',
);
test('containers unknown and status unreadable: Istio default proxy assumed', decide, { containers: undefined, annotations: { 'sidecar.istio.io/status': '{' } }, 'meshed');

test('proxy identity and DNS capture reach the config builder', (t) => {
  let seen: unknown;
  decideMeshing(
    { ...base, proxyUid: 1500, proxyGid: 1501, dnsCapture: true },
    {
      excludeNamespaces: [],
      buildConfig: (a, proxy) => {
        seen = proxy;
        return fakeBuildConfig(a);
      },
    },
  );
  t.deepEqual(seen, { proxyUid: 1500, proxyGid: 1501, dnsCapture: true });
});

test('skip reasons are stable strings', (t) => {
  t.deepEqual([...SKIP_REASONS], [
    'not-a-kubernetes-pod',
    'namespace-excluded',
    'not-injected',
    'injection-disabled',
    'has-istio-init',
    'no-istio-proxy',
    'interception-mode-none',
  ]);
});
