/**
 * The reconciler's decisions with recording stand-ins for the kernel and the API (unit tests; the real
 * node tests drive it against etcd + kube-apiserver and containerd).
 */
import test from 'ava';
import type { V1Pod } from '@kubernetes/client-node';
import { Reconciler, type RepairDeps, type RepairMode } from '../../src/repair/reconciler';
import { TokenBucket } from '../../src/repair/token-bucket';
import { STATUS_ANNOTATION } from '../cni/helpers';

let uid = 0;
function pod(name: string, opts: { meshed?: boolean; ip?: boolean; terminating?: boolean; validation126?: boolean; namespace?: string } = {}): V1Pod {
  return {
    metadata: {
      name,
      namespace: opts.namespace ?? 'shop',
      uid: `uid-${++uid}`,
      resourceVersion: '7',
      annotations: opts.meshed === false ? {} : { 'sidecar.istio.io/status': STATUS_ANNOTATION },
      ...(opts.terminating ? { deletionTimestamp: new Date() } : {}),
    },
    spec: { containers: [{ name: 'app' }, ...(opts.meshed === false ? [] : [{ name: 'istio-proxy' }])], initContainers: opts.meshed === false ? [] : [{ name: 'istio-validation' }] },
    status: {
      ...(opts.ip === false ? {} : { podIP: '10.0.0.9' }),
      initContainerStatuses: opts.validation126 ? [{ name: 'istio-validation', image: 'x', imageID: 'x', ready: false, restartCount: 1, lastState: { terminated: { exitCode: 126 } } }] : [],
    },
  } as V1Pod;
}

interface Recorded {
  applied: string[];
  labeled: string[];
  deleted: string[];
  events: Array<{ pod: string; reason: string }>;
}

function deps(pods: V1Pod[], healthy: (p: V1Pod) => boolean): RepairDeps & { rec: Recorded } {
  const rec: Recorded = { applied: [], labeled: [], deleted: [], events: [] };
  const byNetns = new Map(pods.map((p) => [`/var/run/netns/${p.metadata!.name}`, p]));
  return {
    rec,
    pods: () => pods,
    locateNetns: async (p) => `/var/run/netns/${p.metadata!.name}`,
    check: async (netns) => (healthy(byNetns.get(netns)!) ? { ok: true, problems: [] } : { ok: false, problems: ['missing in ipv4 nat/OUTPUT: -p tcp -j ISTIO_OUTPUT'] }),
    apply: async (netns) => void rec.applied.push(netns),
    label: async (p) => void rec.labeled.push(p.metadata!.name!),
    delete: async (p) => void rec.deleted.push(p.metadata!.name!),
    event: async (p, reason) => void rec.events.push({ pod: p.metadata!.name!, reason }),
  };
}

const reconciler = (mode: RepairMode, d: RepairDeps, extra = {}) => new Reconciler({ mode, excludeNamespaces: ['kube-system'], ...extra }, d);

test('healthy, unmeshed, excluded, terminating and not-yet-networked pods see no action and no event', async (t) => {
  const pods = [pod('healthy'), pod('plain', { meshed: false }), pod('system', { namespace: 'kube-system' }), pod('leaving', { terminating: true }), pod('starting', { ip: false })];
  const d = deps(pods, (p) => p.metadata!.name === 'healthy');
  const findings = await reconciler('repair', d).pass();
  t.deepEqual(
    findings.map((f) => [f.name, f.verdict]),
    [
      ['healthy', 'healthy'],
      ['plain', 'not-meshed'],
      ['system', 'not-meshed'],
      ['leaving', 'skipped'],
      ['starting', 'unknown'],
    ],
  );
  t.deepEqual(d.rec, { applied: [], labeled: [], deleted: [], events: [] });
});

test('the reason of a skipped pod is the decision\'s: ambient through its namespace, a gateway, a proxyless pod', async (t) => {
  const ambient = pod('ambient', { meshed: false, namespace: 'mesh-ambient' });
  const gateway = pod('gateway');
  gateway.spec!.containers = [{ name: 'istio-proxy', args: ['proxy', 'router'] }];
  const proxyless = pod('proxyless');
  proxyless.spec!.containers[1]!.env = [{ name: 'DISABLE_ENVOY', value: 'true' }];
  const native = pod('native');
  native.spec = { initContainers: [{ name: 'istio-validation' }, { name: 'istio-proxy' }], containers: [{ name: 'app' }] };
  const d = deps([ambient, gateway, proxyless, native], () => true);
  const asked: string[] = [];
  d.namespaceLabels = async (ns): Promise<Record<string, string>> => {
    asked.push(ns);
    return ns === 'mesh-ambient' ? { 'istio.io/dataplane-mode': 'ambient' } : {};
  };
  const findings = await reconciler('repair', d).pass();
  t.deepEqual(findings.map((f) => [f.name, f.verdict, f.reason]), [
    ['ambient', 'not-meshed', 'ambient'],
    ['gateway', 'not-meshed', 'not-a-sidecar'],
    ['proxyless', 'not-meshed', 'proxyless'],
    ['native', 'healthy', 'rules match the plan'],
  ]);
  t.deepEqual(asked, ['mesh-ambient'], 'only the pod without sidecar status needed its namespace');
});

for (const mode of ['repair', 'label', 'delete'] as const) {
  test(`a broken pod in ${mode} mode gets the action and one Event`, async (t) => {
    const broken = pod('broken');
    const d = deps([broken, pod('fine')], (p) => p !== broken);
    const findings = await reconciler(mode, d).pass();
    t.is(findings[0].verdict, 'broken');
    t.is(findings[0].action, { repair: 'repaired', label: 'labeled', delete: 'deleted' }[mode]);
    t.deepEqual(d.rec.applied, mode === 'repair' ? ['/var/run/netns/broken'] : []);
    t.deepEqual(d.rec.labeled, mode === 'label' ? ['broken'] : []);
    t.deepEqual(d.rec.deleted, mode === 'delete' ? ['broken'] : []);
    t.deepEqual(d.rec.events.map((e) => e.pod), ['broken']);
  });
}

test("Istio's detector: an istio-validation init container that exited 126 marks the pod broken", async (t) => {
  const d = deps([pod('validated', { validation126: true })], () => true);
  const [f] = await reconciler('label', d).pass();
  t.is(f.verdict, 'broken');
  t.regex(f.reason, /istio-validation exited 126/);
  t.deepEqual(d.rec.labeled, ['validated']);
});

test('label mode labels a pod once: a pod that already has the label is left alone on later passes', async (t) => {
  const labeled = pod('labeled');
  labeled.metadata!.labels = { 'cni.istio.io/uninitialized': 'true' };
  const d = deps([labeled], () => false);
  const [f] = await reconciler('label', d).pass();
  t.is(f.verdict, 'broken', 'still reported as broken');
  t.is(f.action, undefined);
  t.regex(f.reason, /already labeled/);
  t.deepEqual(d.rec, { applied: [], labeled: [], deleted: [], events: [] });
});

test('off and dry-run modes act on nothing', async (t) => {
  const d = deps([pod('broken')], () => false);
  t.is((await reconciler('off', d).pass())[0].action, undefined);
  t.is((await reconciler('delete', d, { dryRun: true }).pass())[0].action, 'would delete');
  t.deepEqual(d.rec, { applied: [], labeled: [], deleted: [], events: [] });
});

test('the rate limit holds under 50 broken pods: burst first, the rest rate-limited until tokens refill', async (t) => {
  const pods = Array.from({ length: 50 }, (_, i) => pod(`b${i}`));
  const d = deps(pods, () => false);
  const findings = await reconciler('repair', d, { ratePerSecond: 0.001, burst: 10 }).pass();
  t.is(d.rec.applied.length, 10);
  t.is(findings.filter((f) => f.action === 'rate-limited').length, 40);
  t.is(d.rec.events.length, 10);
});

test('a failing action is reported, not thrown, and counted as failed', async (t) => {
  const d = deps([pod('broken')], () => false);
  const outcomes: string[] = [];
  d.apply = async () => {
    throw new Error('iptables-restore exited with code 4');
  };
  d.onAction = (action, result) => void outcomes.push(`${action}:${result}`);
  const [f] = await reconciler('repair', d).pass();
  t.regex(f.action!, /^failed: iptables-restore/);
  t.deepEqual(outcomes, ['repair:failed']);
  t.deepEqual(d.rec.events, []);
});

test('token bucket: refills at the rate, never above the burst', (t) => {
  let now = 0;
  const bucket = new TokenBucket(2, 3, () => now);
  t.deepEqual([bucket.take(), bucket.take(), bucket.take(), bucket.take()], [true, true, true, false]);
  now = 500;
  t.deepEqual([bucket.take(), bucket.take()], [true, false]);
  now = 60_000;
  t.deepEqual([bucket.take(), bucket.take(), bucket.take(), bucket.take()], [true, true, true, false]);
});

test('one pod with invalid annotations is that pod\'s finding (invalid, naming the annotation): the pass judges and repairs every other pod', async (t) => {
  const bad = pod('bad-ranges');
  bad.metadata!.annotations!['traffic.sidecar.istio.io/includeOutboundIPRanges'] = '10.0.0.0/33';
  const mode = pod('bad-mode');
  mode.metadata!.annotations!['sidecar.istio.io/interceptionMode'] = 'BOGUS';
  const pods = [pod('before'), bad, mode, pod('after')];
  const d = deps(pods, (p) => p.metadata!.name !== 'after');
  const findings = await reconciler('repair', d).pass();
  t.deepEqual(
    findings.map((f) => [f.name, f.verdict]),
    [
      ['before', 'healthy'],
      ['bad-ranges', 'invalid'],
      ['bad-mode', 'invalid'],
      ['after', 'broken'],
    ],
  );
  t.regex(findings[1]!.reason, /^invalid traffic\.sidecar\.istio\.io\/includeOutboundIPRanges="10\.0\.0\.0\/33": /);
  t.regex(findings[2]!.reason, /^invalid sidecar\.istio\.io\/interceptionMode="BOGUS": /);
  t.deepEqual(d.rec.applied, ['/var/run/netns/after'], 'the broken pod after the invalid ones is repaired; the invalid ones are not touched');
});
