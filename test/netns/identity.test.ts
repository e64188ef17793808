/**
 * One answer to "is this path our own network namespace?" for the CNI path check and the engine's
 * host-netns refusal: a pod's netns is not ours, every name of our own (/proc/self, /proc/thread-self, a
 * bind mount under /var/run/netns) is.
 */
import test from 'ava';
import { classifyNetnsPath, isHostNetns, withNetns } from '../../src/netns';
import { createNetns, netnsPath, sh, uniqueName } from '../support/netns';
import { requireKernelTools } from '../support/require';
import { testTempDir } from '../support/tmp';
import * as fs from 'node:fs';
import * as path from 'node:path';

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

test('a path that is not a namespace file is not-netns, a missing one missing; another kind of namespace file is not ours', (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'ident');
  fs.writeFileSync(path.join(dir, 'file'), '');
  for (const p of [path.join(dir, 'file'), dir, '/dev/null', '/proc/self/status']) t.is(classifyNetnsPath(p), 'not-netns', p);
  for (const p of [path.join(dir, 'absent'), path.join(dir, 'file', 'below')]) t.is(classifyNetnsPath(p), 'missing', p);
  // On nsfs, but our mount namespace's file, not our network namespace's: as before, not ours.
  t.is(classifyNetnsPath('/proc/self/ns/mnt'), 'netns');
});

test('inside withNetns "ours" is the namespace entered, and back outside it is home again (the home identity is remembered only outside)', (t) => {
  requireKernelTools(t);
  const pod = netnsPath(createNetns(t, 'ident'));
  const mounted = uniqueName('home');
  sh('ip', ['netns', 'attach', mounted, String(process.pid)]);
  t.teardown(() => {
    sh('ip', ['netns', 'delete', mounted]);
  });
  const home = netnsPath(mounted);
  t.is(classifyNetnsPath(home), 'own-netns');
  t.is(classifyNetnsPath(pod), 'netns');
  const inside = withNetns(pod, () => [classifyNetnsPath(pod), classifyNetnsPath(home), isHostNetns(pod)] as const);
  t.deepEqual(inside, ['own-netns', 'netns', true]);
  t.is(classifyNetnsPath(home), 'own-netns');
  t.is(classifyNetnsPath(pod), 'netns');
  t.false(isHostNetns(pod));
  // A failing function inside still leaves the thread (and the answer) at home.
  t.throws(() => withNetns(pod, () => {
    throw new Error('inside');
  }));
  t.is(classifyNetnsPath(pod), 'netns');
  t.is(classifyNetnsPath(home), 'own-netns');
});
