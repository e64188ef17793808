/**
 * The shim starts the standalone engine in an environment of its own making: the request's CNI_* variables,
 * our MESH_CNI_* settings and the runtime's PATH without relative entries. What else the runtime's
 * environment holds is meant for other programs and must not run inside the engine: an LD_PRELOAD of a
 * library this test compiles, NODE_OPTIONS=--require of a script, a program named like iptables' in the
 * directory the runtime started us in. Each is tried on the installed layout (<bin>/mesh-cni.d, the shipped
 * runtime) and on the build tree (build/mesh-cni, dist/, the machine's node); each must leave its marker file
 * unwritten while the ADD programs the pod's netns. The attacks are shown to work first, outside the shim.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { install, pluginEntry, uninstall } from '../../src/installer';
import { createNetns, inNetns, netnsPath } from '../support/netns';
import { probeInstalledEngine, standaloneAddEnv, standaloneNetconf } from '../support/shim';
import { REPO_ROOT } from '../support/paths';
import { requireKernelTools } from '../support/require';
import { testTempDir } from '../support/tmp';
import { INJECTED, POD_ARGS } from '../cni/helpers';

const BUILD_SHIM = join(REPO_ROOT, 'build', 'mesh-cni');
const ENGINE = join(REPO_ROOT, 'build', 'engine');
const NODE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

type Layout = 'installed' | 'build tree';

/** The shim to run for `layout`: the checkout's, or one installed with its engine into a temp bin dir. */
async function shimFor(t: ExecutionContext, layout: Layout, root: string): Promise<string> {
  if (layout === 'build tree') return BUILD_SHIM;
  const options = {
    cniBinDir: join(root, 'opt/cni/bin'),
    cniConfDir: join(root, 'etc/cni/net.d'),
    shimPath: BUILD_SHIM,
    enginePath: ENGINE,
    pluginConfig: pluginEntry({ backend: 'iptables' }),
    standaloneConf: true,
    stateDir: join(root, 'var/run/mesh-cni'),
  };
  await install(options);
  t.teardown(() => uninstall(options).then(() => undefined));
  return join(options.cniBinDir, 'mesh-cni');
}

/** A standalone ADD of a meshed pod into a fresh test netns, with `extra` in the runtime's environment. */
function addThroughShim(t: ExecutionContext, shim: string, root: string, extra: Record<string, string>, cwd = '/') {
  const netns = createNetns(t, 'shimenv');
  const r = spawnSync(shim, [], {
    cwd,
    input: JSON.stringify(standaloneNetconf(root, 'iptables-nft', INJECTED)),
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...standaloneAddEnv({ containerId: 'shimenv-1', netns: netnsPath(netns), cniPath: join(root, 'bin'), root, podArgs: POD_ARGS }), ...extra },
  });
  return { ...r, rules: inNetns(netns, 'iptables-save', []) };
}

/** A shared library that, once loaded anywhere, appends the process's pid to `marker`. */
function evilLibrary(t: ExecutionContext, dir: string, marker: string): string {
  const source = join(dir, 'evil.c');
  const library = join(dir, 'evil.so');
  fs.writeFileSync(source, `#include <fcntl.h>\n#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void evil(void) { int fd = open(${JSON.stringify(marker)}, O_WRONLY | O_CREAT | O_APPEND, 0600); if (fd >= 0) { dprintf(fd, "%d\\n", getpid()); close(fd); } }\n`);
  const cc = spawnSync(process.env.CC || 'cc', ['-shared', '-fPIC', '-o', library, source], { encoding: 'utf8' });
  if (cc.error || cc.status !== 0) throw new Error(`cannot compile the test library (install gcc): ${cc.stderr ?? cc.error?.message}`);
  // It works: a dynamically linked program loads it.
  spawnSync('/bin/true', [], { env: { LD_PRELOAD: library } });
  t.true(fs.existsSync(marker), 'the preloaded library runs in a program that is not ours');
  fs.rmSync(marker);
  return library;
}

/** A script that, once required anywhere, appends the process's pid to `marker`. */
function evilScript(t: ExecutionContext, dir: string, marker: string): string {
  const script = join(dir, 'evil.js');
  fs.writeFileSync(script, `require('fs').appendFileSync(${JSON.stringify(marker)}, process.pid + '\\n');\n`);
  spawnSync(process.execPath, ['-e', '0'], { env: { NODE_OPTIONS: `--require ${script}` } });
  t.true(fs.existsSync(marker), 'NODE_OPTIONS=--require runs the script in a node that is not ours');
  fs.rmSync(marker);
  return script;
}

const attacks: Array<[string, (t: ExecutionContext, dir: string, marker: string) => Record<string, string>]> = [
  ['LD_PRELOAD of a library', (t, dir, marker) => ({ LD_PRELOAD: evilLibrary(t, dir, marker) })],
  ['NODE_OPTIONS=--require of a script', (t, dir, marker) => ({ NODE_OPTIONS: `--require ${evilScript(t, dir, marker)}` })],
];

for (const layout of ['installed', 'build tree'] as Layout[]) {
  for (const [what, attack] of attacks) {
    test.serial(`shim environment (${layout}): ${what} in the runtime's environment never runs in the engine, and the ADD programs the pod`, async (t) => {
      requireKernelTools(t);
      const root = testTempDir(t, 'shim-env');
      const marker = join(root, 'evil-ran');
      const extra = attack(t, root, marker);
      const shim = await shimFor(t, layout, root);
      const add = addThroughShim(t, shim, root, extra);
      t.is(add.status, 0, `${add.stdout}\n${add.stderr}`);
      t.regex(add.rules, /15001/, 'the pod netns holds the redirect');
      t.false(fs.existsSync(marker), `the attacker's code ran in process(es) ${fs.existsSync(marker) ? fs.readFileSync(marker, 'utf8').trim() : ''}`);
    });
  }

  test.serial(`shim environment (${layout}): NODE_OPTIONS naming a missing file does not stop the engine answering`, async (t) => {
    requireKernelTools(t);
    const root = testTempDir(t, 'shim-env');
    const shim = await shimFor(t, layout, root);
    const add = addThroughShim(t, shim, root, { NODE_OPTIONS: `--require ${join(root, 'absent.js')}` });
    t.is(add.status, 0, `${add.stdout}\n${add.stderr}`);
    t.is(JSON.parse(add.stdout).cniVersion, '1.0.0', 'the answer is the CNI result');
    t.regex(add.rules, /15001/);
  });

  test.serial(`shim environment (${layout}): a program named iptables-nft-restore in the runtime's working directory is not run through a relative PATH entry`, async (t) => {
    requireKernelTools(t);
    const root = testTempDir(t, 'shim-env');
    const shim = await shimFor(t, layout, root);
    const cwd = join(root, 'cwd');
    const marker = join(root, 'evil-ran');
    fs.mkdirSync(cwd);
    for (const program of ['iptables-nft-restore', 'iptables-nft-save', 'ip6tables-nft-restore', 'ip']) {
      fs.writeFileSync(join(cwd, program), `#!/bin/sh\necho "$$" >> ${marker}\nexit 1\n`, { mode: 0o755 });
    }
    const add = addThroughShim(t, shim, root, { PATH: `.::cwd:${NODE_PATH}` }, cwd);
    t.is(add.status, 0, `${add.stdout}\n${add.stderr}`);
    t.regex(add.rules, /15001/);
    t.false(fs.existsSync(marker), 'a program from the working directory ran');
  });
}

test.serial('shim environment (installed): the engine sees only CNI_*, MESH_CNI_* and the absolute entries of PATH', async (t) => {
  requireKernelTools(t);
  const root = testTempDir(t, 'shim-env');
  const shim = await shimFor(t, 'installed', root);
  const seen = join(root, 'env.json');
  const probe = join(root, 'probe.js');
  fs.writeFileSync(probe, `require('fs').writeFileSync(${JSON.stringify(seen)}, JSON.stringify(process.env));\n`);
  probeInstalledEngine(join(root, 'opt/cni/bin'), probe);
  const add = addThroughShim(t, shim, root, {
    PATH: `::relative/bin:/usr/sbin:.:${NODE_PATH}`,
    HOME: '/root',
    NODE_PATH: root,
    NODE_EXTRA_CA_CERTS: join(root, 'ca.pem'),
    NODE_TLS_REJECT_UNAUTHORIZED: '0',
    OPENSSL_CONF: join(root, 'openssl.cnf'),
    LD_LIBRARY_PATH: root,
    UV_THREADPOOL_SIZE: '1',
    MESH_CNI_LOG_FILE: join(root, 'early.log'),
  });
  t.is(add.status, 0, `${add.stdout}\n${add.stderr}`);
  const env = JSON.parse(fs.readFileSync(seen, 'utf8')) as Record<string, string>;
  t.deepEqual(Object.keys(env).filter((k) => !k.startsWith('CNI_') && !k.startsWith('MESH_CNI_') && k !== 'PATH'), []);
  t.is(env.PATH, `/usr/sbin:${NODE_PATH}`);
  t.is(env.CNI_COMMAND, 'ADD');
  t.is(env.CNI_ARGS, POD_ARGS);
  t.is(env.MESH_CNI_LOG_FILE, join(root, 'early.log'));
});

test.serial('shim environment (installed): with no absolute PATH entry at all, the engine gets the usual system directories', async (t) => {
  requireKernelTools(t);
  const root = testTempDir(t, 'shim-env');
  const shim = await shimFor(t, 'installed', root);
  const seen = join(root, 'env.json');
  const probe = join(root, 'probe.js');
  fs.writeFileSync(probe, `require('fs').writeFileSync(${JSON.stringify(seen)}, JSON.stringify(process.env));\n`);
  probeInstalledEngine(join(root, 'opt/cni/bin'), probe);
  const add = addThroughShim(t, shim, root, { PATH: '.:bin' });
  t.is(add.status, 0, `${add.stdout}\n${add.stderr}`);
  t.is((JSON.parse(fs.readFileSync(seen, 'utf8')) as Record<string, string>).PATH, NODE_PATH);
});
