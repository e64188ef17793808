/**
 * The agent's ZDS server against the ztunnel stand-in (test/support/ztunnel.ts, written from zds.proto), on
 * real SEQPACKET sockets with real netns descriptors: the snapshot on connect, adds to the newest ztunnel and
 * deletes to all, each acked; no ztunnel, a refusing one and a silent one each fail an add; a reconnecting
 * ztunnel gets every workload held then and none deleted while it was away.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ZdsServer, type ZdsWorkload } from '../../src/agent/zds-server';
import { ZtunnelUnavailableError } from '../../src/errors';
import { createNetns, netnsPath } from '../support/netns';
import { ZtunnelStandIn } from '../support/ztunnel';

interface Held extends ZdsWorkload {
  path: string;
}

function workload(t: ExecutionContext, uid: string): Held {
  const name = createNetns(t, uid);
  const fd = fs.openSync(netnsPath(name), 'r');
  t.teardown(() => fs.closeSync(fd));
  return { uid, info: { name: `pod-${uid}`, namespace: 'shop', serviceAccount: 'default' }, netnsFd: fd, path: netnsPath(name) };
}

function server(t: ExecutionContext, held: Map<string, Held>, timeoutMs = 2000): { zds: ZdsServer; events: string[] } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcni-zds-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const events: string[] = [];
  const zds = ZdsServer.start({
    path: path.join(dir, 'run', 'ztunnel.sock'),
    snapshot: () => [...held.values()],
    timeoutMs,
    connected: (n) => events.push(`connected ${n}`),
    sent: (kind, snapshot) => events.push(`sent ${kind}${snapshot ? ' (snapshot)' : ''}`),
    ackFailed: (reason) => events.push(`ack failed ${reason}`),
  });
  t.teardown(() => zds.close());
  return { zds, events };
}

/** Polls `done` for up to 5 s (events are counted as acks arrive, a moment after the stand-in answered). */
async function eventually(done: () => boolean): Promise<boolean> {
  const deadline = Date.now() + 5000;
  while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  return done();
}

const expect = (held: Map<string, Held>) => (uid: string) => held.get(uid)?.path;

test('on connect ztunnel gets every workload with its netns, then SnapshotSent; the socket is root only', async (t) => {
  const held = new Map([workload(t, 'u1'), workload(t, 'u2')].map((w) => [w.uid, w]));
  const { zds, events } = server(t, held);
  t.is(fs.statSync(zds.path).mode & 0o777, 0o600);
  const z = await ZtunnelStandIn.connect(t, zds.path, { expectNetns: expect(held) });
  await z.until(() => z.snapshot !== undefined, 'the snapshot');
  t.deepEqual(z.log, ['add u1', 'add u2', 'snapshot-sent']);
  t.deepEqual(z.problems, [], 'every descriptor was the pod\'s netns');
  t.deepEqual(z.workloads.get('u1')?.info, { name: 'pod-u1', namespace: 'shop', serviceAccount: 'default' });
  t.true(await eventually(() => events.includes('sent snapshot-sent (snapshot)')));
  t.deepEqual(events.filter((e) => e.startsWith('sent')), ['sent add (snapshot)', 'sent add (snapshot)', 'sent snapshot-sent (snapshot)']);
  t.is(zds.connected(), 1);
});

test('an add is acked before it resolves; a delete reaches ztunnel', async (t) => {
  const held = new Map<string, Held>();
  const { zds } = server(t, held);
  const z = await ZtunnelStandIn.connect(t, zds.path, { expectNetns: expect(held) });
  await z.until(() => z.snapshot !== undefined, 'the snapshot');
  const w = workload(t, 'u3');
  held.set(w.uid, w);
  await zds.addWorkload(w);
  t.true(z.workloads.has('u3'), 'ztunnel holds it once the add resolved');
  await zds.delWorkload('u3');
  t.false(z.workloads.has('u3'));
  t.deepEqual(z.log, ['snapshot-sent', 'add u3', 'del u3']);
});

test('no ztunnel connected: an add fails at once with ZtunnelUnavailableError', async (t) => {
  const { zds } = server(t, new Map());
  const started = Date.now();
  const err = await t.throwsAsync(zds.addWorkload(workload(t, 'u4')), { instanceOf: ZtunnelUnavailableError });
  t.regex(err!.message, /no ztunnel is connected/);
  t.true(Date.now() - started < 2000);
});

test('a ztunnel that refuses (ack with an error) fails the add with its error, and stays connected', async (t) => {
  const { zds, events } = server(t, new Map());
  const z = await ZtunnelStandIn.connect(t, zds.path, { refuse: (uid) => (uid === 'bad' ? 'pod not known to ztunnel' : undefined) });
  await z.until(() => z.snapshot !== undefined, 'the snapshot');
  await t.throwsAsync(zds.addWorkload(workload(t, 'bad')), { instanceOf: ZtunnelUnavailableError, message: /pod not known to ztunnel/ });
  t.true(events.includes('ack failed error'));
  await zds.addWorkload(workload(t, 'good'));
  t.true(z.workloads.has('good'));
});

test('a ztunnel that never acks: the add fails after the timeout and the connection is dropped', async (t) => {
  const { zds, events } = server(t, new Map(), 400);
  const z = await ZtunnelStandIn.connect(t, zds.path, { silent: true });
  await t.throwsAsync(zds.addWorkload(workload(t, 'u5')), { instanceOf: ZtunnelUnavailableError });
  t.true(await eventually(() => events.includes('ack failed timeout')), events.join(', '));
  await z.until(() => z.disconnected, 'the agent to drop the connection');
  t.is(zds.connected(), 0);
});

test('a reconnecting ztunnel gets every workload held now, not one deleted while it was away; adds go to the newest, deletes to all', async (t) => {
  const held = new Map([workload(t, 'a'), workload(t, 'b')].map((w) => [w.uid, w]));
  const { zds } = server(t, held);
  const first = await ZtunnelStandIn.connect(t, zds.path, { expectNetns: expect(held) });
  await first.until(() => first.snapshot !== undefined, 'the first snapshot');
  await first.close();
  // While no ztunnel is connected: b goes, c comes.
  held.delete('b');
  const c = workload(t, 'c');
  held.set('c', c);
  const second = await ZtunnelStandIn.connect(t, zds.path, { expectNetns: expect(held) });
  await second.until(() => second.snapshot !== undefined, 'the second snapshot');
  t.deepEqual(second.snapshot, ['a', 'c']);
  t.false(second.workloads.has('b'));
  // A replacement ztunnel connects beside it: the newest gets adds, both get deletes.
  const third = await ZtunnelStandIn.connect(t, zds.path, { expectNetns: expect(held) });
  await third.until(() => third.snapshot !== undefined, 'the third snapshot');
  const d = workload(t, 'd');
  held.set('d', d);
  await zds.addWorkload(d);
  t.true(third.workloads.has('d'));
  t.false(second.workloads.has('d'));
  await zds.delWorkload('a');
  t.false(second.workloads.has('a'));
  t.false(third.workloads.has('a'));
  t.is(zds.connected(), 2);
});
