/**
 * The engine builds one plan per distinct config and reuses it (engine.ts planFor), and the iptables backend
 * reuses the restore text of a reused plan. A cache keyed wrong would program one pod with another's rules:
 * here every config change is a different plan, and into real pod netns the changed config's rules land and
 * the unchanged config's rules come back unchanged after it.
 */
import test from 'ava';
import { applyRedirect, planFor } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { createPodPeer, tryInNetns } from '../support/netns';
import { connect, listen } from '../support/traffic';
import { requireKernelTools } from '../support/require';

const STATUS = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });
const INJECTED = { 'sidecar.istio.io/status': STATUS };
const EXCLUDING_80 = { ...INJECTED, 'traffic.sidecar.istio.io/excludeOutboundPorts': '80' };

test('golden: equal configs share one frozen plan; a changed field, however small, is another plan', (t) => {
  const a = planFor(redirectConfigFromAnnotations(INJECTED));
  t.is(planFor(redirectConfigFromAnnotations(INJECTED)), a);
  t.true(Object.isFrozen(a) && Object.isFrozen(a.ipv4.rules) && Object.isFrozen(a.ipv4.rules[0]));
  t.throws(() => (a.ipv4.rules as unknown as unknown[]).push({}), { instanceOf: TypeError });
  const config = redirectConfigFromAnnotations(INJECTED);
  const b = planFor({ ...config, proxyUid: config.proxyUid + 1 });
  t.not(b, a);
  t.notDeepEqual(b.ipv4.rules, a.ipv4.rules);
  t.not(planFor(redirectConfigFromAnnotations(EXCLUDING_80)), a);
  // The caller's config is copied, never frozen or shared with the cache.
  const mine = redirectConfigFromAnnotations({ ...INJECTED, 'traffic.sidecar.istio.io/excludeOutboundPorts': '81' });
  planFor(mine);
  t.false(Object.isFrozen(mine));
  mine.excludeOutboundPorts.push(82);
  t.true(planFor(mine).ipv4.rules.length > 0);
  t.not(planFor(mine), planFor(redirectConfigFromAnnotations({ ...INJECTED, 'traffic.sidecar.istio.io/excludeOutboundPorts': '81' })));
});

test('a pod with a changed config gets its own rules, and the next pod with the first config gets the first rules', async (t) => {
  requireKernelTools(t);
  const pods = [createPodPeer(t), createPodPeer(t), createPodPeer(t)];
  for (const pair of pods) {
    await listen(t, pair.pod, 'pod', ['15001']);
    await listen(t, pair.peer, 'peer', ['80', '81']);
  }
  const configs = [INJECTED, EXCLUDING_80, INJECTED];
  for (const [i, pair] of pods.entries()) {
    await applyRedirect({ netns: pair.podPath, config: redirectConfigFromAnnotations(configs[i]!), backend: 'iptables-nft', verify: 'when-replacing' });
  }
  const saved = pods.map((p) => tryInNetns(p.pod, 'iptables-nft-save', ['-t', 'nat']).stdout.replace(/^[#:].*$/gm, ''));
  t.is(connect(pods[0]!.pod, pods[0]!.peerIp4, 80).port, 15001);
  t.is(connect(pods[1]!.pod, pods[1]!.peerIp4, 80).port, 80, 'port 80 excluded in the second pod only');
  t.is(connect(pods[1]!.pod, pods[1]!.peerIp4, 81).port, 15001);
  t.is(connect(pods[2]!.pod, pods[2]!.peerIp4, 80).port, 15001, 'the third pod has the first config again');
  t.regex(saved[1]!, /--dport 80/);
  t.notRegex(saved[0]!, /--dport 80\b/);
  t.is(saved[2], saved[0]);
});
