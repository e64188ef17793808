/**
 * The agent's watch cache (src/kube/pod-cache.ts over src/kube/lean-watch.ts) against a real etcd +
 * kube-apiserver: only this node's pods, trimmed to the fields we read, every add/update/delete heard; an
 * API server that goes away and comes back is watched again (the cache says it is not watching meanwhile,
 * so ADDs fall back to a GET), and what changed during the outage reaches the cache. No
 * @kubernetes/client-node is loaded by the watch itself.
 */
import test from 'ava';
import { NodePodCache, type PodEvent } from '../../src/kube/pod-cache';
import { startKube, type Kube } from '../support/kube';

const NODE = 'node-cache';
let kube: Kube | undefined;

test.before(async () => {
  kube = await startKube();
  await kube.ensureNamespace('cache');
});
test.after.always(async () => {
  await kube?.stop();
});

async function until(what: string, check: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test.serial('only this node, trimmed pods, every event; an API outage is survived and its changes arrive', async (t) => {
  const k = kube!;
  await k.createPod({ namespace: 'cache', name: 'before-start', nodeName: NODE, containers: ['app', 'istio-proxy'] });
  const events: string[] = [];
  const errors: unknown[] = [];
  const cache = await NodePodCache.start({
    nodeName: NODE,
    kubeconfigPath: k.kubeconfig,
    minBackoffMs: 100,
    maxBackoffMs: 500,
    onEvent: (e: PodEvent, pod) => events.push(`${e} ${pod.metadata?.name}`),
    onError: (err) => errors.push(err),
  });
  t.teardown(() => cache.stop());
  await until('synced', () => cache.watching());
  t.truthy(cache.get('cache', 'before-start'), 'listed at start');
  await k.createPod({ namespace: 'cache', name: 'mine', nodeName: NODE, labels: { app: 'a' }, containers: ['app', 'istio-proxy'] });
  await k.createPod({ namespace: 'cache', name: 'elsewhere', nodeName: 'another-node' });
  await until('the new pod', () => Boolean(cache.get('cache', 'mine')));
  const mine = cache.get('cache', 'mine')!;
  t.is(mine.metadata?.labels?.app, 'a');
  t.truthy(mine.metadata?.resourceVersion);
  t.is((mine.metadata as { managedFields?: unknown }).managedFields, undefined, 'trimmed');
  t.deepEqual(mine.spec?.containers?.map((c) => c.name), ['app', 'istio-proxy']);
  t.is(mine.spec?.containers?.[1]?.securityContext?.runAsUser, 1337);
  t.is((mine.spec?.containers?.[0] as { image?: string }).image, undefined, 'trimmed');
  await k.markRunning('cache', 'mine', '10.9.0.2');
  await until('the status update', () => cache.get('cache', 'mine')?.status?.podIP === '10.9.0.2');
  t.is(cache.get('cache', 'elsewhere'), undefined, "another node's pod is not watched");

  await k.stopApiserver();
  await until('the watch noticing the outage', () => !cache.watching());
  t.true(errors.length > 0);
  await k.startApiserver();
  await k.core().deleteNamespacedPod({ namespace: 'cache', name: 'before-start', gracePeriodSeconds: 0 });
  await k.createPod({ namespace: 'cache', name: 'after-outage', nodeName: NODE });
  await until('the changes made after the outage', () => Boolean(cache.get('cache', 'after-outage')) && !cache.get('cache', 'before-start'), 60_000);
  t.true(cache.watching());
  t.true(cache.stats.restarts >= 1);
  t.deepEqual(
    cache.pods().map((p) => p.metadata?.name).sort(),
    ['after-outage', 'mine'],
  );
  for (const e of ['add before-start', 'add mine', 'update mine', 'delete before-start', 'add after-outage']) t.true(events.includes(e), `${e} in ${events.join(', ')}`);
});
