/**
 * The agent's own lifecycle against a real kube-apiserver with RBAC on, as the agent's service account under
 * install/10-rbac.yaml (and install/optional/node-readiness-rbac.yaml): what SIGTERM decides (StopDecider),
 * removing the not-ready taint, and the CLI reading Events. The DaemonSet is install/30-daemonset.yaml itself;
 * no controller runs, so the test creates the agent's pod with the ownerReference the DaemonSet controller
 * would set.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import type * as K8s from '@kubernetes/client-node';
import { StopDecider } from '../../src/agent/stop-decision';
import { removeNotReadyTaint } from '../../src/agent/node-taint';
import { NOT_READY_TAINT_KEY } from '../../src/mesh/istio-names';
import { connectKube } from '../../src/cli/kube-client';
import { meshCniEventsOrWhy } from '../../src/cli/last-action';
import { loadKubeConfig } from '../../src/kube/pod-cache';
import { REPO_ROOT } from '../support/paths';
import { startKube, type Kube } from '../support/kube';
import { fileTempDir } from '../support/tmp';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const k8s = require('@kubernetes/client-node') as typeof K8s;
const INSTALL = path.join(REPO_ROOT, 'install');
const NS = 'mesh-cni-system';
const NODE = 'node-a';
const POD = 'mesh-cni-x7k2p';
const SA_TOKEN = randomBytes(16).toString('hex');
const LIMITED_TOKEN = randomBytes(16).toString('hex');
const SA_USER = `system:serviceaccount:${NS}:mesh-cni`;

let kube: Kube | undefined;
let saKubeconfig = '';
let limitedKubeconfig = '';
const dir = fileTempDir('agent-lifecycle');

function kubectl(...args: string[]): string {
  const r = spawnSync('kubectl', ['--kubeconfig', kube!.kubeconfig, ...args], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`kubectl ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

function apps(): K8s.AppsV1Api {
  const config = new k8s.KubeConfig();
  config.loadFromFile(kube!.kubeconfig);
  return config.makeApiClient(k8s.AppsV1Api);
}

async function decider(kubeconfig = saKubeconfig): Promise<StopDecider> {
  return StopDecider.create({ kubeconfigPath: kubeconfig, podNamespace: NS, podName: POD, nodeName: NODE, callTimeoutMs: 3_000 });
}

async function createAgentPod(): Promise<void> {
  const ds = await apps().readNamespacedDaemonSet({ name: 'mesh-cni', namespace: NS });
  await kube!.core().createNamespacedPod({
    namespace: NS,
    body: {
      metadata: { name: POD, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'mesh-cni', uid: ds.metadata!.uid!, controller: true, blockOwnerDeletion: true }] },
      spec: { nodeName: NODE, containers: [{ name: 'agent', image: 'mesh-cni:0.1.0' }] },
    },
  });
}

test.before(async () => {
  if (spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status !== 0) throw new Error("kubectl is missing: install Debian's kubernetes-client (scripts/setup-node-deps.sh does)");
  kube = await startKube({
    authorizationMode: 'RBAC',
    users: [
      [SA_TOKEN, SA_USER, ['system:serviceaccounts', `system:serviceaccounts:${NS}`]],
      // may read pods, nothing else: what an older RBAC without `get daemonsets` and `list events` allowed
      [LIMITED_TOKEN, 'limited', []],
    ],
  });
  saKubeconfig = kube.writeKubeconfig(path.join(dir, 'sa.kubeconfig'), { token: SA_TOKEN });
  limitedKubeconfig = kube.writeKubeconfig(path.join(dir, 'limited.kubeconfig'), { token: LIMITED_TOKEN });
  kubectl('apply', '-f', path.join(INSTALL, '00-namespace.yaml'));
  kubectl('apply', '-f', INSTALL, '-f', path.join(INSTALL, 'optional', 'node-readiness-rbac.yaml'));
  kubectl('create', 'clusterrole', 'limited', '--verb=get,list', '--resource=pods');
  kubectl('create', 'clusterrolebinding', 'limited', '--clusterrole=limited', '--user=limited');
  await kube.core().createNode({ body: { metadata: { name: NODE, labels: { 'kubernetes.io/os': 'linux' } } } });
  await createAgentPod();
});

test.after.always(async () => {
  if (kube) await kube.stop();
});

test.serial('SIGTERM while the DaemonSet exists and selects the node (a restart, a rollout): the plugin stays', async (t) => {
  const d = await decider();
  t.is(d.describeOwner(), `DaemonSet ${NS}/mesh-cni`);
  const decision = await d.decide();
  t.false(decision.uninstall, decision.reason);
  t.regex(decision.reason, /still runs on node node-a/);
});

test.serial('a drained node (unschedulable taint, auto-tolerated by daemon pods): the plugin stays', async (t) => {
  const d = await decider();
  await kube!.core().patchNode({ name: NODE, body: { spec: { unschedulable: true, taints: [{ key: 'node.kubernetes.io/unschedulable', effect: 'NoSchedule' }] } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  t.teardown(() => kube!.core().patchNode({ name: NODE, body: { spec: { unschedulable: false, taints: null } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch)).then(() => undefined));
  t.false((await d.decide()).uninstall);
});

test.serial('the DaemonSet no longer selects the node (nodeSelector changed): uninstall', async (t) => {
  const d = await decider();
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  await apps().patchNamespacedDaemonSet({ name: 'mesh-cni', namespace: NS, body: { spec: { template: { spec: { nodeSelector: { pool: 'elsewhere' } } } } } }, merge);
  t.teardown(() => apps().patchNamespacedDaemonSet({ name: 'mesh-cni', namespace: NS, body: { spec: { template: { spec: { nodeSelector: { pool: null } } } } } }, merge).then(() => undefined));
  const decision = await d.decide();
  t.true(decision.uninstall, decision.reason);
  t.regex(decision.reason, /no longer runs on node node-a: its nodeSelector pool=elsewhere/);
});

test.serial('API server down at SIGTERM: the plugin stays (fail closed)', async (t) => {
  const d = await decider();
  await kube!.stopApiserver();
  try {
    const decision = await d.decide();
    t.false(decision.uninstall, decision.reason);
    t.regex(decision.reason, /cannot read DaemonSet .*fail closed/);
  } finally {
    await kube!.startApiserver();
  }
});

test.serial('403 on a read that was already refused at start (older RBAC): the plugin stays', async (t) => {
  const d = await decider(limitedKubeconfig);
  t.regex(d.describeOwner(), /not readable at start/);
  const decision = await d.decide();
  t.false(decision.uninstall, decision.reason);
  t.regex(decision.reason, /answered 403.*fail closed/);
});

test.serial('RBAC removed since start (kubectl delete -f install/ deletes it before the pods stop): uninstall', async (t) => {
  const d = await decider();
  kubectl('delete', 'clusterrolebinding', 'mesh-cni');
  t.teardown(() => void kubectl('apply', '-f', path.join(INSTALL, '10-rbac.yaml')));
  const decision = await d.decide();
  t.true(decision.uninstall, decision.reason);
  t.regex(decision.reason, /readable at start and now the API server answered 403/);
});

test.serial('the DaemonSet being deleted, then gone: uninstall', async (t) => {
  // A finalizer holds the object with its deletionTimestamp set, as a foreground deletion does.
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  await apps().patchNamespacedDaemonSet({ name: 'mesh-cni', namespace: NS, body: { metadata: { finalizers: ['test.mesh-cni/hold'] } } }, merge);
  const d = await decider();
  await apps().deleteNamespacedDaemonSet({ name: 'mesh-cni', namespace: NS });
  const deleting = await d.decide();
  t.true(deleting.uninstall, deleting.reason);
  t.regex(deleting.reason, /is being deleted/);
  await apps().patchNamespacedDaemonSet({ name: 'mesh-cni', namespace: NS, body: { metadata: { finalizers: null } } }, merge);
  const gone = await d.decide();
  t.true(gone.uninstall, gone.reason);
  t.regex(gone.reason, /is gone/);
  kubectl('apply', '-f', path.join(INSTALL, '30-daemonset.yaml'));
});

test.serial('kubectl delete namespace: the DaemonSet still intact (pods go first) but its namespace terminating: uninstall', async (t) => {
  // No namespace controller runs here, so a deleted namespace stays Terminating with its objects inside.
  const other = 'mesh-cni-elsewhere';
  await kube!.core().createNamespace({ body: { metadata: { name: other } } });
  const manifest = k8s.loadYaml<K8s.V1DaemonSet>(readFileSync(path.join(INSTALL, '30-daemonset.yaml'), 'utf8'));
  const ds = await apps().createNamespacedDaemonSet({ namespace: other, body: { ...manifest, metadata: { ...manifest.metadata, namespace: other } } });
  await kube!.core().createNamespacedPod({
    namespace: other,
    body: {
      metadata: { name: POD, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'mesh-cni', uid: ds.metadata!.uid!, controller: true }] },
      spec: { nodeName: NODE, containers: [{ name: 'agent', image: 'mesh-cni:0.1.0' }] },
    },
  });
  const d = await StopDecider.create({ kubeconfigPath: saKubeconfig, podNamespace: other, podName: POD, nodeName: NODE });
  t.false((await d.decide()).uninstall);
  await kube!.core().deleteNamespace({ name: other });
  const decision = await d.decide();
  t.true(decision.uninstall, decision.reason);
  t.regex(decision.reason, /namespace mesh-cni-elsewhere of DaemonSet mesh-cni-elsewhere\/mesh-cni is being deleted/);
});

test.serial('a pod that no DaemonSet owns (run by hand): the plugin stays, and the reason says how to remove it', async (t) => {
  await kube!.core().createNamespacedPod({ namespace: NS, body: { metadata: { name: 'by-hand' }, spec: { nodeName: NODE, containers: [{ name: 'agent', image: 'mesh-cni:0.1.0' }] } } });
  const d = await StopDecider.create({ kubeconfigPath: saKubeconfig, podNamespace: NS, podName: 'by-hand', nodeName: NODE });
  const decision = await d.decide();
  t.false(decision.uninstall);
  t.regex(decision.reason, /not run by a DaemonSet.*mesh-cni uninstall/);
});

test.serial('--remove-not-ready-taint: the agent takes exactly its taint off its node, through its optional RBAC', async (t) => {
  const other = { key: 'dedicated', value: 'mesh', effect: 'NoSchedule' };
  await kube!.core().patchNode({ name: NODE, body: { spec: { taints: [{ key: NOT_READY_TAINT_KEY, effect: 'NoSchedule' }, other] } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  t.teardown(() => kube!.core().patchNode({ name: NODE, body: { spec: { taints: null } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch)).then(() => undefined));
  const kc = await loadKubeConfig(saKubeconfig);
  t.is(await removeNotReadyTaint(kc, NODE), 'removed');
  const node = await kube!.core().readNode({ name: NODE });
  t.deepEqual(node.spec!.taints!.map((x) => ({ key: x.key, value: x.value, effect: x.effect })), [other]);
  t.is(await removeNotReadyTaint(kc, NODE), 'absent');

  // Without the optional binding the patch is refused, and the error says so (the agent then retries).
  kubectl('delete', 'clusterrolebinding', 'mesh-cni-node-readiness');
  t.teardown(() => void kubectl('apply', '-f', path.join(INSTALL, 'optional', 'node-readiness-rbac.yaml')));
  await kube!.core().patchNode({ name: NODE, body: { spec: { taints: [{ key: NOT_READY_TAINT_KEY, effect: 'NoSchedule' }] } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  const refused = await removeNotReadyTaint(kc, NODE).then(
    () => undefined,
    (err: { code?: number }) => err.code,
  );
  t.is(refused, 403);
});

test.serial('the CLI reads Events under install/10-rbac.yaml, and says so when it may not (a 403 is not swallowed)', async (t) => {
  const allowed = await meshCniEventsOrWhy(await connectKube(saKubeconfig), 'default');
  t.is(allowed.warning, undefined);
  const refused = await meshCniEventsOrWhy(await connectKube(limitedKubeconfig), 'default');
  t.regex(refused.warning ?? '', /last actions are incomplete, listing Events: the API server answered 403: the service account may not list events \(install\/10-rbac\.yaml grants it\)/);
});
