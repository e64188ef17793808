/**
 * The agent's socket server and HTTP endpoints, without Kubernetes: concurrency, bounded and malformed
 * frames, root-only peers, real ADDs into a pod netns through the socket, and /metrics counting it all.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent';
import { callCniSocket } from '../../src/agent/shim-socket';
import { createNetns, createPodPeer, netnsPath, tryInNetns } from '../support/netns';
import { connect, listen } from '../support/traffic';
import { requireKernelTools } from '../support/require';
import { INJECTED, POD_ARGS, withAnnotations } from '../cni/helpers';
import { metricValue } from '../support/agent';

async function agentFor(t: ExecutionContext): Promise<{ agent: Agent; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-cni-agent-'));
  fs.chmodSync(dir, 0o755);
  const agent = await startAgent({ socketPath: path.join(dir, 'agent.sock'), stateDir: dir, healthPort: 0, healthHost: '127.0.0.1', kubernetes: false, log: () => undefined });
  t.teardown(async () => {
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { agent, dir };
}

const version = (cniVersion = '1.0.0') => ({ env: { CNI_COMMAND: 'VERSION' }, stdin: Buffer.from(JSON.stringify({ cniVersion })) });

async function scrape(agent: Agent, route = '/metrics'): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${agent.healthPort}${route}`);
  return { status: res.status, body: await res.text() };
}


test.serial('100 concurrent requests are all answered', async (t) => {
  const { agent } = await agentFor(t);
  const answers = await Promise.all(Array.from({ length: 100 }, () => callCniSocket(agent.socketPath, version(), 10_000)));
  t.is(answers.length, 100);
  for (const a of answers) {
    t.is(a.exitCode, 0);
    t.deepEqual(JSON.parse(a.stdout).supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
  }
  t.is(metricValue((await scrape(agent)).body, 'mesh_cni_requests_total', { command: 'VERSION', result: 'ok' }), 100);
});

function rawExchange(socketPath: string, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath, () => s.write(bytes));
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('close', () => resolve(got));
    s.on('error', () => resolve(got));
    setTimeout(() => s.destroy(), 3000);
  });
}

test.serial('oversized and malformed frames are rejected without crashing the agent', async (t) => {
  const { agent } = await agentFor(t);
  const huge = Buffer.alloc(8);
  huge.write('MCQ1', 'latin1');
  huge.writeUInt32BE(512 * 1024 * 1024, 4);
  t.is(await rawExchange(agent.socketPath, huge), '', 'a frame announcing 512 MiB is cut off');
  t.is(await rawExchange(agent.socketPath, Buffer.from('GET / HTTP/1.1\r\n\r\n')), '', 'bad magic is cut off');
  const truncated = Buffer.alloc(12);
  truncated.write('MCQ1', 'latin1');
  truncated.writeUInt32BE(4, 4);
  truncated.writeUInt32BE(1000, 8);
  t.is(await rawExchange(agent.socketPath, truncated), '', 'an env count without entries is cut off');
  const still = await callCniSocket(agent.socketPath, version(), 5000);
  t.is(still.exitCode, 0, 'the agent still answers');
  const metrics = (await scrape(agent)).body;
  t.true(metricValue(metrics, 'mesh_cni_socket_rejections_total', { reason: 'bad-frame' }) >= 3);
});

test.serial('a peer that is not root is refused, even if the socket mode were opened up', async (t) => {
  const { agent, dir } = await agentFor(t);
  t.is(fs.statSync(agent.socketPath).mode & 0o777, 0o600);
  const client = path.join(dir, 'client.js');
  fs.writeFileSync(
    client,
    `const s=require('net').connect(process.argv[2]);s.on('connect',()=>{s.write(Buffer.from('MCQ1'));});s.on('data',()=>{console.log('answered');});s.on('close',()=>{if(!s.failed)console.log('closed')});s.on('error',e=>{s.failed=true;console.log(e.code)});`,
  );
  fs.chmodSync(client, 0o644);
  // Asynchronously: the agent runs in this process and must keep accepting while the client waits.
  const asProxy = () =>
    new Promise<string>((resolve) => {
      const child = spawn('setpriv', ['--reuid=1337', '--regid=1337', '--clear-groups', process.execPath, client, agent.socketPath]);
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.on('close', () => {
        clearTimeout(timer);
        resolve(out.trim());
      });
    });
  t.is(await asProxy(), 'EACCES', 'the 0600 socket keeps other users out');
  fs.chmodSync(agent.socketPath, 0o666);
  t.regex(await asProxy(), /^(closed|ECONNRESET|EPIPE)$/, 'SO_PEERCRED refuses the connection anyway: no answer');
  t.is(metricValue((await scrape(agent)).body, 'mesh_cni_socket_rejections_total', { reason: 'non-root-peer' }), 1);
});

test.serial('/healthz and /readyz answer; unknown paths are 404', async (t) => {
  const { agent } = await agentFor(t);
  t.is((await scrape(agent, '/healthz')).status, 200);
  const ready = await scrape(agent, '/readyz');
  t.is(ready.status, 200);
  t.deepEqual(JSON.parse(ready.body), { ready: true, reasons: [] });
  t.is((await scrape(agent, '/nope')).status, 404);
});

/**
 * A pod netns beside a peer, listeners on 15001 (pod) and 80 (peer), and the netconf and environment of a
 * meshed pod's CNI call through the agent, for `command`.
 */
async function meshedPod(t: ExecutionContext) {
  const pair = createPodPeer(t);
  await listen(t, pair.pod, 'pod', ['15001']);
  await listen(t, pair.peer, 'peer', ['80']);
  const stdin = Buffer.from(JSON.stringify(withAnnotations(INJECTED, { backend: 'iptables-nft', log_file: '/dev/null' })));
  const env = (command: string) => ({ CNI_COMMAND: command, CNI_CONTAINERID: 'c1', CNI_NETNS: pair.podPath, CNI_IFNAME: 'eth0', CNI_ARGS: POD_ARGS });
  return { pair, stdin, env };
}

test.serial('ADD and DEL through the agent program a real pod netns, and /metrics counts them', async (t) => {
  requireKernelTools(t);
  const { agent } = await agentFor(t);
  const { pair, stdin, env } = await meshedPod(t);

  const added = await callCniSocket(agent.socketPath, { env: env('ADD'), stdin }, 30_000);
  t.is(added.exitCode, 0, added.stdout);
  t.is(connect(pair.pod, pair.peerIp4, 80).port, 15001);
  const checked = await callCniSocket(agent.socketPath, { env: env('CHECK'), stdin }, 30_000);
  t.is(checked.exitCode, 0, checked.stdout);
  const deleted = await callCniSocket(agent.socketPath, { env: env('DEL'), stdin }, 30_000);
  t.is(deleted.exitCode, 0, deleted.stdout);
  t.notRegex(tryInNetns(pair.pod, 'iptables-nft-save', []).stdout, /ISTIO_/);

  const metrics = (await scrape(agent)).body;
  t.is(metricValue(metrics, 'mesh_cni_requests_total', { command: 'ADD', result: 'ok' }), 1);
  t.is(metricValue(metrics, 'mesh_cni_requests_total', { command: 'CHECK', result: 'ok' }), 1);
  t.is(metricValue(metrics, 'mesh_cni_requests_total', { command: 'DEL', result: 'ok' }), 1);
  t.true(metricValue(metrics, 'mesh_cni_rules_programmed_total', { backend: 'iptables-nft' }) > 0);
  t.is(metricValue(metrics, 'mesh_cni_add_duration_seconds_count', { decision: 'meshed' }), 1);
});

/** `name_count` per `phase` label, from Prometheus text. */
function phaseCounts(metrics: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const m of metrics.matchAll(/^mesh_cni_add_phase_seconds_count\{phase="([a-z]+)",backend="[a-z-]+"\} (\d+)$/gm)) counts[m[1]!] = (counts[m[1]!] ?? 0) + Number(m[2]);
  return counts;
}

test.serial("a meshed ADD's time is on /metrics by phase, every phase once; a skipped ADD has no plan or apply", async (t) => {
  requireKernelTools(t);
  const { agent } = await agentFor(t);
  const { pair, stdin, env: envFor } = await meshedPod(t);
  const env = envFor('ADD');
  const added = await callCniSocket(agent.socketPath, { env, stdin }, 30_000);
  t.is(added.exitCode, 0, added.stdout);
  t.is(connect(pair.pod, pair.peerIp4, 80).port, 15001, 'the ADD whose phases are counted really programmed the netns');

  const metrics = (await scrape(agent)).body;
  t.deepEqual(phaseCounts(metrics), { parse: 1, decide: 1, plan: 1, render: 1, apply: 1, record: 1, log: 1 });
  t.is(metricValue(metrics, 'mesh_cni_add_phase_seconds_count', { phase: 'apply', backend: 'iptables-nft' }), 1);
  const sum = (phase: string) => metricValue(metrics, 'mesh_cni_add_phase_seconds_sum', { phase });
  const phases = ['parse', 'decide', 'plan', 'render', 'apply', 'record', 'log'].map(sum);
  for (const s of phases) t.true(s > 0);
  // The laps partition the request: together they are the ADD's duration, and apply (a process) is most of it.
  // The duration is whole milliseconds (Date.now), the laps are hrtime: up to 1 ms apart either way.
  const total = metricValue(metrics, 'mesh_cni_add_duration_seconds_sum', { decision: 'meshed' });
  const together = phases.reduce((a, b) => a + b, 0);
  t.true(together <= total * 1.01 + 0.0015 && together >= total * 0.9 - 0.001, `phases ${together} s of an ADD of ${total} s`);
  t.true(sum('apply') > sum('render') && sum('apply') > sum('plan'), 'the restore process outweighs planning and rendering');

  // Not meshed (no sidecar): decided, logged, nothing planned or applied.
  const plain = Buffer.from(JSON.stringify(withAnnotations({}, { backend: 'iptables-nft', log_file: '/dev/null' })));
  const skipped = await callCniSocket(agent.socketPath, { env: { ...env, CNI_CONTAINERID: 'c2' }, stdin: plain }, 30_000);
  t.is(skipped.exitCode, 0, skipped.stdout);
  t.deepEqual(phaseCounts((await scrape(agent)).body), { parse: 2, decide: 2, plan: 1, render: 1, apply: 1, record: 1, log: 2 });
});

test.serial('the agent records an attachment after answering; a DEL right behind the ADD still leaves no record', async (t) => {
  requireKernelTools(t);
  const { agent, dir } = await agentFor(t);
  const state = path.join(dir, 'records');
  const stdin = Buffer.from(JSON.stringify(withAnnotations(INJECTED, { backend: 'iptables-nft', log_file: '/dev/null', state_dir: state })));
  const records = () => (fs.existsSync(path.join(state, 'attachments')) ? fs.readdirSync(path.join(state, 'attachments')).filter((f) => f.endsWith('.json')) : []);
  const ns = netnsPath(createNetns(t, 'rec'));
  const env = (command: string, id: string) => ({ CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: ns, CNI_IFNAME: 'eth0', CNI_ARGS: POD_ARGS });
  for (let i = 0; i < 10; i++) {
    const added = await callCniSocket(agent.socketPath, { env: env('ADD', `rec-${i}`), stdin }, 30_000);
    t.is(added.exitCode, 0, added.stdout);
    const deleted = await callCniSocket(agent.socketPath, { env: env('DEL', `rec-${i}`), stdin }, 30_000);
    t.is(deleted.exitCode, 0, deleted.stdout);
  }
  const kept = await callCniSocket(agent.socketPath, { env: env('ADD', 'rec-kept'), stdin }, 30_000);
  t.is(kept.exitCode, 0, kept.stdout);
  for (let i = 0; i < 100 && records().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(records(), ['rec-kept_eth0.json'], 'only the attachment never deleted has a record');
  t.is(JSON.parse(fs.readFileSync(path.join(state, 'attachments', 'rec-kept_eth0.json'), 'utf8')).netns, ns);
});

test.serial("the agent's remembered configs and plans follow the annotations: pods alternating between two configs each get their own", async (t) => {
  requireKernelTools(t);
  const { agent } = await agentFor(t);
  const excluding80 = { ...INJECTED, 'traffic.sidecar.istio.io/excludeOutboundPorts': '80' };
  const cases = [INJECTED, excluding80, INJECTED, excluding80];
  for (const [i, annotations] of cases.entries()) {
    const pair = createPodPeer(t);
    await listen(t, pair.pod, 'pod', ['15001']);
    await listen(t, pair.peer, 'peer', ['80', '81']);
    const stdin = Buffer.from(JSON.stringify(withAnnotations(annotations, { backend: 'iptables-nft', log_file: '/dev/null' })));
    const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: `cfg-${i}`, CNI_NETNS: pair.podPath, CNI_IFNAME: 'eth0', CNI_ARGS: POD_ARGS };
    const added = await callCniSocket(agent.socketPath, { env, stdin }, 30_000);
    t.is(added.exitCode, 0, added.stdout);
    const excluded = annotations === excluding80;
    t.is(connect(pair.pod, pair.peerIp4, 80).port, excluded ? 80 : 15001, `pod ${i}: port 80 ${excluded ? 'excluded' : 'redirected'}`);
    t.is(connect(pair.pod, pair.peerIp4, 81).port, 15001, `pod ${i}: port 81 redirected`);
  }
  // An annotation that does not parse is refused every time, not remembered as something else.
  const bad = Buffer.from(JSON.stringify(withAnnotations({ ...INJECTED, 'traffic.sidecar.istio.io/excludeOutboundPorts': '80,,81' }, { backend: 'iptables-nft', log_file: '/dev/null' })));
  const pair = createPodPeer(t);
  for (let i = 0; i < 2; i++) {
    const refused = await callCniSocket(agent.socketPath, { env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: `bad-${i}`, CNI_NETNS: pair.podPath, CNI_IFNAME: 'eth0', CNI_ARGS: POD_ARGS }, stdin: bad }, 30_000);
    t.is(refused.exitCode, 1);
    t.regex(JSON.parse(refused.stdout).msg, /excludeOutboundPorts/);
  }
  t.notRegex(tryInNetns(pair.pod, 'iptables-nft-save', []).stdout, /ISTIO_/);
});
