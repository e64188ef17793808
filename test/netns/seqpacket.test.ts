/**
 * The SOCK_SEQPACKET seam (src/netns/seqpacket.ts) on real sockets: record boundaries, a network namespace's
 * descriptor passed by SCM_RIGHTS and recognised by its inode on the other side, timeouts and closes, and the
 * event loop running while a receive waits.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { connectSeqpacket, SeqpacketListener, SocketClosedError, SocketTimeoutError, type SeqpacketSocket } from '../../src/netns/seqpacket';
import { createNetns, netnsPath } from '../support/netns';

function socketPath(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcni-seqpacket-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'zds.sock');
}

async function pair(t: { teardown(fn: () => void): void }): Promise<{ listener: SeqpacketListener; server: SeqpacketSocket; client: SeqpacketSocket; path: string }> {
  const at = socketPath(t);
  const listener = SeqpacketListener.listen(at);
  t.teardown(() => listener.close());
  const accepted = listener.accept();
  const client = connectSeqpacket(at);
  t.teardown(() => client.close());
  const server = await accepted;
  t.teardown(() => server.close());
  return { listener, server, client, path: at };
}

test('the socket file is root only and records keep their boundaries', async (t) => {
  const { server, client, path: at } = await pair(t);
  t.is(fs.statSync(at).mode & 0o777, 0o600);
  t.true(fs.statSync(at).isSocket());
  await client.send(Buffer.from('one'));
  await client.send(Buffer.from('two two'));
  await client.send(Buffer.from([0x08, 0x01]));
  t.is((await server.receive({ timeoutMs: 2000 })).data.toString(), 'one');
  t.is((await server.receive({ timeoutMs: 2000 })).data.toString(), 'two two');
  t.deepEqual([...(await server.receive({ timeoutMs: 2000 })).data], [0x08, 0x01]);
});

test('a network namespace descriptor passed by SCM_RIGHTS arrives as the same namespace (inode)', async (t) => {
  const { server, client } = await pair(t);
  const ns = createNetns(t, 'zds');
  const fd = fs.openSync(netnsPath(ns), 'r');
  t.teardown(() => fs.closeSync(fd));
  await server.send(Buffer.from('add'), [fd]);
  const got = await client.receive({ timeoutMs: 2000 });
  t.is(got.data.toString(), 'add');
  t.is(got.fds.length, 1);
  const received = got.fds[0]!;
  t.teardown(() => fs.closeSync(received));
  t.not(received, fd, 'the kernel installs a new descriptor');
  t.is(fs.fstatSync(received).ino, fs.statSync(netnsPath(ns)).ino, 'same namespace inode as the netns file');
});

test('a receive waits without blocking the event loop, and times out', async (t) => {
  const { server } = await pair(t);
  let ticks = 0;
  const interval = setInterval(() => ticks++, 10);
  t.teardown(() => clearInterval(interval));
  const started = Date.now();
  await t.throwsAsync(server.receive({ timeoutMs: 400 }), { instanceOf: SocketTimeoutError });
  t.true(Date.now() - started >= 390);
  t.true(ticks >= 5, `the loop ran while the receive waited (${ticks} ticks)`);
});

test('a message sent later wakes a waiting receive', async (t) => {
  const { server, client } = await pair(t);
  const waiting = server.receive({ timeoutMs: 5000 });
  setTimeout(() => void client.send(Buffer.from('late')), 100);
  t.is((await waiting).data.toString(), 'late');
});

test('the peer closing ends a waiting receive; a send to a closed peer fails', async (t) => {
  const { server, client } = await pair(t);
  const waiting = server.receive({ timeoutMs: 5000 });
  setTimeout(() => client.close(), 50);
  await t.throwsAsync(waiting, { instanceOf: SocketClosedError });
  await t.throwsAsync(server.send(Buffer.from('x')), { instanceOf: SocketClosedError });
});

test('a record longer than allowed is refused, not cut silently', async (t) => {
  const { server, client } = await pair(t);
  await client.send(Buffer.alloc(300, 1));
  await t.throwsAsync(server.receive({ timeoutMs: 2000, maxBytes: 100 }), { message: /longer than 100 bytes/ });
});

test('closing the listener ends a pending accept and removes the socket file', async (t) => {
  const at = socketPath(t);
  const listener = SeqpacketListener.listen(at);
  const pending = listener.accept();
  listener.close();
  await t.throwsAsync(pending, { instanceOf: SocketClosedError });
  t.false(fs.existsSync(at));
  t.throws(() => connectSeqpacket(at), { instanceOf: SocketClosedError });
});

test('a socket file left by an earlier process is replaced; a regular file is not', async (t) => {
  const at = socketPath(t);
  const first = SeqpacketListener.listen(at);
  // Leave the file behind as a dead process would: the descriptor closes, the file stays.
  (first as unknown as { path: string }).path = `${at}.moved`;
  first.close();
  t.true(fs.existsSync(at));
  const second = SeqpacketListener.listen(at);
  t.teardown(() => second.close());
  const accepted = second.accept();
  const client = connectSeqpacket(at);
  t.teardown(() => client.close());
  (await accepted).close();
  const file = path.join(path.dirname(at), 'plain');
  fs.writeFileSync(file, 'not a socket');
  t.throws(() => SeqpacketListener.listen(file));
  t.is(fs.readFileSync(file, 'utf8'), 'not a socket');
});
