/**
 * Ambient on a real node: containerd's CRI with the bridge chain and our plugin, a real kube-apiserver with RBAC
 * (the agent runs as its service account under install/'s ClusterRoles and optional/ambient-rbac.yaml), the
 * agent as a child process with --ambient, and the ztunnel stand-in (test/support/ztunnel.ts, written from
 * zds.proto) connected to its socket, listening inside each pod it is handed. The test plays kubelet.
 *
 * - A pod started in a namespace labelled ambient: its ADD hands it to ztunnel before RunPodSandbox returns
 *   (the descriptor is the sandbox's netns, by inode); real TCP lands where Istio's rules send it.
 * - No ztunnel: the ADD fails with 11 (the runtime retries); with ztunnel back, the retried sandbox starts.
 * - A running pod is enrolled when its namespace is labelled, and let go when the label is removed.
 * - The agent restarted: rules kept, and the reconnecting ztunnel's snapshot holds every ambient pod, not one
 *   deleted while it was away. The node's probe rules live in the node's netns (the test's), never the host's.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { httpGet, metricValue, startAgentProcess, type AgentProcess } from '../support/agent';
import { POD_GATEWAY } from '../support/cni-conf';
import type { Sandbox } from '../support/cri-client';
import { startNode, type CriNode } from '../support/cri';
import { startKube, type Kube } from '../support/kube';
import { REPO_ROOT } from '../support/paths';
import { connect, listen, type Landing } from '../support/traffic';
import { ZtunnelStandIn, ZTUNNEL_MARK } from '../support/ztunnel';
import { requireIpset } from '../support/require';

const NODE = 'node-a';
const SA_USER = 'system:serviceaccount:mesh-cni-system:mesh-cni';
const AMBIENT_NS = { 'istio.io/dataplane-mode': 'ambient' };

let kube: Kube | undefined;
let node: CriNode | undefined;
let agent: AgentProcess | undefined;
let agentKubeconfig = '';
let stateDir = '';
let zdsSocket = '';

test.before(async () => {
  const agentToken = randomBytes(16).toString('hex');
  kube = await startKube({ authorizationMode: 'RBAC', users: [[agentToken, SA_USER, ['system:serviceaccounts', 'system:serviceaccounts:mesh-cni-system']]] });
  for (const file of ['00-namespace.yaml', '10-rbac.yaml', 'optional/ambient-rbac.yaml']) {
    const r = spawnSync('kubectl', ['--kubeconfig', kube.kubeconfig, 'apply', '-f', path.join(REPO_ROOT, 'install', file)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`kubectl apply ${file}: ${r.stderr}`);
  }
  node = await startNode({ plugin: false });
  agentKubeconfig = kube.writeKubeconfig(path.join(node.dir, 'agent-kubeconfig'), { token: agentToken });
  stateDir = path.join(node.dir, 'agent-state');
  zdsSocket = path.join(node.dir, 'ztunnel', 'ztunnel.sock');
  await kube.core().createNamespace({ body: { metadata: { name: 'amb', labels: AMBIENT_NS } } });
  await kube.ensureNamespace('late');
  await kube.ensureNamespace('plain');
});

test.after.always(async () => {
  if (agent) await agent.stop();
  if (node) await node.stop();
  if (kube) await kube.stop();
});

async function startTheAgent(): Promise<AgentProcess> {
  agent = await startAgentProcess(
    [
      ...node!.agentArgs({ kubeconfig: agentKubeconfig, nodeName: NODE, stateDir, repairMode: 'off' }),
      '--cri-socket', node!.socket,
      '--backend', 'iptables-nft',
      '--uninstall-on-exit', 'never',
      '--ambient',
      '--ztunnel-socket', zdsSocket,
      // the node's own netns is the test's: the kubelet-probe rules go there, never into this machine's
      '--host-netns', node!.netnsPath,
    ],
    path.join(node!.dir, 'agent.log'),
  );
  await waitFor('containerd to load the chain with mesh-cni', 30_000, async () => (await node!.loadedPluginTypes()).includes('mesh-cni'));
  await waitFor('the agent to serve ztunnel', 30_000, () => fs.existsSync(zdsSocket));
  return agent;
}

async function waitFor(what: string, timeoutMs: number, check: () => Promise<boolean> | boolean): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await check()) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`no ${what} within ${timeoutMs} ms\nagent log:\n${agent?.log(30) ?? ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface RunningPod {
  uid: string;
  sandbox: Sandbox;
}

/** kubelet's part: the pod in the API, its sandbox through CRI, its IP reported. */
async function runPod(namespace: string, name: string, labels: Record<string, string> = {}): Promise<RunningPod> {
  const created = await kube!.createPod({ namespace, name, nodeName: NODE, containers: ['app'], labels });
  const uid = created.metadata!.uid!;
  // The agent's pod cache must see the pod before its ADD decides (kubelet only runs pods bound to it).
  const sandbox = await node!.runPodSandbox({ name, namespace, uid, labels });
  await kube!.markRunning(namespace, name, sandbox.ip);
  return { uid, sandbox };
}

function rulesIn(netns: string): string {
  return spawnSync('nsenter', [`--net=${netns}`, '--', 'iptables-nft-save'], { encoding: 'utf8' }).stdout;
}
const ambientRules = (netns: string) => /ISTIO_PRERT/.test(rulesIn(netns)) && /--to-ports 15001/.test(rulesIn(netns));

function landsOn(t: ExecutionContext, got: Landing, listener: string, port: number, what: string): void {
  t.is(got.listener, listener, `${what}: ${JSON.stringify(got)}`);
  t.is(got.port, port, `${what}: ${JSON.stringify(got)}`);
}

const inode = (p: string) => fs.statSync(p).ino;

test.serial('a pod started in an ambient namespace is handed to ztunnel before its sandbox starts; Istio\'s rules at work', async (t) => {
  requireIpset(t);
  await startTheAgent();
  const z = await ZtunnelStandIn.connect(t, zdsSocket, { listen: true });
  await z.until(() => z.snapshot !== undefined, 'the snapshot');
  const app = await runPod('amb', 'app-1');
  // RunPodSandbox has returned: the ADD waited for ztunnel's ack.
  const held = z.workloads.get(app.uid);
  t.truthy(held, `ztunnel has the pod (log: ${z.log.join(', ')})`);
  t.is(held?.inode, inode(app.sandbox.netnsPath), "the descriptor ztunnel got is the sandbox's netns");
  t.deepEqual(held?.info, { name: 'app-1', namespace: 'amb', serviceAccount: 'default' });
  t.true(ambientRules(app.sandbox.netnsPath));

  const other = await runPod('plain', 'client-1');
  t.false(z.workloads.has(other.uid), 'a pod in a namespace without the label stays out');
  await listen(t, app.sandbox.netnsPath, 'app', ['8080']);
  await listen(t, node!.netnsPath, 'node', ['80']);
  landsOn(t, connect(app.sandbox.netnsPath, POD_GATEWAY, 80), 'ztunnel', 15001, 'the app\'s outbound');
  t.is(connect(app.sandbox.netnsPath, POD_GATEWAY, 80).orig, `${POD_GATEWAY}:80`, 'with its original destination');
  landsOn(t, connect(other.sandbox.netnsPath, app.sandbox.ip, 8080), 'ztunnel', 15006, 'inbound from another pod');
  landsOn(t, connect(other.sandbox.netnsPath, app.sandbox.ip, 15008), 'ztunnel', 15008, 'HBONE on 15008 passes');
  landsOn(t, connect(app.sandbox.netnsPath, POD_GATEWAY, 80, { mark: ZTUNNEL_MARK }), 'node', 80, "ztunnel's own marked connection leaves unredirected");
  const probe = connect(node!.netnsPath, app.sandbox.ip, 8080);
  landsOn(t, probe, 'app', 8080, 'a probe from a socket on the node (kubelet) reaches the app');
  t.true(probe.peer?.startsWith('169.254.7.127:'), `SNATed on the node: ${probe.peer}`);

  await waitFor('the pod annotated ambient.istio.io/redirection=enabled', 10_000, async () => (await kube!.core().readNamespacedPod({ namespace: 'amb', name: 'app-1' })).metadata?.annotations?.['ambient.istio.io/redirection'] === 'enabled');
  const metrics = (await httpGet(agent!.healthPort, '/metrics')).body;
  t.is(metricValue(metrics, 'mesh_cni_ztunnel_connected'), 1);
  t.true(metricValue(metrics, 'mesh_cni_zds_workloads_sent_total', { kind: 'add', snapshot: 'false' }) >= 1);
  await z.close();
});

test.serial('no ztunnel: an ambient pod\'s ADD fails with 11; once ztunnel is back the retried sandbox starts', async (t) => {
  await waitFor('ztunnel gone', 10_000, async () => metricValue((await httpGet(agent!.healthPort, '/metrics')).body, 'mesh_cni_ztunnel_connected') === 0);
  const created = await kube!.createPod({ namespace: 'amb', name: 'early-1', nodeName: NODE, containers: ['app'] });
  const from = node!.meshCniLogSize();
  const err = await t.throwsAsync(node!.runPodSandbox({ name: 'early-1', namespace: 'amb', uid: created.metadata!.uid! }));
  t.regex(String(err?.message), /ztunnel/);
  const add = node!.meshCniLogSince(from).find((l) => l.command === 'ADD' && l.pod === 'amb/early-1');
  t.is(add?.error?.code, 11, JSON.stringify(add));
  const z = await ZtunnelStandIn.connect(t, zdsSocket, { listen: true });
  await z.until(() => z.snapshot !== undefined, 'the snapshot');
  const sandbox = await node!.runPodSandbox({ name: 'early-1', namespace: 'amb', uid: created.metadata!.uid! });
  await kube!.markRunning('amb', 'early-1', sandbox.ip);
  t.true(z.workloads.has(created.metadata!.uid!));
  t.true(ambientRules(sandbox.netnsPath));
  await z.close();
});

test.serial('a running pod is enrolled when its namespace is labelled, and let go when the label goes', async (t) => {
  const z = await ZtunnelStandIn.connect(t, zdsSocket, { listen: true });
  await z.until(() => z.snapshot !== undefined, 'the snapshot');
  const pod = await runPod('late', 'running-1');
  t.false(ambientRules(pod.sandbox.netnsPath), 'not ambient yet: no rules');
  t.false(z.workloads.has(pod.uid));
  await kube!.core().patchNamespace({ name: 'late', body: [{ op: 'add', path: '/metadata/labels', value: AMBIENT_NS }] });
  await z.until(() => z.workloads.has(pod.uid), 'the running pod', 15_000);
  t.is(z.workloads.get(pod.uid)?.inode, inode(pod.sandbox.netnsPath));
  t.true(ambientRules(pod.sandbox.netnsPath));
  landsOn(t, connect(pod.sandbox.netnsPath, POD_GATEWAY, 80), 'ztunnel', 15001, 'the enrolled pod\'s outbound');
  await kube!.core().patchNamespace({ name: 'late', body: [{ op: 'remove', path: '/metadata/labels/istio.io~1dataplane-mode' }] });
  await z.until(() => !z.workloads.has(pod.uid), 'the pod let go', 15_000);
  await waitFor('its rules removed', 10_000, () => !ambientRules(pod.sandbox.netnsPath));
  t.true(z.log.includes(`del ${pod.uid}`));
  await z.close();
});

test.serial('the agent restarted keeps the rules, and the reconnecting ztunnel\'s snapshot holds every ambient pod and not one deleted meanwhile', async (t) => {
  const z = await ZtunnelStandIn.connect(t, zdsSocket, { listen: true });
  await z.until(() => z.snapshot !== undefined, 'the snapshot');
  const keep = await runPod('amb', 'keep-1');
  const gone = await runPod('amb', 'gone-1');
  await z.close();
  await agent!.stop();
  agent = undefined;
  t.true(ambientRules(keep.sandbox.netnsPath), 'rules stay while no agent runs');
  // Deleted while the agent and ztunnel are away.
  await node!.stopPodSandbox(gone.sandbox.id);
  await node!.removePodSandbox(gone.sandbox.id);
  await kube!.core().deleteNamespacedPod({ namespace: 'amb', name: 'gone-1', gracePeriodSeconds: 0 });
  await startTheAgent();
  const again = await ZtunnelStandIn.connect(t, zdsSocket, { listen: true });
  await again.until(() => again.snapshot !== undefined, 'the snapshot after the restart');
  t.true(again.snapshot!.includes(keep.uid), `snapshot: ${again.snapshot!.join(', ')}`);
  t.false(again.snapshot!.includes(gone.uid));
  t.is(again.workloads.get(keep.uid)?.inode, inode(keep.sandbox.netnsPath));
  t.true(ambientRules(keep.sandbox.netnsPath));
  landsOn(t, connect(keep.sandbox.netnsPath, POD_GATEWAY, 80), 'ztunnel', 15001, 'the kept pod after the restart');
  await again.close();
});
