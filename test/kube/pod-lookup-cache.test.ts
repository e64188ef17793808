/**
 * The ADD path's pod lookup against the agent's watch cache (src/kube/pod-lookup.ts): while the watch is
 * healthy, a pod missing from the cache (the ADD raced the watch event) is waited for, never fetched, so a
 * node's pod creations cost the API server no per-pod GET; a watch that is down falls back to the GET at
 * once. Pure logic with a stand-in cache and a recording fetch (the real watch is in test/conformance and
 * bench/api-load.ts).
 */
import test from 'ava';
import { podInfoFromPod } from '../../src/kube/pod-api';
import { CACHE_WAIT_MS, decidePod, type PodCache } from '../../src/kube/pod-lookup';
import { INJECTED } from '../cni/helpers';

const pod = {
  metadata: { name: 'orders', namespace: 'shop', uid: 'uid-1', annotations: INJECTED },
  spec: { containers: [{ name: 'app' }, { name: 'istio-proxy', securityContext: { runAsUser: 1337, runAsGroup: 1337 } }] },
};
const k8s = { podName: 'orders', podNamespace: 'shop', podUid: 'uid-1' };

function setup(watching: boolean, arrivesAfterMs: number) {
  let clock = 0;
  const fetched: string[] = [];
  const cache: PodCache = {
    lookup: async () => (clock >= arrivesAfterMs ? podInfoFromPod(pod) : undefined),
    watching: () => watching,
  };
  const deps = {
    podCache: cache,
    now: () => clock,
    sleep: async (ms: number) => void (clock += ms),
    fetchPod: async (_kc: string, namespace: string, name: string) => {
      fetched.push(`${namespace}/${name}`);
      return pod;
    },
  };
  return { deps, fetched, elapsed: () => clock };
}

const netconf = { kubeconfig: '/etc/kube/config' };

test('a healthy watch: the pod that reaches the cache 400 ms after the ADD is decided from the cache, with no GET', async (t) => {
  const s = setup(true, 400);
  const notes: string[] = [];
  const d = await decidePod(k8s, netconf, { excludeNamespaces: [] }, s.deps, notes);
  t.is(d.source, 'cache');
  t.true(d.decision.meshed);
  t.deepEqual(s.fetched, []);
  t.true(s.elapsed() >= 400 && s.elapsed() < CACHE_WAIT_MS);
});

test(`a healthy watch that never gets the pod: one GET after ${CACHE_WAIT_MS} ms, and the note says why`, async (t) => {
  const s = setup(true, Infinity);
  const notes: string[] = [];
  const d = await decidePod(k8s, netconf, { excludeNamespaces: [] }, s.deps, notes);
  t.is(d.source, 'api');
  t.deepEqual(s.fetched, ['shop/orders']);
  t.regex(notes.join('\n'), /not in the watch cache after 3 s/);
});

test('a watch that is down: the GET at once, no waiting', async (t) => {
  const s = setup(false, 400);
  const d = await decidePod(k8s, netconf, { excludeNamespaces: [] }, s.deps, []);
  t.is(d.source, 'api');
  t.deepEqual(s.fetched, ['shop/orders']);
  t.is(s.elapsed(), 0);
});
