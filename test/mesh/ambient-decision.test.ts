/**
 * Istio's ambient enablement (cni/pkg/util/enablement_selector.go, cni/pkg/nodeagent/informers.go): which pods
 * the decision sends to ztunnel, with ambient on and off, with Istio's default selectors and custom ones; the
 * netconf's `ambient` field; and the lookup failing closed when a namespace cannot be read.
 */
import test from 'ava';
import { certainSkipFromAnnotations, decideMeshing, needsNamespaceLabels, type AmbientOptions, type DecisionOptions, type DecisionStep, type PodInfo } from '../../src/mesh/decision';
import { DEFAULT_ENABLEMENT_SELECTORS, parseEnablementSelectors, selectorMatches } from '../../src/mesh/enablement';
import { podInfoFromPod } from '../../src/kube/pod-api';
import { decidePod } from '../../src/kube/pod-lookup';
import { ambientConfigFromAnnotations, DEFAULT_AMBIENT_NODE } from '../../src/redirect/ambient/config';
import { parseMeshNetConf } from '../../src/cni/netconf';
import { CniError, InvalidConfigError } from '../../src/errors';
import { INJECTED } from '../cni/helpers';

const AMBIENT: AmbientOptions = { enabled: true, selectors: DEFAULT_ENABLEMENT_SELECTORS, systemNamespace: 'istio-system' };
const on: DecisionOptions = { excludeNamespaces: ['kube-system'], ambient: AMBIENT };
const off: DecisionOptions = { excludeNamespaces: ['kube-system'] };

function pod(o: { labels?: Record<string, string>; ns?: Record<string, string> | null; annotations?: Record<string, string>; namespace?: string; hostNetwork?: boolean; sidecar?: boolean } = {}): PodInfo {
  const info = podInfoFromPod({
    metadata: { name: 'cart', namespace: o.namespace ?? 'shop', labels: o.labels ?? {}, annotations: { ...(o.sidecar ? INJECTED : {}), ...(o.annotations ?? {}) } },
    spec: { hostNetwork: o.hostNetwork, containers: [{ name: 'cart' }, ...(o.sidecar ? [{ name: 'istio-proxy', args: ['proxy', 'sidecar'] }] : [])] },
  });
  if (o.ns !== null) info.namespaceLabels = o.ns ?? {};
  return info;
}

const AMB = { 'istio.io/dataplane-mode': 'ambient' };
const AGENT = { namespace: 'mesh-cni-system', podNamePrefix: 'mesh-cni-' };
const NONE = { 'istio.io/dataplane-mode': 'none' };

function outcome(info: PodInfo, options: DecisionOptions): string {
  const d = decideMeshing(info, options);
  return d.meshed ? (d.dataplane === 'ambient' ? 'ambient' : 'sidecar') : `skip:${d.reason}`;
}

const rows: Array<[string, PodInfo, string, string]> = [
  ['pod labelled ambient', pod({ labels: AMB }), 'ambient', 'skip:ambient'],
  ['namespace labelled ambient', pod({ ns: AMB }), 'ambient', 'skip:ambient'],
  ['namespace ambient, pod says none', pod({ ns: AMB, labels: NONE }), 'skip:no-istio-proxy', 'skip:no-istio-proxy'],
  ['pod ambient in a namespace that says none', pod({ labels: AMB, ns: NONE }), 'ambient', 'skip:ambient'],
  ['a sidecar pod in an ambient namespace stays a sidecar pod', pod({ ns: AMB, sidecar: true }), 'sidecar', 'sidecar'],
  ['a sidecar pod labelled ambient stays a sidecar pod', pod({ labels: AMB, sidecar: true }), 'sidecar', 'sidecar'],
  ['host network pod labelled ambient', pod({ labels: AMB, hostNetwork: true }), 'skip:no-istio-proxy', 'skip:no-istio-proxy'],
  ['ztunnel itself in an ambient istio-system', pod({ namespace: 'istio-system', labels: { app: 'ztunnel' }, ns: AMB }), 'skip:ztunnel', 'skip:ambient'],
  ['another pod of istio-system labelled ambient', pod({ namespace: 'istio-system', labels: { app: 'istiod', ...AMB } }), 'ambient', 'skip:ambient'],
  ['an excluded namespace wins over ambient', pod({ namespace: 'kube-system', labels: AMB }), 'skip:namespace-excluded', 'skip:namespace-excluded'],
  ['no label anywhere', pod(), 'skip:no-istio-proxy', 'skip:no-istio-proxy'],
  ['label with another value', pod({ labels: { 'istio.io/dataplane-mode': 'Ambient' } }), 'skip:no-istio-proxy', 'skip:no-istio-proxy'],
];

for (const [name, info, withAmbient, withoutAmbient] of rows) {
  test(`ambient on: ${name} → ${withAmbient}`, (t) => t.is(outcome(info, on), withAmbient));
  test(`ambient off: ${name} → ${withoutAmbient}`, (t) => t.is(outcome(info, off), withoutAmbient));
}

test('the trail says which selector matched, and the ambient config carries the node settings and the pod annotations', (t) => {
  const trail: DecisionStep[] = [];
  const d = decideMeshing(pod({ ns: AMB, annotations: { 'ambient.istio.io/dns-capture': 'false' } }), on, trail);
  t.true(d.meshed && d.dataplane === 'ambient');
  if (!d.meshed || d.dataplane !== 'ambient') return;
  const config = ambientConfigFromAnnotations(d.annotations, { ...DEFAULT_AMBIENT_NODE, hostProbeSnatIpv4: '169.254.9.9' });
  t.false(config.dnsCapture);
  t.is(config.hostProbeSnat.ipv4, '169.254.9.9');
  const step = trail.find((s) => s.rule === 'ambient')!;
  t.is(step.outcome, 'meshed');
  t.regex(step.detail, /enablement selector 2 matches: pod \[istio\.io\/dataplane-mode NotIn \(none\)\] in namespace \[istio\.io\/dataplane-mode=ambient\]/);
  t.is(trail[trail.length - 1]!.rule, 'meshed');
});

test('a bad ambient annotation is refused when the pod\'s config is made, as a bad sidecar annotation is', (t) => {
  const d = decideMeshing(pod({ labels: AMB, annotations: { 'ambient.istio.io/bypass-inbound-capture': 'yes' } }), on);
  if (!d.meshed || d.dataplane !== 'ambient') return t.fail('expected an ambient pod');
  t.throws(() => ambientConfigFromAnnotations(d.annotations, DEFAULT_AMBIENT_NODE), { instanceOf: InvalidConfigError });
});

test('namespace labels unknown with ambient on: assumed not ambient, and said so', (t) => {
  const trail: DecisionStep[] = [];
  const d = decideMeshing(pod({ ns: null }), on, trail);
  t.false(d.meshed);
  t.true(d.assumed?.some((a) => /namespace labels unknown/.test(a)));
});

test('custom enablement selectors: In, NotIn, Exists, DoesNotExist, and both halves must match', (t) => {
  const selectors = parseEnablementSelectors(`
- podSelector:
    matchExpressions:
      - {key: tier, operator: In, values: [web, api]}
      - {key: legacy, operator: DoesNotExist}
  namespaceSelector:
    matchExpressions:
      - {key: mesh, operator: Exists}
`);
  const custom = { ...on, ambient: { ...AMBIENT, selectors } };
  t.is(outcome(pod({ labels: { tier: 'web' }, ns: { mesh: '' } }), custom), 'ambient');
  t.is(outcome(pod({ labels: { tier: 'db' }, ns: { mesh: '' } }), custom), 'skip:no-istio-proxy');
  t.is(outcome(pod({ labels: { tier: 'api', legacy: 'y' }, ns: { mesh: '' } }), custom), 'skip:no-istio-proxy');
  t.is(outcome(pod({ labels: { tier: 'api' }, ns: {} }), custom), 'skip:no-istio-proxy');
  t.is(outcome(pod({ labels: AMB, ns: {} }), custom), 'skip:no-istio-proxy', "Istio's default selectors are replaced, not added to");
  t.true(selectorMatches({ matchExpressions: [{ key: 'x', operator: 'NotIn', values: ['a'] }] }, {}), 'NotIn matches an absent key, as in Kubernetes');
  t.throws(() => parseEnablementSelectors('- podSelector: {matchExpressions: [{key: a, operator: In}]}'), { message: /In needs values/ });
  t.throws(() => parseEnablementSelectors('- podSelektor: {}'), { message: /unknown field podSelektor/ });
  t.throws(() => parseEnablementSelectors('podSelector: {}'), { message: /must be a list/ });
});

test('with ambient on, the runtime annotations alone no longer make a pod without sidecar status a certain skip', (t) => {
  t.is(certainSkipFromAnnotations({}), 'not-injected');
  t.is(certainSkipFromAnnotations({}, { ambient: AMBIENT }), undefined);
  t.is(certainSkipFromAnnotations({ 'sidecar.istio.io/status': '{"initContainers":["istio-init"]}' }, { ambient: AMBIENT }), 'has-istio-init');
  t.true(needsNamespaceLabels(pod({ labels: AMB, ns: null }), { ambient: AMBIENT }), 'a selector may name the namespace even for a labelled pod');
  t.false(needsNamespaceLabels(pod({ labels: AMB, ns: null })), 'ambient off: a labelled pod is skipped whatever its namespace says');
});

test('netconf: the ambient field (enabled, enablement_selectors, system_namespace), strictly checked', (t) => {
  const conf = (ambient: unknown) => parseMeshNetConf({ name: 'k8s', cniVersion: '1.0.0', type: 'mesh-cni', ambient }, '1.0.0');
  t.deepEqual(conf({ enabled: true }).ambient, { enabled: true, systemNamespace: 'istio-system' });
  t.is(conf({ enabled: true, enablement_selectors: [{ podSelector: { matchLabels: { a: 'b' } } }], system_namespace: 'mesh' }).ambient?.selectors?.length, 1);
  t.is(parseMeshNetConf({ name: 'k8s', cniVersion: '1.0.0' }, '1.0.0').ambient, undefined);
  const code = (f: () => unknown) => (t.throws(f, { instanceOf: CniError }) as CniError).cniCode;
  t.is(code(() => conf({ enabled: true, selectors: [] })), 2);
  t.is(code(() => conf({ enabled: 'yes' })), 7);
  t.is(code(() => conf({ enabled: true, enablement_selectors: { podSelector: {} } })), 7);
});

test('netconf: enablement selectors that are not Kubernetes label selectors fail the ADD with 7 before any lookup', async (t) => {
  const bad = parseMeshNetConf({ name: 'k8s', cniVersion: '1.0.0', type: 'mesh-cni', kubernetes: { kubeconfig: '/k' }, ambient: { enabled: true, enablement_selectors: [{ podSelector: { matchExpressions: [{ key: 'a', operator: 'Maybe' }] } }] } }, '1.0.0');
  let fetched = 0;
  const deps = { fetchPod: async () => void fetched++ };
  const err = await t.throwsAsync(Promise.resolve().then(() => decidePod({ kubernetes: { podNamespace: 'shop', podName: 'cart', podUid: 'u1' }, netconf: bad }, deps)));
  t.true(err instanceof CniError && err.cniCode === 7, String(err));
  t.regex(String(err?.message), /ambient\.enablement_selectors/);
  t.is(fetched, 0);
});

test('lookup with ambient on: a namespace that cannot be read fails the ADD with 11 (fail closed), with ambient off it is a note', async (t) => {
  const k8s = { podNamespace: 'shop', podName: 'cart', podUid: 'u1' };
  const deps = {
    fetchPod: async () => ({ metadata: { name: 'cart', namespace: 'shop', uid: 'u1', labels: {}, annotations: {} }, spec: { containers: [{ name: 'cart' }] } }),
    fetchNamespace: async () => {
      throw new Error('namespaces "shop" is forbidden');
    },
  };
  const err = await t.throwsAsync(Promise.resolve(decidePod({ kubernetes: k8s, netconf: { kubeconfig: '/k', excludeNamespaces: ['kube-system'], agentPod: AGENT, ambient: { enabled: true, systemNamespace: 'istio-system' } } }, deps)));
  t.true(err instanceof CniError && err.cniCode === 11, String(err));
  t.regex(String(err?.message), /namespace shop .* could not be read/);
  const { decision, notes } = await decidePod({ kubernetes: k8s, netconf: { kubeconfig: '/k', excludeNamespaces: ['kube-system'], agentPod: AGENT } }, deps);
  t.false(decision.meshed);
  t.true(notes.some((n) => /not readable/.test(n)));
});
