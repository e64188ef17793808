/**
 * Fault: what the shim and the agent's socket must withstand. An environment too large to carry whole is an
 * error, never shortened; a socket served by anyone but root is never believed; a socket directory others
 * can write is refused by the agent; a stopped agent with a full backlog cannot hold the shim past its one
 * deadline.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { runCni } from '../../src/cni/dispatch';
import { serveCni } from '../../src/agent/shim-socket';
import { showRedirect } from '../../src/redirect/engine';
import { execShim } from '../support/shim';
import { testTempDir } from '../support/tmp';
import { requireKernelTools } from '../support/require';
import { createNetns, netnsPath } from '../support/netns';
import { INJECTED } from '../cni/helpers';

function conf(dir: string) {
  return { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables-nft', log_file: path.join(dir, 'cni.log'), state_dir: dir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED } };
}

function addEnv(netns: string, socket: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: 'shim1',
    CNI_NETNS: netns,
    CNI_IFNAME: 'eth0',
    CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart;K8S_POD_UID=u1',
    MESH_CNI_AGENT_SOCKET: socket,
    ...extra,
  };
}

async function waitFor(ok: () => boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > until) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A python helper process, killed (by its pid) when the test ends. */
function python(t: { teardown(fn: () => void): void }, script: string, args: string[]): ChildProcess {
  const child = spawn('python3', ['-c', script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return child;
}

const oversized: Array<[string, (base: Record<string, string>) => Record<string, string>]> = [
  ['a 70 kB CNI_ARGS', (base) => ({ ...base, CNI_ARGS: `${base.CNI_ARGS};X=${'x'.repeat(70 * 1024)}` })],
  ['CNI_ARGS after 64 other CNI_* variables', (base) => ({ ...Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`CNI_EXTRA_${i}`, 'v'])), ...base })],
];

for (const [what, grow] of oversized) {
  test.serial(`fault shim-env: ${what} is refused with 4, through the agent and standalone, never shortened`, async (t) => {
    requireKernelTools(t);
    const dir = testTempDir(t, 'shim-env');
    const socket = path.join(dir, 'agent.sock');
    const server = await serveCni(socket, (inv) => runCni(inv, { defaultLogFile: null }));
    t.teardown(() => server.close());
    const ns = createNetns(t, 'env');
    for (const via of ['agent', 'standalone']) {
      const env = grow(addEnv(netnsPath(ns), via === 'agent' ? socket : path.join(dir, 'none.sock')));
      const r = await execShim(env, conf(dir));
      t.is(r.code, 1, `${via}: ${r.stdout}`);
      t.is(r.json?.code, 4, `${via}: ${r.stdout}`);
      t.regex(r.json.msg, /CNI_\* environment is larger/);
    }
    t.is((await showRedirect({ netns: netnsPath(ns), backend: 'iptables-nft' })).rules.length, 0);
    t.log(`fault shim-env (${what}): 2 trials (agent, standalone), code 4 both, 0 passed as not-a-kubernetes-pod`);
  });
}

// Binds, becomes nobody, then listens: SO_PEERCRED reports the listener's credentials as of listen().
const IMPOSTOR = `
import os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777)
os.setgid(65534); os.setuid(65534)
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    out = b'{"cniVersion":"1.0.0","impostor":true}'
    body = struct.pack(">I", 0) + struct.pack(">I", len(out)) + out + struct.pack(">I", 0)
    try:
        c.sendall(b"MCR1" + struct.pack(">I", len(body)) + body)
    except OSError:
        pass
    print("answered", flush=True)
    c.close()
`;

test.serial('fault shim-peer: a socket served by a non-root process is never believed; the shim programs the pod standalone', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'shim-peer');
  fs.chmodSync(dir, 0o755);
  const socket = path.join(dir, 'agent.sock');
  const impostor = python(t, IMPOSTOR, [socket]);
  let said = '';
  impostor.stdout!.on('data', (d: Buffer) => (said += d.toString()));
  await waitFor(() => said.includes('listening'), 10_000, 'the impostor listens');
  const ns = createNetns(t, 'peer');
  const r = await execShim(addEnv(netnsPath(ns), socket, { MESH_CNI_LOG_FILE: path.join(dir, 'cni.log') }), conf(dir));
  t.is(r.code, 0, r.stdout + r.stderr);
  t.notRegex(r.stdout, /impostor/);
  t.regex(r.stderr, /not served by root/);
  t.true((await showRedirect({ netns: netnsPath(ns), backend: 'iptables-nft' })).rules.length > 0, 'the pod was programmed standalone');
  t.log('fault shim-peer: 1 trial, impostor answer ignored, pod programmed standalone');
});

test.serial('fault socket-dir: the agent refuses a socket directory others can write or it does not own', async (t) => {
  const dir = testTempDir(t, 'sockdir');
  const open = path.join(dir, 'open');
  fs.mkdirSync(open);
  fs.chmodSync(open, 0o777);
  await t.throwsAsync(serveCni(path.join(open, 'agent.sock'), async () => ({ exitCode: 0, stdout: '', stderr: '' })), { message: /writable by others/ });
  const foreign = path.join(dir, 'foreign');
  fs.mkdirSync(foreign, { mode: 0o755 });
  fs.chownSync(foreign, 65534, 65534);
  await t.throwsAsync(serveCni(path.join(foreign, 'agent.sock'), async () => ({ exitCode: 0, stdout: '', stderr: '' })), { message: /owned by uid 65534/ });
  const link = path.join(dir, 'link');
  fs.symlinkSync(open, link);
  await t.throwsAsync(serveCni(path.join(link, 'agent.sock'), async () => ({ exitCode: 0, stdout: '', stderr: '' })), { message: /not a directory/ });
  t.false(fs.existsSync(path.join(open, 'agent.sock')));
});

// A listener that never accepts, its backlog filled by its own connections: what a SIGSTOPped agent under load looks like.
const STUCK = `
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(0)
held = []
for i in range(8):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.setblocking(False)
    try:
        c.connect(sys.argv[1])
    except OSError:
        pass
    held.append(c)
print("full", flush=True)
time.sleep(120)
`;

test.serial('fault shim-connect: a stopped agent with a full backlog gets 11 within the shim deadline', async (t) => {
  const dir = testTempDir(t, 'shim-connect');
  const socket = path.join(dir, 'agent.sock');
  const stuck = python(t, STUCK, [socket]);
  let said = '';
  stuck.stdout!.on('data', (d: Buffer) => (said += d.toString()));
  await waitFor(() => said.includes('full'), 10_000, 'the backlog is full');
  const started = Date.now();
  const r = await execShim({ ...addEnv('/var/run/netns/none', socket), MESH_CNI_SHIM_TIMEOUT_MS: '1500' }, conf(dir), 15_000);
  const took = Date.now() - started;
  t.is(r.json?.code, 11, `rc ${r.code} after ${took} ms: ${r.stdout}`);
  t.true(took < 5000, `took ${took} ms for a 1500 ms deadline`);
  t.log(`fault shim-connect: 1 trial, code 11 after ${took} ms (deadline 1500 ms)`);
});
