/**
 * Install with a state dir that cannot be written (full: a size-limited tmpfs this test mounts, filled, and
 * unmounts). The record of what a config held is written before the config is changed, so the pass fails
 * with the primary CNI's file exactly as it was (its CRLF, tabs and an integer past 2^53 included), and an
 * uninstall then has nothing to undo. Once there is room again, install and uninstall give the bytes back.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { install, uninstall } from './helpers';
import { makeNode, type Node } from './fixtures';

const PRIMARY = '{\r\n\t"cniVersion": "0.3.1",\r\n\t"name": "k8s-pod-network",\r\n\t"plugins": [\r\n\t\t{ "type": "calico", "mtu": 1440, "big": 12345678901234567890 },\r\n\t\t{"type":"portmap","capabilities":{"portMappings":true}}\r\n\t]\r\n}\r\n';
const LONE_CONF = '{\r\n\t"cniVersion": "0.3.1",\r\n\t"name": "bridge",\r\n\t"type": "bridge",\r\n\t"big": 12345678901234567890\r\n}\r\n';

/** A node whose state dir is a 16 KiB tmpfs, filled to the last byte; `free()` makes room again. */
function nodeWithFullStateDir(t: ExecutionContext, files: Record<string, string>): { node: Node; free(): void } {
  if (process.getuid?.() !== 0) throw new Error('mounting a tmpfs needs root');
  const node = makeNode(files);
  const stateDir = join(node.root, 'state');
  mkdirSync(stateDir);
  const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16k,mode=0700', 'tmpfs', stateDir], { encoding: 'utf8' });
  if (mount.status !== 0) throw new Error(`cannot mount a tmpfs: ${mount.stderr}`);
  t.teardown(() => {
    spawnSync('umount', [stateDir]);
    node.cleanup();
  });
  const filler = join(stateDir, 'filler');
  try {
    writeFileSync(filler, Buffer.alloc(64 * 1024));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  }
  node.options.stateDir = stateDir;
  return { node, free: () => rmSync(filler, { force: true }) };
}

test.serial('a conflist: install fails on a full state dir with the primary file untouched; uninstall leaves it; with room, install and uninstall give every byte back', async (t) => {
  const { node, free } = nodeWithFullStateDir(t, { '10-calico.conflist': PRIMARY });
  const file = join(node.confDir, '10-calico.conflist');
  const err = await t.throwsAsync(install(node.options));
  t.regex(String((err as NodeJS.ErrnoException).code ?? err?.message), /ENOSPC/);
  t.is(readFileSync(file, 'utf8'), PRIMARY, 'the failed install left the file as it was');
  await uninstall(node.options);
  t.is(readFileSync(file, 'utf8'), PRIMARY, 'uninstall after the failed install changed nothing');

  free();
  await install(node.options);
  t.regex(readFileSync(file, 'utf8'), /"mesh-cni"/);
  await uninstall(node.options);
  t.is(readFileSync(file, 'utf8'), PRIMARY);
});

test.serial('a lone .conf: install fails on a full state dir before converting it; with room, it is converted and given back', async (t) => {
  const { node, free } = nodeWithFullStateDir(t, { '10-bridge.conf': LONE_CONF });
  const conf = join(node.confDir, '10-bridge.conf');
  await t.throwsAsync(install(node.options));
  t.is(readFileSync(conf, 'utf8'), LONE_CONF);
  t.false(existsSync(join(node.confDir, '10-bridge.conflist')), 'no conversion was written');
  await uninstall(node.options);
  t.is(readFileSync(conf, 'utf8'), LONE_CONF);

  free();
  await install(node.options);
  t.false(existsSync(conf));
  await uninstall(node.options);
  t.is(readFileSync(conf, 'utf8'), LONE_CONF);
  t.false(existsSync(join(node.confDir, '10-bridge.conflist')));
});
