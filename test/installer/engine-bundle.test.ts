/**
 * The engine the installer puts on the host is one file: it must run from a directory that holds nothing
 * else (no dist/, no node_modules/), as the shim runs it when the agent is down.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleEngine } from '../../src/installer/engine-bundle';
import { REPO_ROOT } from '../support/paths';

const ENTRY = join(REPO_ROOT, 'dist/src/cni/main.js');

test('the bundled engine answers VERSION and a pass-through ADD from an empty directory', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'mcni-bundle-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'mesh-cni.js');
  writeFileSync(file, bundleEngine(ENTRY));
  const version = spawnSync(process.execPath, [file], { cwd: dir, input: '{"cniVersion":"1.0.0"}', env: { CNI_COMMAND: 'VERSION' }, encoding: 'utf8' });
  t.is(version.status, 0, version.stderr);
  t.deepEqual(JSON.parse(version.stdout).cniVersion, '1.0.0');
  // Not a Kubernetes pod: decided without touching a netns, which proves the whole dispatch path loaded.
  const netconf = JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'mesh-cni', log_file: join(dir, 'cni.log'), state_dir: dir });
  const add = spawnSync(process.execPath, [file], {
    cwd: dir,
    input: netconf,
    env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/proc/1/ns/net', CNI_IFNAME: 'eth0', CNI_PATH: dir, PATH: process.env.PATH },
    encoding: 'utf8',
  });
  t.not(add.stdout, '', add.stderr);
  t.notRegex(add.stdout + add.stderr, /Cannot find module/);
});

test('the bundle names packages by their path below node_modules, not where they were installed', (t) => {
  const text = bundleEngine(ENTRY);
  t.regex(text, /"node_modules\/ip-address\//);
  t.notRegex(text, /"\.\.\/[^"]*node_modules/);
});
