/**
 * Fault: inputs that used to wedge or mislead the agent. A FIFO or a full disk as `log_file` must not stop
 * its event loop; a request whose shim gave up must not go on to program the netns; a connection that
 * drips its frame a byte at a time is closed at the frame deadline, and open connections are bounded.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { serveCni, encodeRequest } from '../../src/agent/shim-socket';
import { showRedirect } from '../../src/redirect/engine';
import { startAgentProcess, httpGet } from '../support/agent';
import { execShim } from '../support/shim';
import { testTempDir } from '../support/tmp';
import { requireKernelTools } from '../support/require';
import { createNetns, netnsPath } from '../support/netns';
import { INJECTED } from '../cni/helpers';

function conf(dir: string, logFile: string) {
  return { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables-nft', log_file: logFile, state_dir: dir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED } };
}

function addEnv(netns: string, socket: string, id: string): Record<string, string> {
  return { CNI_COMMAND: 'ADD', CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart', MESH_CNI_AGENT_SOCKET: socket };
}

async function agentIn(t: { teardown(fn: () => Promise<void> | void): void }, dir: string) {
  const socket = path.join(dir, 'agent.sock');
  const agent = await startAgentProcess(['--health-port', '0', '--health-host', '127.0.0.1', '--no-kubernetes', '--no-install', '--socket', socket, '--state-dir', dir], path.join(dir, 'agent.log'));
  t.teardown(() => agent.kill());
  return { agent, socket };
}

test.serial('fault log-wedge: a FIFO and a full disk as log_file leave the agent serving ADDs and healthy', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'log-wedge');
  const fifo = path.join(dir, 'cni.fifo');
  spawnSync('mkfifo', [fifo]);
  const full = path.join(dir, 'full');
  fs.mkdirSync(full);
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8k', 'tmpfs', full]).status !== 0) return t.fail('cannot mount a tmpfs');
  t.teardown(() => void spawnSync('umount', [full]));
  try {
    fs.writeFileSync(path.join(full, 'fill'), Buffer.alloc(64 * 1024));
  } catch {
    // ENOSPC: full, which is the point
  }
  const { agent, socket } = await agentIn(t, dir);
  let adds = 0;
  for (const [i, logFile] of [fifo, path.join(full, 'cni.log'), fifo, path.join(full, 'cni.log'), fifo].entries()) {
    const ns = createNetns(t, 'logw');
    const r = await execShim({ ...addEnv(netnsPath(ns), socket, `logw${i}`), MESH_CNI_SHIM_TIMEOUT_MS: '10000' }, conf(dir, logFile), 20_000);
    t.is(r.code, 0, `ADD ${i} (${logFile}): ${r.stdout}`);
    t.true((await showRedirect({ netns: netnsPath(ns), backend: 'iptables-nft' })).rules.length > 0);
    const started = Date.now();
    const health = await httpGet(agent.healthPort, '/healthz');
    t.is(health.status, 200);
    t.true(Date.now() - started < 2000, 'healthz answers at once');
    adds++;
  }
  t.log(`fault log-wedge: ${adds} ADDs with a FIFO or full-disk log_file, all rc 0, healthz 200 after each`);
});

test.serial('fault abandoned: an ADD whose shim gave up while the agent was stopped is not applied when it resumes', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'abandoned');
  const { agent, socket } = await agentIn(t, dir);
  const pid = agent.nodePid()!;
  const ns = createNetns(t, 'aband');
  process.kill(pid, 'SIGSTOP');
  let resumed = false;
  t.teardown(() => {
    if (!resumed) process.kill(pid, 'SIGCONT');
  });
  const r = await execShim({ ...addEnv(netnsPath(ns), socket, 'aband1'), MESH_CNI_SHIM_TIMEOUT_MS: '1000' }, conf(dir, path.join(dir, 'cni.log')), 10_000);
  t.is(r.json?.code, 11, r.stdout);
  process.kill(pid, 'SIGCONT');
  resumed = true;
  // Long enough for the resumed agent to read the request and, as it used to, program the netns.
  await new Promise((res) => setTimeout(res, 3000));
  t.is((await showRedirect({ netns: netnsPath(ns), backend: 'iptables-nft' })).rules.length, 0, 'nothing was applied for a request nobody waits for');
  t.is((await httpGet(agent.healthPort, '/healthz')).status, 200);
  t.log('fault abandoned: 1 trial, shim answered 11, 0 rules applied after the agent resumed');
});

test.serial('fault drip: frames dripped a byte at a time are closed at the frame deadline, and connections are bounded', async (t) => {
  const dir = testTempDir(t, 'drip');
  const socket = path.join(dir, 'agent.sock');
  const rejects: string[] = [];
  const server = await serveCni(socket, async () => ({ exitCode: 0, stdout: 'served', stderr: '' }), { frameDeadlineMs: 1000, maxConnections: 20, onReject: (r: string) => rejects.push(r) } as Parameters<typeof serveCni>[2]);
  t.teardown(() => server.close());
  const frame = encodeRequest({ env: { CNI_COMMAND: 'VERSION' }, stdin: Buffer.from('{}') });
  const clients: Array<{ socket: net.Socket; closedAt?: number }> = [];
  const started = Date.now();
  let maxOpen = 0;
  for (let i = 0; i < 50; i++) {
    const c = { socket: net.connect(socket) } as { socket: net.Socket; closedAt?: number };
    c.socket.on('error', () => undefined);
    c.socket.on('close', () => (c.closedAt = Date.now()));
    clients.push(c);
  }
  const drip = setInterval(() => {
    for (const c of clients) if (!c.closedAt && !c.socket.destroyed) c.socket.write(frame.subarray(0, 1));
    server.server.getConnections((_e, n) => (maxOpen = Math.max(maxOpen, n)));
  }, 200);
  t.teardown(() => clearInterval(drip));
  await new Promise((res) => setTimeout(res, 2500));
  clearInterval(drip);
  const open = clients.filter((c) => c.closedAt === undefined);
  for (const c of clients) c.socket.destroy();
  t.is(open.length, 0, `${open.length} dripping connections still open after 2.5 s (deadline 1 s)`);
  t.true(maxOpen <= 20, `${maxOpen} connections open at once (bound 20)`);
  t.true(rejects.filter((r) => r === 'frame-deadline').length > 0);
  // And a whole frame is still served.
  const answer = await new Promise<string>((resolve, reject) => {
    const s = net.connect(socket, () => s.write(frame));
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
  t.regex(answer, /served/);
  t.log(`fault drip: 50 dripping connections, all closed within ${Math.max(...clients.map((c) => (c.closedAt ?? 0) - started))} ms (deadline 1000), at most ${maxOpen} open (bound 20)`);
});
