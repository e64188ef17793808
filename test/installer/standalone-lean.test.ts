/**
 * What keeps the standalone ADD near a bare `node -e 0`. Its V8 code cache (scripts/build-engine.js) is made by
 * the node shipped as runtime/node after a warm-up run of the ADD path (src/standalone/warm-up.ts), so that it holds
 * the functions a standalone ADD calls and not only the bundle's top level; that runtime accepts it; the
 * bundle, loaded as a library the way the build trains it, starts no request. And an ADD through the installed
 * shim programs a real netns without loading node's stream stack (net, stream, tty, assert): the ffi packages'
 * debug and assert are replaced in the bundle, and programs are waited for in poll(2) (src/netns/spawn.ts).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { install, pluginEntry, uninstall } from '../../src/installer';
import { createNetns, inNetns, netnsPath } from '../support/netns';
import { probeInstalledEngine, standaloneAddEnv, standaloneNetconf } from '../support/shim';
import { REPO_ROOT } from '../support/paths';
import { requireKernelTools } from '../support/require';
import { testTempDir } from '../support/tmp';
import { INJECTED, POD_ARGS } from '../cni/helpers';

const ENGINE = join(REPO_ROOT, 'build', 'engine');
const RUNTIME = join(ENGINE, 'runtime');

test.before(() => {
  if (!existsSync(join(ENGINE, 'engine.cache'))) throw new Error(`${ENGINE}/engine.cache is missing: npm run build runs scripts/build-engine.js`);
});

/** node -e `script` args... on the shipped runtime, started as the shim starts it (its own loader and libraries). */
function onRuntime(script: string, args: string[], input = '') {
  return spawnSync(join(RUNTIME, 'ld.so'), ['--library-path', join(RUNTIME, 'lib'), join(RUNTIME, 'node'), '-e', script, ...args], {
    cwd: '/',
    input,
    encoding: 'utf8',
    timeout: 60_000,
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
  });
}

const COMPILE_WITH_CACHE = `
const fs = require('node:fs'), vm = require('node:vm'), Module = require('node:module');
const [bundle, cache] = process.argv.slice(1);
const script = new vm.Script(Module.wrap(fs.readFileSync(bundle, 'utf8')), { filename: bundle, cachedData: fs.readFileSync(cache) });
process.stdout.write(script.cachedDataRejected ? 'rejected' : 'accepted');
`;

test('the shipped runtime accepts the engine code cache for the bundle', (t) => {
  const r = onRuntime(COMPILE_WITH_CACHE, [join(ENGINE, 'engine.js'), join(ENGINE, 'engine.cache')]);
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, 'accepted');
});

test('the code cache holds the functions a standalone ADD calls, not only the bundle top level', (t) => {
  // A cache made right after compiling holds the top level alone: V8 creates an inner function's data only when
  // its enclosing function is compiled, so these names are in the cache only if the warm-up compiled them.
  const cache = readFileSync(join(ENGINE, 'engine.cache')).toString('latin1');
  const addPath = ['runCni', 'parseRequest', 'decideMeshing', 'redirectConfigFromAnnotations', 'buildPlan', 'renderRestore', 'withNetnsLock', 'loadLibc', 'startSpawn', 'collectBlocking', 'writeRequestLog'];
  t.deepEqual(
    addPath.filter((name) => !cache.includes(name)),
    [],
    'every function of the ADD path is in the cache',
  );
});

const LOAD_AS_LIBRARY = `
const fs = require('node:fs'), path = require('node:path'), vm = require('node:vm'), Module = require('node:module');
const [bundle] = process.argv.slice(1);
const script = new vm.Script(Module.wrap(fs.readFileSync(bundle, 'utf8')), { filename: bundle });
const library = { exports: {} };
script.runInThisContext()(library.exports, Module.createRequire(bundle), library, bundle, path.dirname(bundle));
setTimeout(() => process.stdout.write('library: ' + typeof library.exports.warmUpForCodeCache), 200);
`;

test('the bundle loaded as a library (as the build trains it) reads no request and answers nothing', (t) => {
  // With a VERSION request on stdin, an engine that ran its main would answer it and exit before the timer.
  const r = onRuntime(LOAD_AS_LIBRARY, [join(ENGINE, 'engine.js')], '{"cniVersion":"1.0.0"}');
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, 'library: function');
});

test('stack traces of the installed engine name mesh-cni.d/engine.js, not the build temp dir the cache was made in', (t) => {
  // The loader itself, required (not run as the program, so no request starts), compiling with the cache.
  const script = `require(process.argv[1]).warmUpForCodeCache('/nonexistent/mesh-cni-warm-up').catch((e) => process.stdout.write(e.stack))`;
  const r = onRuntime(script, [join(ENGINE, 'mesh-cni.js')]);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /at (?:Object\.)?warmUpForCodeCache \(mesh-cni\.d\/engine\.js:\d+:\d+\)/);
  t.notRegex(r.stdout, /engine\.tmp-/);
});

test('the warm-up runs the ADD path inside its own directory: its "netns", a UTS namespace file, is locked and then refused by every netns entry, the record and log stay there', async (t) => {
  const dir = testTempDir(t, 'warm-up');
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(join(REPO_ROOT, 'dist/src/standalone/warm-up.js'))}).warmUpForCodeCache(process.argv[1])`, dir], {
    cwd: dir,
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.is(r.status, 0, r.stderr);
  const lines = readFileSync(join(dir, 'mesh-cni.log'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { command: string; error?: { code: number; msg: string }; decision?: string });
  const adds = lines.filter((l) => l.command === 'ADD');
  t.is(adds.length, 2);
  // The restore and then the rollback's save both refused to enter it (setns(CLONE_NEWNET) of a UTS namespace).
  t.is(adds[0]!.error?.code, 100);
  t.regex(adds[0]!.error?.msg ?? '', /\/proc\/self\/ns\/uts is not a network namespace; removing the rules again failed too \(.*\/proc\/self\/ns\/uts is not a network namespace\)/);
  t.is(adds[1]!.decision, 'meshed');
  t.deepEqual(readdirSync(join(dir, 'state', 'attachments')), ['warm-up_eth0.json']);
  t.deepEqual(readdirSync(dir).sort(), ['mesh-cni.log', 'state']);
});

test.serial('a standalone ADD through the installed shim programs a real netns without node:net, stream, tty or assert', async (t) => {
  requireKernelTools(t);
  const root = testTempDir(t, 'standalone-lean');
  const options = {
    cniBinDir: join(root, 'opt/cni/bin'),
    cniConfDir: join(root, 'etc/cni/net.d'),
    shimPath: join(REPO_ROOT, 'build', 'mesh-cni'),
    enginePath: ENGINE,
    pluginConfig: pluginEntry({ backend: 'iptables' }),
    standaloneConf: true,
    stateDir: join(root, 'var/run/mesh-cni'),
  };
  await install(options);
  t.teardown(() => uninstall(options).then(() => undefined));
  const netns = createNetns(t, 'lean');
  const loaded = join(root, 'builtins.json');
  const probe = join(root, 'probe.js');
  writeFileSync(probe, `process.on('exit', () => require('fs').writeFileSync(${JSON.stringify(loaded)}, JSON.stringify(process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)))));\n`);
  probeInstalledEngine(options.cniBinDir, probe);
  const netconf = standaloneNetconf(root, 'iptables', INJECTED);
  const add = spawnSync(join(options.cniBinDir, 'mesh-cni'), [], {
    cwd: '/',
    input: JSON.stringify(netconf),
    encoding: 'utf8',
    timeout: 60_000,
    // stdout and stderr are pipes, as a runtime gives them (node:net is what a piped process.stderr would load).
    env: standaloneAddEnv({ containerId: 'lean-1', netns: netnsPath(netns), cniPath: options.cniBinDir, root, podArgs: POD_ARGS }),
  });
  t.is(add.status, 0, `${add.stdout}\n${add.stderr}`);
  t.regex(inNetns(netns, 'iptables-save', []), /15001/, 'the pod netns holds the redirect');
  const builtins = JSON.parse(readFileSync(loaded, 'utf8')) as string[];
  t.deepEqual(
    ['net', 'stream', 'tty', 'assert', 'child_process'].filter((m) => builtins.includes(m)),
    [],
    'none of node\'s stream stack was loaded',
  );
});
