/**
 * The shim runs on the host, whatever its libc: build/mesh-cni (scripts/build-native.js) is linked statically.
 * The header checks are what readelf says; the proof is running it where no library exists at all, a chroot
 * holding nothing but the binary. A dynamic build fails there before main() (its ELF interpreter is absent);
 * the static one answers the runtime with a CNI error, as it must on a host where it finds no agent and no
 * engine.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/paths';
import { testTempDir } from '../support/tmp';

const SHIM = join(REPO_ROOT, 'build', 'mesh-cni');

function readelf(...args: string[]): string {
  const r = spawnSync('readelf', [...args, SHIM], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`readelf is missing or failed: install binutils (apt-get install -y binutils): ${r.stderr ?? r.error?.message}`);
  return r.stdout;
}

test.before(() => {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'build-native.js')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`scripts/build-native.js failed: ${r.stderr}`);
});

test('no ELF interpreter, no dynamic section, no glibc symbol version required', (t) => {
  t.notRegex(readelf('--program-headers', '--wide'), /\bINTERP\b/);
  t.regex(readelf('--dynamic'), /There is no dynamic section/);
  t.notRegex(readelf('--version-info'), /GLIBC_/);
});

test('runs in an empty root (no libc, no /proc, no node): a CNI error with code 11, not an exec failure', (t) => {
  const root = testTempDir(t, 'shim-chroot');
  copyFileSync(SHIM, join(root, 'mesh-cni'));
  const r = spawnSync('/usr/sbin/chroot', [root, '/mesh-cni'], {
    input: '{"cniVersion":"1.0.0","name":"n","type":"mesh-cni"}',
    encoding: 'utf8',
    env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/' },
    timeout: 20_000,
  });
  t.is(r.error, undefined);
  t.is(r.status, 1, `${r.stdout}\n${r.stderr}`);
  const answer = JSON.parse(r.stdout) as { code: number; msg: string };
  t.is(answer.code, 11);
  t.regex(answer.msg, /agent is not running/);
});
