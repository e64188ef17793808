/**
 * A meshed pod whose netns holds none of our rules is "no mesh-cni rules", not "rules differ from the plan
 * (19 rule differences)": the reconciler with the real engine against a real, empty netns, then repaired in
 * place and healthy. Kernel test (root, iptables).
 */
import test from 'ava';
import type { V1Pod } from '@kubernetes/client-node';
import { checkRedirect, applyRedirect } from '../../src/redirect/engine';
import { NO_RULES_REASON, Reconciler, type RepairDeps } from '../../src/repair/reconciler';
import { createNetns, netnsPath } from '../support/netns';
import { requireKernelTools } from '../support/require';
import { STATUS_ANNOTATION } from '../cni/helpers';

test('an empty netns: reason "no mesh-cni rules in the netns", the Event says all planned rules are missing; repaired, it is healthy', async (t) => {
  requireKernelTools(t);
  const netns = netnsPath(createNetns(t, 'norules'));
  const pod = {
    metadata: { name: 'orders', namespace: 'shop', uid: 'uid-norules', annotations: { 'sidecar.istio.io/status': STATUS_ANNOTATION } },
    spec: { containers: [{ name: 'app' }, { name: 'istio-proxy' }], initContainers: [{ name: 'istio-validation' }] },
    status: { podIP: '10.77.0.2' },
  } as V1Pod;
  const events: string[] = [];
  const deps: RepairDeps = {
    pods: () => [pod],
    locateNetns: async () => netns,
    check: (n, config) => checkRedirect({ netns: n, config, backend: 'iptables' }),
    apply: async (n, config) => void (await applyRedirect({ netns: n, config, backend: 'iptables' })),
    label: async () => undefined,
    delete: async () => undefined,
    event: async (_p, reason, message) => void events.push(`${reason}: ${message}`),
  };
  const reconciler = new Reconciler({ mode: 'repair', excludeNamespaces: [], backend: 'iptables' }, deps);
  const [finding] = await reconciler.pass();
  t.is(finding!.verdict, 'broken');
  t.is(finding!.reason, NO_RULES_REASON);
  t.is(finding!.action, 'repaired');
  t.regex(events[0] ?? '', /^RedirectRepaired: .*: no mesh-cni rules in the netns \(all \d+ planned rules missing\)$/);
  const [after] = await reconciler.pass();
  t.is(after!.verdict, 'healthy', after!.reason);
});
