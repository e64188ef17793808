/**
 * The periodic pass's fingerprint (src/installer/dir-stamp.ts) on real files: unchanged when nothing moved,
 * changed by every kind of write a primary CNI or an operator makes, including one that keeps the size.
 */
import test from 'ava';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stampOf } from '../../src/installer/dir-stamp';

function tree(t: import('ava').ExecutionContext): { conf: string; bin: string; engine: string } {
  const root = mkdtempSync(join(tmpdir(), 'mesh-cni-stamp-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const conf = join(root, 'net.d');
  const bin = join(root, 'bin');
  const engine = join(bin, 'mesh-cni.d');
  mkdirSync(join(engine, 'v1'), { recursive: true });
  mkdirSync(conf);
  writeFileSync(join(conf, '10-calico.conflist'), '{"name":"k8s","plugins":[{"type":"calico"}]}');
  writeFileSync(join(bin, 'mesh-cni'), 'shim');
  writeFileSync(join(engine, 'v1', 'engine.js'), 'engine');
  return { conf, bin, engine };
}

const stamp = (d: { conf: string; bin: string; engine: string }) => stampOf([d.conf, d.bin], [d.engine]);

test('the same stamp twice when nothing moved', (t) => {
  const d = tree(t);
  t.is(stamp(d), stamp(d));
});

const changes: Array<[string, (d: { conf: string; bin: string; engine: string }) => void]> = [
  ['an in-place rewrite of the same size', (d) => writeFileSync(join(d.conf, '10-calico.conflist'), '{"name":"k8x","plugins":[{"type":"calico"}]}')],
  ['a rewrite by rename', (d) => {
    writeFileSync(join(d.conf, 'tmp'), '{"name":"k8s","plugins":[{"type":"calico"}]}');
    renameSync(join(d.conf, 'tmp'), join(d.conf, '10-calico.conflist'));
  }],
  ['a new file', (d) => writeFileSync(join(d.conf, '05-cilium.conflist'), '{}')],
  ['a deleted shim', (d) => unlinkSync(join(d.bin, 'mesh-cni'))],
  ['a file deep in the engine dir', (d) => writeFileSync(join(d.engine, 'v1', 'engine.js'), 'other!')],
  ['only the mtime', (d) => utimesSync(join(d.conf, '10-calico.conflist'), new Date(1000), new Date(1000))],
];

for (const [what, change] of changes) {
  test(`a new stamp after ${what}`, (t) => {
    const d = tree(t);
    const before = stamp(d);
    change(d);
    t.not(stamp(d), before);
  });
}

test('a symlinked config: retargeting the link gives a new stamp; a dangling link is stamped, not thrown', (t) => {
  const d = tree(t);
  writeFileSync(join(d.conf, 'a.json'), '{"type":"a"}');
  writeFileSync(join(d.conf, 'b.json'), '{"type":"b"}');
  symlinkSync(join(d.conf, 'a.json'), join(d.conf, '00-link.conflist'));
  const before = stamp(d);
  unlinkSync(join(d.conf, '00-link.conflist'));
  symlinkSync(join(d.conf, 'b.json'), join(d.conf, '00-link.conflist'));
  t.not(stamp(d), before);
  unlinkSync(join(d.conf, 'b.json'));
  t.regex(stamp(d), /dangling/);
});

test('an absent directory is stamped as absent, and its appearance changes the stamp', (t) => {
  const d = tree(t);
  const missing = join(d.conf, '..', 'later');
  const before = stampOf([missing]);
  t.regex(before, /absent/);
  mkdirSync(missing);
  t.not(stampOf([missing]), before);
  rmSync(missing, { recursive: true });
});
