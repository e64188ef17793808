/** The attachment store's file naming: injective, total over every valid CNI_IFNAME, and reading what older versions wrote. */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AttachmentStore, type AttachmentRecord } from '../../src/state/attachments';
import { testTempDir } from '../support/tmp';
import type { ExecutionContext } from 'ava';

/** A temp dir on tmpfs (/dev/shm), where records are written in the after-answer turn itself. */
function shmTempDir(t: ExecutionContext, prefix: string): string {
  const dir = fs.mkdtempSync(`/dev/shm/mesh-cni-${prefix}-`);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** recordLater's two ways: through libuv's threads on a disk, in the event loop's next turn on tmpfs. */
const WHERE = [
  ['disk', testTempDir],
  ['tmpfs', shmTempDir],
] as const;

function rec(containerId: string, ifName: string): AttachmentRecord {
  return { containerId, ifName, netns: `/var/run/netns/${containerId}`, backend: 'iptables-nft', rules: 3, programmedAt: '2026-01-01T00:00:00.000Z' };
}

/** recordLater's arguments for `rec(...)`: the record without its time, and the time. */
function later(containerId: string, ifName: string): [Omit<AttachmentRecord, 'programmedAt'>, number] {
  const { programmedAt, ...rest } = rec(containerId, ifName);
  return [rest, Date.parse(programmedAt)];
}

test('names are injective: (a_b, c) and (a, b_c) are two records, and forgetting one keeps the other', (t) => {
  const store = new AttachmentStore(testTempDir(t, 'att'));
  t.is(store.record(rec('a_b', 'c')), undefined);
  t.is(store.record(rec('a', 'b_c')), undefined);
  t.is(store.list().length, 2);
  store.forget('a', 'b_c');
  t.deepEqual(store.list().map((r) => [r.containerId, r.ifName]), [['a_b', 'c']]);
  t.is(store.gc([{ containerID: 'a_b', ifname: 'c' }]), 0);
  t.is(store.list().length, 1);
});

for (const ifName of ['eth0@x', 'eth+', 'ethé', 'a%41', 'net1:2']) {
  test(`an interface named ${JSON.stringify(ifName)} is recorded, listed and forgotten`, (t) => {
    const store = new AttachmentStore(testTempDir(t, 'att'));
    t.is(store.record(rec('c1', ifName)), undefined);
    t.deepEqual(store.list().map((r) => r.ifName), [ifName]);
    store.forget('c1', ifName);
    t.deepEqual(store.list(), []);
  });
}

test('a record written under the old name is read, and forgotten only by its own attachment', (t) => {
  const dir = testTempDir(t, 'att');
  const store = new AttachmentStore(dir);
  fs.mkdirSync(store.dir, { recursive: true });
  // The old naming wrote (a_b, c) as a_b_c.json, the same name (a, b_c) would have had.
  fs.writeFileSync(path.join(store.dir, 'a_b_c.json'), JSON.stringify(rec('a_b', 'c')));
  t.deepEqual(store.list().map((r) => r.containerId), ['a_b']);
  store.forget('a', 'b_c');
  t.is(store.list().length, 1, "another attachment's DEL leaves the old record alone");
  store.forget('a_b', 'c');
  t.deepEqual(store.list(), []);
  fs.writeFileSync(path.join(store.dir, 'x_eth0.json'), JSON.stringify(rec('x', 'eth0')));
  fs.writeFileSync(path.join(store.dir, 'y_z_eth0.json'), JSON.stringify(rec('y_z', 'eth0')));
  t.is(store.gc([{ containerID: 'x', ifname: 'eth0' }]), 1);
  t.deepEqual(store.list().map((r) => r.containerId), ['x']);
});

for (const [where, tempDir] of WHERE) {
  test(`${where}: recordLater starts the write after the current turn of the event loop, tells how long the start took, and settled waits for it`, async (t) => {
  const store = new AttachmentStore(tempDir(t, 'att'));
  const started: number[] = [];
  store.recordLater(...later('late', 'eth0'), (note) => t.fail(note), (seconds) => started.push(seconds));
  // Promise continuations of this turn (where the agent sends its answer) run before the write begins.
  for (let i = 0; i < 10; i++) await Promise.resolve();
  t.deepEqual(started, [], 'not started within this turn');
  await store.settled('late', 'eth0');
  t.is(started.length, 1);
  t.true(started[0]! > 0 && started[0]! < 1, `start took ${started[0]} s`);
  t.deepEqual(store.list(), [rec('late', 'eth0')]);
  const file = path.join(store.dir, 'late_eth0.json');
  t.is(fs.statSync(file).mode & 0o777, 0o600);
  t.deepEqual(fs.readdirSync(store.dir), ['late_eth0.json'], 'no temp file left');
});
}

for (const [where, tempDir] of WHERE) {
  test(`${where}: recordLater into a removed state directory creates it again; one that cannot be written reports the note`, async (t) => {
  const dir = tempDir(t, 'att');
  const store = new AttachmentStore(dir);
  store.recordLater(...later('a', 'eth0'), (note) => t.fail(note));
  await store.settled();
  fs.rmSync(store.dir, { recursive: true });
  store.recordLater(...later('b', 'eth0'), (note) => t.fail(note));
  await store.settled();
  t.deepEqual(store.list().map((r) => r.containerId), ['b']);
  // A state dir that is a file: the write fails, and the failure is reported, not thrown.
  const blocked = new AttachmentStore(path.join(dir, 'file'));
  fs.writeFileSync(path.join(dir, 'file'), '');
  const notes: string[] = [];
  blocked.recordLater(...later('c', 'eth0'), (note) => notes.push(note));
  await blocked.settled();
  t.is(notes.length, 1);
  t.regex(notes[0]!, /attachment state not recorded/);
});
}

for (const [where, tempDir] of WHERE) {
  test(`${where}: a DEL after a recordLater of the same attachment removes it for good (the removal waits for the write)`, async (t) => {
  const store = new AttachmentStore(tempDir(t, 'att'));
  store.recordLater(...later('gone', 'eth0'), (note) => t.fail(note));
  await store.settled('gone', 'eth0');
  store.recordLater(...later('gone', 'eth0'), (note) => t.fail(note));
  await store.settled('gone', 'eth0');
  store.forget('gone', 'eth0');
  await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(store.list(), []);
});
}
