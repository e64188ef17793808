/**
 * The installed plugin works on its own: `install` puts the shim and build/engine into a temp CNI bin dir,
 * and the shim executed from there -- no agent, cwd elsewhere, a runtime's minimal environment -- programs a
 * real test netns through <bin>/mesh-cni.d. A probe required first by the engine records every module it
 * loaded: all from the installed directory, none of the heavy packages, nothing from the checkout, and that
 * the runtime shipped in mesh-cni.d/runtime ran it. The last test masks every node binary of the host in a
 * private mount namespace: the fallback must work on a node that has no Node.js.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { install, pluginEntry, uninstall } from '../../src/installer';
import { createNetns, createPodPeer, EXTERNAL_V4, inNetns, netnsPath } from '../support/netns';
import { probeInstalledEngine, standaloneAddEnv, standaloneNetconf } from '../support/shim';
import { connect, listen } from '../support/traffic';
import { REPO_ROOT } from '../support/paths';
import { requireKernelTools, requireNft } from '../support/require';
import { testTempDir } from '../support/tmp';
import { INJECTED, POD_ARGS } from '../cni/helpers';
import { nftProgram } from '../../src/redirect/nftables/backend';

const ENGINE = join(REPO_ROOT, 'build', 'engine');
const HEAVY = ['@kubernetes/client-node', 'prom-client', 'yargs'];

test.before(() => {
  if (!existsSync(join(ENGINE, 'mesh-cni.js'))) throw new Error(`${ENGINE} is missing: npm run build runs scripts/build-engine.js`);
});

/** The shim and engine installed into a private node tree under `root`, as the agent installs them. */
function installOptions(root: string, backend: 'iptables' | 'nftables') {
  return {
    cniBinDir: join(root, 'opt/cni/bin'),
    cniConfDir: join(root, 'etc/cni/net.d'),
    shimPath: join(REPO_ROOT, 'build', 'mesh-cni'),
    enginePath: ENGINE,
    pluginConfig: pluginEntry({ backend }),
    standaloneConf: true,
    stateDir: join(root, 'var/run/mesh-cni'),
  };
}

for (const backend of ['iptables', 'nftables'] as const) {
  test.serial(`installed shim, no agent: ADD (${backend}) into a real netns from a temp bin dir, then DEL`, async (t) => {
    requireKernelTools(t);
    if (backend === 'nftables') requireNft(t);
    const root = testTempDir(t, 'standalone');
    const options = installOptions(root, backend);
    const binDir = options.cniBinDir;
    await install(options);
    t.true(existsSync(join(binDir, 'mesh-cni.d', 'mesh-cni.js')));

    const netns = createNetns(t, 'standalone');
    const loaded = join(root, 'loaded.json');
    const probe = join(root, 'probe.js');
    writeFileSync(probe, exitProbe(loaded));
    probeInstalledEngine(binDir, probe);
    const netconf = {
      cniVersion: '1.0.0',
      name: 'k8s-pod-network',
      type: 'mesh-cni',
      backend,
      log_file: join(root, 'mesh-cni.log'),
      state_dir: join(root, 'state'),
      runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED },
    };
    const invoke = (command: string, extraEnv: Record<string, string> = {}) =>
      spawnSync(join(binDir, 'mesh-cni'), [], {
        cwd: '/',
        input: JSON.stringify(netconf),
        encoding: 'utf8',
        timeout: 60_000,
        // What containerd passes: PATH and the CNI_* variables, nothing of ours but the absent agent socket.
        env: {
          PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
          CNI_COMMAND: command,
          CNI_CONTAINERID: 'standalone-1',
          CNI_NETNS: netnsPath(netns),
          CNI_IFNAME: 'eth0',
          CNI_PATH: binDir,
          CNI_ARGS: POD_ARGS,
          MESH_CNI_AGENT_SOCKET: join(root, 'no-agent.sock'),
          ...extraEnv,
        },
      });

    const add = invoke('ADD');
    t.is(add.status, 0, `${add.stdout}\n${add.stderr}`);
    t.is(JSON.parse(add.stdout).cniVersion, '1.0.0');
    const rules = backend === 'nftables' ? inNetns(netns, nftProgram(), ['list', 'ruleset']) : inNetns(netns, 'iptables-save', []);
    t.regex(rules, /15001/, 'outbound redirect to the sidecar is in the pod netns');

    const { modules, execPath } = JSON.parse(readFileSync(loaded, 'utf8')) as { modules: string[]; execPath: string };
    t.regex(execPath, new RegExp(`^${binDir}/\\.mesh-cni\\.d-[0-9a-f]+-[0-9a-f]+/runtime/ld\\.so$`), 'the shipped runtime ran the engine, not the host node');
    const outside = modules.filter((m) => m !== probe && !m.startsWith(`${binDir}/`));
    t.true(modules.some((m) => m.endsWith('/mesh-cni.js')), 'the bundled engine ran');
    t.deepEqual(outside, [], 'every module came from the installed engine directory');
    t.true(modules.some((m) => m.endsWith('/addons/koffi.node')), 'the installed ffi addon entered the netns');
    t.true(mappedAddons(loaded).some((f) => f.endsWith('/addons/koffi.node')), 'the ffi addon was mapped into the process that programmed the netns');
    for (const heavy of HEAVY) t.false(modules.some((m) => m.includes(`/node_modules/${heavy}/`)), `${heavy} must not load`);

    const del = invoke('DEL');
    t.is(del.status, 0, `${del.stdout}\n${del.stderr}`);
    const after = backend === 'nftables' ? inNetns(netns, nftProgram(), ['list', 'ruleset']) : inNetns(netns, 'iptables-save', []);
    t.notRegex(after, /15001/);
    await uninstall(options);
  });
}

/**
 * A script preloaded with --require that, at exit, records what the process loaded: require.cache, the
 * executable, and every shared object the kernel has mapped into it (/proc/self/maps), which is where a
 * native addon shows however it was loaded, and node's own modules the process loaded (process.moduleLoadList).
 */
function exitProbe(out: string): string {
  return `process.on('exit', () => { const fs = require('fs'); const maps = [...new Set(fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').map((l) => l.split(/\\s+/)[5]).filter((f) => f && f.endsWith('.node')))]; fs.writeFileSync(${JSON.stringify(out)}, JSON.stringify({ modules: Object.keys(require.cache), execPath: process.execPath, maps, builtins: process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)) })); });\n`;
}

function mappedAddons(loaded: string): string[] {
  return (JSON.parse(readFileSync(loaded, 'utf8')) as { maps: string[] }).maps;
}

test.serial('installed shim, no agent: VERSION answers on the shipped runtime without the ffi addon or node:child_process/net/tty', async (t) => {
  const root = testTempDir(t, 'standalone-version');
  const options = installOptions(root, 'iptables');
  await install(options);
  const loaded = join(root, 'loaded.json');
  const probe = join(root, 'probe.js');
  writeFileSync(probe, exitProbe(loaded));
  probeInstalledEngine(options.cniBinDir, probe);
  const version = spawnSync(join(options.cniBinDir, 'mesh-cni'), [], {
    cwd: '/',
    input: JSON.stringify({ cniVersion: '1.0.0' }),
    encoding: 'utf8',
    timeout: 60_000,
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CNI_COMMAND: 'VERSION', MESH_CNI_AGENT_SOCKET: join(root, 'no-agent.sock') },
  });
  t.is(version.status, 0, `${version.stdout}\n${version.stderr}`);
  t.true((JSON.parse(version.stdout) as { supportedVersions: string[] }).supportedVersions.includes('1.1.0'));
  const { execPath, maps, builtins } = JSON.parse(readFileSync(loaded, 'utf8')) as { execPath: string; maps: string[]; builtins: string[] };
  t.regex(execPath, /\/runtime\/ld\.so$/, 'the shipped runtime answered');
  t.deepEqual(maps, [], 'no native addon is mapped for VERSION');
  // child_process, net and tty each load the stream modules: a VERSION needs none of them.
  for (const heavy of ['child_process', 'net', 'tty', 'stream']) t.false(builtins.includes(heavy), `node:${heavy} must not load for VERSION`);
  await uninstall(options);
});

/** Every path `node` runs from on this machine, and the one running the tests. */
function hostNodes(): string[] {
  const found = spawnSync('which', ['-a', 'node'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  return [...new Set([...found, process.execPath].map((p) => realpathSync(p)))];
}

test.serial('a host with no Node.js: the installed shim runs the engine on the runtime shipped in mesh-cni.d, and real TCP lands on 15001', async (t) => {
  requireKernelTools(t);
  const root = testTempDir(t, 'no-node');
  const options = installOptions(root, 'iptables');
  const binDir = options.cniBinDir;
  await install(options);
  t.teardown(() => uninstall(options).then(() => undefined));
  const pair = createPodPeer(t, { ipv6: false });
  const empty = join(root, 'not-node');
  writeFileSync(empty, '', { mode: 0o644 });
  const netconf = standaloneNetconf(root, 'iptables', INJECTED);
  // A private mount namespace in which every node binary of this host is an empty, non-executable file:
  // `node` there fails (checked, exit 98), so only the shipped runtime can run the engine.
  const script = 'e=$1; s=$2; shift 2; for n; do mount --bind "$e" "$n" || exit 99; done; if node -e 0 2>/dev/null; then exit 98; fi; exec "$s"';
  const started = Date.now();
  const add = spawnSync('unshare', ['--mount', '--propagation', 'private', '--', '/bin/sh', '-c', script, 'sh', empty, join(binDir, 'mesh-cni'), ...hostNodes()], {
    cwd: '/',
    input: JSON.stringify(netconf),
    encoding: 'utf8',
    timeout: 60_000,
    env: standaloneAddEnv({ containerId: 'no-node-1', netns: pair.podPath, cniPath: binDir, root, podArgs: POD_ARGS }),
  });
  t.log(`standalone ADD on the shipped runtime, node masked: ${Date.now() - started} ms (mount namespace setup included)`);
  t.not(add.status, 98, 'node was still runnable inside the test namespace');
  t.is(add.status, 0, `${add.stdout}\n${add.stderr}`);
  t.regex(inNetns(pair.pod, 'iptables-save', []), /15001/);
  await listen(t, pair.podPath, 'proxy', ['15001']);
  t.is(connect(pair.podPath, EXTERNAL_V4[0]!.host, 80).listener, 'proxy', 'outbound TCP from the pod lands on the sidecar port');
});
