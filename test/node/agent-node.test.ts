/**
 * The whole node path of issue 5: containerd's CRI on a node whose only CNI config is bridge + host-local,
 * a real kube-apiserver + etcd, and `mesh-cni agent` as a child process that installs our shim and entry
 * into containerd's CNI dirs. The test plays kubelet (creates the pod in the API, then RunPodSandbox with its
 * uid and annotations). The API server's audit log shows which requests were made for each pod.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { httpGet, metricValue, startAgentProcess, type AgentProcess } from '../support/agent';
import { POD_GATEWAY } from '../support/cni-conf';
import type { Sandbox } from '../support/cri-client';
import { startNode, type CriNode } from '../support/cri';
import { startKube, type Kube } from '../support/kube';
import { connect, listen } from '../support/traffic';
import { REPO_ROOT } from '../support/paths';
import type * as K8s from '@kubernetes/client-node';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const k8s = require('@kubernetes/client-node') as typeof K8s;

const NODE = 'node-a';
const NS = 'shop';
const STATUS = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });
const ANNOTATIONS = { 'sidecar.istio.io/status': STATUS, 'traffic.sidecar.istio.io/excludeOutboundPorts': '9411' };

let kube: Kube | undefined;
let node: CriNode | undefined;
let agent: AgentProcess | undefined;
let socket = '';
let stateDir = '';
let primaryBefore: Buffer;
const primaryName = '10-bridge.conflist';

function agentArgs(): string[] {
  return node!.agentArgs({ kubeconfig: kube!.kubeconfig, nodeName: NODE, socket, stateDir, repairMode: 'off' });
}

// The agent's own pod, as the downward API names it; its DaemonSet is install/30-daemonset.yaml (no controller
// runs, so the pod carries the ownerReference the DaemonSet controller would set).
const AGENT_NS = 'mesh-cni-system';
const AGENT_POD = 'mesh-cni-agent-1';

async function startTheAgent(extra: string[] = []): Promise<AgentProcess> {
  agent = await startAgentProcess([...agentArgs(), ...extra], path.join(node!.dir, 'agent.log'), { POD_NAMESPACE: AGENT_NS, POD_NAME: AGENT_POD });
  return agent;
}

function appsApi(): K8s.AppsV1Api {
  const config = new k8s.KubeConfig();
  config.loadFromFile(kube!.kubeconfig);
  return config.makeApiClient(k8s.AppsV1Api);
}

async function createAgentDaemonSet(): Promise<void> {
  await kube!.ensureNamespace(AGENT_NS);
  const manifest = k8s.loadYaml<K8s.V1DaemonSet>(fs.readFileSync(path.join(REPO_ROOT, 'install', '30-daemonset.yaml'), 'utf8'));
  const ds = await appsApi().createNamespacedDaemonSet({ namespace: AGENT_NS, body: manifest });
  await kube!.core().createNode({ body: { metadata: { name: NODE, labels: { 'kubernetes.io/os': 'linux' } } } });
  await kube!.core().createNamespacedPod({
    namespace: AGENT_NS,
    body: {
      metadata: { name: AGENT_POD, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: ds.metadata!.name!, uid: ds.metadata!.uid!, controller: true }] },
      // Not bound to NODE: the agent's own pod would otherwise show up in the node's pod cache the tests count.
      spec: { containers: [{ name: 'agent', image: 'mesh-cni:0.1.0' }] },
    },
  });
}

async function waitFor(what: string, timeoutMs: number, check: () => Promise<boolean> | boolean): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await check()) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`no ${what} within ${timeoutMs} ms\nagent log:\n${agent?.log() ?? ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ready = async () => (await httpGet(agent!.healthPort, '/readyz').catch(() => ({ status: 0 }))).status === 200;
const metrics = async () => (await httpGet(agent!.healthPort, '/metrics')).body;

test.before(async () => {
  kube = await startKube({ audit: true });
  node = await startNode({ plugin: false });
  // containerd passes its environment to the shim, which looks for the agent there.
  socket = node.agentSocket;
  stateDir = path.join(node.dir, 'agent-state');
  primaryBefore = fs.readFileSync(path.join(node.confDir, primaryName));
  await createAgentDaemonSet();
});

test.after.always(async () => {
  if (agent) await agent.stop();
  if (node) await node.stop();
  if (kube) await kube.stop();
});

function rulesIn(netnsPath: string): string {
  return spawnSync('nsenter', [`--net=${netnsPath}`, '--', 'iptables-save'], { encoding: 'utf8' }).stdout;
}

/** Plays kubelet: the pod in the API (scheduled here), then its sandbox through CRI with the same uid and annotations. */
async function startPod(name: string): Promise<{ sandbox: Sandbox; uid: string; add: Record<string, any> | undefined }> {
  const live = agent !== undefined && !agent.service.exited();
  const cachedBefore = live ? metricValue(await metrics(), 'mesh_cni_pods_cached') : 0;
  const created = await kube!.createPod({ namespace: NS, name, nodeName: NODE, containers: ['app', 'istio-proxy'], annotations: ANNOTATIONS });
  const uid = created.metadata!.uid!;
  // kubelet learns of the pod through its own watch, as late as the agent does; without this the test could
  // race the watch and see a (correct) fallback instead of the cache it means to show.
  if (live) await waitFor('the pod in the watch cache', 5_000, async () => metricValue(await metrics(), 'mesh_cni_pods_cached') > cachedBefore);
  const from = node!.meshCniLogSize();
  let sandbox: Sandbox;
  try {
    sandbox = await node!.runPodSandbox({ name, namespace: NS, uid, annotations: ANNOTATIONS });
  } catch (err) {
    throw new Error(`${(err as Error).message}\nplugin log: ${JSON.stringify(node!.meshCniLogSince(from))}\ncontainerd:\n${node!.containerdLog(15)}\nagent:\n${agent?.log(15)}`);
  }
  const add = node!.meshCniLogSince(from).find((l) => l.command === 'ADD');
  return { sandbox, uid, add };
}

async function removePod(sandbox: Sandbox): Promise<void> {
  await node!.stopPodSandbox(sandbox.id).catch(() => undefined);
  await node!.removePodSandbox(sandbox.id).catch(() => undefined);
}

test.serial('the agent installs the shim and inserts its entry into the primary conflist containerd reads, then reports ready', async (t) => {
  const started = Date.now();
  await startTheAgent();
  const readyAfter = await waitFor('/readyz 200', 20_000, ready);
  t.log(`agent ready ${Date.now() - started} ms after start (${readyAfter} ms after its health port opened)`);

  const list = JSON.parse(fs.readFileSync(path.join(node!.confDir, primaryName), 'utf8'));
  t.deepEqual(list.plugins.map((p: { type: string }) => p.type), ['bridge', 'mesh-cni'], 'our entry last, in the same file');
  t.false('agent_socket' in list.plugins[1], 'agent_socket, which nothing reads, is no longer written');
  t.is(list.plugins[1].state_dir, stateDir);
  t.true(fs.lstatSync(path.join(node!.binDir, 'mesh-cni')).isFile(), 'the shim is a real file in the bin dir, not a link into the checkout');
  // The engine: a link to a versioned directory of real files beside it, none of them pointing into the checkout.
  const engineDir = fs.realpathSync(path.join(node!.binDir, 'mesh-cni.d'));
  t.is(path.dirname(engineDir), fs.realpathSync(node!.binDir));
  t.true(fs.lstatSync(path.join(engineDir, 'mesh-cni.js')).isFile());
  t.deepEqual(fs.readdirSync(node!.confDir).sort(), [primaryName]);
});

test.serial('a pod created in the API and started through CRI is redirected from the watch cache: no per-pod GET reaches the API', async (t) => {
  const name = 'cart-cached';
  const before = await metrics();
  const { sandbox, add } = await startPod(name);
  t.teardown(() => removePod(sandbox));
  t.is(add?.decision, 'meshed', JSON.stringify(add));
  t.is(add?.source, 'cache', JSON.stringify(add));
  t.deepEqual(kube!.podGets(NS, name), [], 'no GET /api/v1/namespaces/shop/pods/cart-cached in the audit log');
  t.true(kube!.auditEvents().some((e) => e.verb === 'create' && e.objectRef?.name === name), 'the audit log does record this pod (the check above can see)');

  const rules = rulesIn(sandbox.netnsPath);
  t.regex(rules, /--to-ports 15001/);
  t.regex(rules, /--dport 9411 -j RETURN/);
  await listen(t, sandbox.netnsPath, 'proxy', ['15001']);
  t.is(connect(sandbox.netnsPath, POD_GATEWAY, 80).listener, 'proxy');

  const after = await metrics();
  const delta = (name: string, labels: Record<string, string>) => metricValue(after, name, labels) - metricValue(before, name, labels);
  t.is(delta('mesh_cni_requests_total', { command: 'ADD', result: 'ok' }), 1);
  t.is(delta('mesh_cni_rules_programmed_total', {}), add?.rules, 'rules counted = rules the ADD reported');
  t.is(delta('mesh_cni_add_duration_seconds_count', { decision: 'meshed' }), 1);
});

test.serial('/metrics counts what happened: ADDs, both DELs of a removed sandbox, rules, cached pods', async (t) => {
  const before = await metrics();
  const { sandbox, add } = await startPod('cart-metrics');
  await node!.stopPodSandbox(sandbox.id);
  await node!.removePodSandbox(sandbox.id);
  const after = await metrics();
  const delta = (name: string, labels: Record<string, string> = {}) => metricValue(after, name, labels) - metricValue(before, name, labels);
  t.is(delta('mesh_cni_requests_total', { command: 'ADD', result: 'ok' }), 1);
  t.is(delta('mesh_cni_requests_total', { command: 'DEL', result: 'ok' }), 2, 'Stop and Remove each run DEL');
  t.is(delta('mesh_cni_requests_total', { result: '999' }), 0);
  t.is(delta('mesh_cni_rules_programmed_total'), add?.rules);
  t.true(metricValue(after, 'mesh_cni_pods_cached') >= 2, 'the pods of this node are in the cache');
  t.is(metricValue(after, 'mesh_cni_install_reinsertions_total'), 0);
});

test.serial('agent SIGKILLed: the shim falls back to the standalone engine it installed, and new pods are still redirected', async (t) => {
  await agent!.kill();
  t.true(fs.existsSync(socket), 'a killed agent leaves its socket file behind (the shim must cope)');
  const { sandbox, add } = await startPod('cart-fallback');
  t.teardown(() => removePod(sandbox));
  t.is(add?.decision, 'meshed', JSON.stringify(add));
  t.is(add?.source, 'runtime+defaults', 'decided by the standalone engine from the annotations containerd passed');
  t.regex(rulesIn(sandbox.netnsPath), /--dport 9411 -j RETURN/);
  await listen(t, sandbox.netnsPath, 'proxy', ['15001']);
  t.is(connect(sandbox.netnsPath, POD_GATEWAY, 80).listener, 'proxy');
});

test.serial('agent restarted: ready again, and serves ADDs from its cache again', async (t) => {
  const started = Date.now();
  await startTheAgent();
  await waitFor('/readyz 200', 20_000, ready);
  t.log(`ready again ${Date.now() - started} ms after restart`);
  const { sandbox, add } = await startPod('cart-again');
  t.teardown(() => removePod(sandbox));
  t.is(add?.source, 'cache', JSON.stringify(add));
  t.deepEqual(kube!.podGets(NS, 'cart-again'), []);
});

test.serial('SIGTERM while its DaemonSet still runs here (a restart, a rollout): entry, shim and engine stay, and a pod started meanwhile is redirected', async (t) => {
  await agent!.stop();
  agent = undefined;
  const conflist = JSON.parse(fs.readFileSync(path.join(node!.confDir, primaryName), 'utf8')) as { plugins: Array<{ type: string }> };
  t.is(conflist.plugins.at(-1)?.type, 'mesh-cni', 'our entry is still the last plugin');
  t.true(fs.existsSync(path.join(node!.binDir, 'mesh-cni')));
  t.true(fs.existsSync(path.join(node!.binDir, 'mesh-cni.d', 'mesh-cni.js')));
  const said = fs.readFileSync(path.join(node!.dir, 'agent.log'), 'utf8');
  t.regex(said, /the plugin stays in place.*DaemonSet mesh-cni-system\/mesh-cni still runs on node node-a/);

  const { sandbox, add } = await startPod('cart-between-agents');
  t.teardown(() => removePod(sandbox));
  t.is(add?.decision, 'meshed', JSON.stringify(add));
  t.is(add?.source, 'runtime+defaults', 'the standalone engine programmed it');
  await listen(t, sandbox.netnsPath, 'proxy', ['15001']);
  t.is(connect(sandbox.netnsPath, POD_GATEWAY, 80).listener, 'proxy');
});

test.serial('--remove-not-ready-taint: the node registered with cni.istio.io/not-ready loses that taint once the agent is ready', async (t) => {
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  await kube!.core().patchNode({ name: NODE, body: { spec: { taints: [{ key: 'cni.istio.io/not-ready', effect: 'NoSchedule' }] } } }, merge);
  await startTheAgent(['--remove-not-ready-taint']);
  await waitFor('/readyz 200', 20_000, ready);
  const untainted = await waitFor('the taint removed', 10_000, async () => ((await kube!.core().readNode({ name: NODE })).spec?.taints ?? []).length === 0);
  t.log(`taint removed ${untainted} ms after the agent turned ready`);
  // The line is written once the PATCH's answer is in, which can be a moment after the node shows it.
  await waitFor('the log line', 5_000, () => agent!.lines().some((l) => /removed the cni.istio.io\/not-ready taint/.test(String(l.msg))));
  t.pass();
});

test.serial('SIGTERM once its DaemonSet is deleted: the agent takes its entry and files back out; the primary conflist is byte-for-byte as before', async (t) => {
  if (!agent || agent.service.exited()) await startTheAgent();
  await waitFor('/readyz 200', 20_000, ready);
  await appsApi().deleteNamespacedDaemonSet({ name: 'mesh-cni', namespace: AGENT_NS });
  await agent!.stop();
  agent = undefined;
  t.deepEqual(fs.readFileSync(path.join(node!.confDir, primaryName)), primaryBefore);
  t.false(fs.existsSync(path.join(node!.binDir, 'mesh-cni')));
  t.false(fs.existsSync(path.join(node!.binDir, 'mesh-cni.d')));
  t.deepEqual(fs.readdirSync(node!.binDir).filter((n) => n.includes('mesh-cni')), [], 'no versioned engine directory left either');
});
