/**
 * One answer to "is this path our own network namespace?" for the CNI path check and the engine's
 * host-netns refusal: a pod's netns is not ours, every name of our own (/proc/self, /proc/thread-self, a
 * bind mount under /var/run/netns) is.
 */
import test from 'ava';
import { classifyNetnsPath, isHostNetns } from '../../src/netns';
import { createNetns, netnsPath, sh, uniqueName } from '../support/netns';
import { requireKernelTools } from '../support/require';

test('a pod netns is a netns, not ours; every path to our own netns is ours', (t) => {
  requireKernelTools(t);
  const pod = netnsPath(createNetns(t, 'ident'));
  t.is(classifyNetnsPath(pod), 'netns');
  t.false(isHostNetns(pod));
  const mounted = uniqueName('own');
  // `ip netns attach` bind-mounts our own namespace under /var/run/netns: another path, the same namespace.
  sh('ip', ['netns', 'attach', mounted, String(process.pid)]);
  t.teardown(() => {
    sh('ip', ['netns', 'delete', mounted]);
  });
  for (const own of ['/proc/self/ns/net', '/proc/thread-self/ns/net', netnsPath(mounted)]) {
    t.is(classifyNetnsPath(own), 'own-netns', own);
    t.true(isHostNetns(own), own);
  }
});
