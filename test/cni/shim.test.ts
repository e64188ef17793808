/**
 * The native shim run as a runtime runs it (env + stdin, exec), against the socket server in this process,
 * and with no agent (standalone fallback executing dist/src/standalone/main.js).
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileTempDir } from '../support/tmp';
import { runCni } from '../../src/cni/dispatch';
import { serveCni } from '../../src/agent/shim-socket';
import type { CniInvocation } from '../../src/cni/types';
import { env, INJECTED, logFile, netconf, unitDeps, withAnnotations } from './helpers';
import { execShim } from '../support/shim';

const root = join(__dirname, '..', '..', '..');
const dir = fileTempDir('shim');

test.before(() => {
  execFileSync(process.execPath, [join(root, 'scripts', 'build-native.js')], { stdio: 'pipe' });
  if (!existsSync(join(root, 'dist', 'src', 'standalone', 'main.js'))) throw new Error('dist/src/standalone/main.js missing: run tsc first');
});

/** The runtime's environment: PATH and the CNI_* variables; MESH_CNI_LOG_FILE keeps the standalone engine's
 * lines for unparsable netconfs out of /var/log. */
const runShim = (extraEnv: Record<string, string | undefined>, stdin: string | Buffer) => execShim({ MESH_CNI_LOG_FILE: logFile, ...extraEnv }, stdin);

test.serial('through the agent socket: ADD answers the handler’s stdout and exit code; only CNI_* env crosses', async (t) => {
  const socketPath = join(dir, 'agent-add.sock');
  const received: CniInvocation[] = [];
  const deps = unitDeps();
  const server = await serveCni(socketPath, async (invocation) => {
    received.push(invocation);
    return runCni(invocation, deps);
  });
  t.teardown(server.close);
  t.is(statSync(socketPath).mode & 0o777, 0o600);
  const prev = { cniVersion: '1.0.0', ips: [{ address: '10.1.0.2/24' }] };
  const r = await runShim({ ...env('ADD'), MESH_CNI_AGENT_SOCKET: socketPath, SECRET_THING: 'x' } as Record<string, string>, JSON.stringify(withAnnotations(INJECTED, { prevResult: prev })));
  t.is(r.code, 0, r.stdout);
  t.deepEqual(r.json, prev);
  t.is(deps.engine.calls.length, 1);
  t.deepEqual(Object.keys(received[0]!.env).sort(), ['CNI_ARGS', 'CNI_COMMAND', 'CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_NETNS', 'CNI_PATH']);
  t.regex(r.stderr, /"decision":"meshed"/, 'the handler’s stderr is relayed');
});

test.serial('through the agent socket: an error keeps its code and a non-zero exit', async (t) => {
  const socketPath = join(dir, 'agent-err.sock');
  const server = await serveCni(socketPath, (invocation) => runCni(invocation, unitDeps()));
  t.teardown(server.close);
  const r = await runShim({ ...env('ADD'), MESH_CNI_AGENT_SOCKET: socketPath } as Record<string, string>, JSON.stringify(netconf({ backend: 'ebpf' })));
  t.is(r.code, 1);
  t.is(r.json.code, 7);
});

test.serial('through the agent socket: oversized stdin is refused with code 5', async (t) => {
  const socketPath = join(dir, 'agent-big.sock');
  const server = await serveCni(socketPath, (invocation) => runCni(invocation, unitDeps()));
  t.teardown(server.close);
  const r = await runShim({ ...env('ADD'), MESH_CNI_AGENT_SOCKET: socketPath } as Record<string, string>, Buffer.alloc(3 * 1024 * 1024, 0x20));
  t.is(r.json?.code, 5, r.stdout);
});

test.serial('an agent that does not answer in time gives code 11', async (t) => {
  const socketPath = join(dir, 'agent-slow.sock');
  const server = await serveCni(socketPath, () => new Promise(() => undefined));
  t.teardown(server.close);
  const started = Date.now();
  const r = await runShim({ ...env('ADD'), MESH_CNI_AGENT_SOCKET: socketPath, MESH_CNI_SHIM_TIMEOUT_MS: '300' } as Record<string, string>, JSON.stringify(netconf()));
  t.is(r.code, 1);
  t.is(r.json.code, 11);
  t.true(Date.now() - started < 5000);
});

test.serial('no agent: VERSION is answered by the standalone engine', async (t) => {
  const r = await runShim({ CNI_COMMAND: 'VERSION', MESH_CNI_AGENT_SOCKET: join(dir, 'absent.sock') }, '{"cniVersion":"0.3.1"}');
  t.is(r.code, 0, r.stderr);
  t.deepEqual(r.json, { cniVersion: '0.3.1', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
});

test.serial('no agent: an error case keeps its documented code through the standalone engine', async (t) => {
  const r = await runShim({ ...env('ADD'), MESH_CNI_AGENT_SOCKET: join(dir, 'absent.sock') } as Record<string, string>, JSON.stringify(netconf({ unknown_field: 1 })));
  t.is(r.code, 1);
  t.is(r.json.code, 2);
  t.regex(r.json.msg as string, /unknown_field/);
});

test.serial('no agent: a stale socket file (connection refused) also falls back', async (t) => {
  const stale = join(dir, 'stale.sock');
  // A socket file nobody listens on, as left by an agent that was killed: bound, never listening.
  execFileSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', stale]);
  t.true(statSync(stale).isSocket());
  const r = await runShim({ CNI_COMMAND: 'VERSION', MESH_CNI_AGENT_SOCKET: stale }, '');
  t.is(r.code, 0, r.stdout);
  t.is(r.json.cniVersion, '1.1.0');
});

test.serial('no agent: a netns that does not exist gives code 3 standalone', async (t) => {
  const r = await runShim(
    { ...env('ADD', { CNI_NETNS: join(dir, 'no-such-netns') }), MESH_CNI_AGENT_SOCKET: join(dir, 'absent.sock') } as Record<string, string>,
    JSON.stringify(netconf()),
  );
  t.is(r.json.code, 3, r.stdout);
});
