/**
 * Ambient in the real one-node cluster (test/support/cluster.ts): the image built from the Dockerfile, installed
 * as an operator turns ambient on (`helm install --set ambient.enabled=true`: the chart's setting, flags and
 * RBAC, so the agent parses the rendered selectors and the API server grants what ambient uses), and the ztunnel
 * stand-in (test/support/ztunnel.ts, written from zds.proto) connected to the agent's socket on the node's
 * /var/run/ztunnel/ztunnel.sock, where Istio's ztunnel DaemonSet would mount it.
 *
 * - A namespace labelled ambient: a pod started in it is enrolled before its containers run (its app connects
 *   to a witness on the node from its first instant; with the rules in place that connection lands on
 *   ztunnel's 15001 and never reaches the witness), and ztunnel holds its netns.
 * - A running pod is enrolled when its namespace is labelled.
 * - The agent pod deleted: the DaemonSet's next agent keeps their rules and hands both to ztunnel again in the
 *   snapshot of the reconnecting ztunnel.
 */
import test from 'ava';
import * as fs from 'node:fs';
import { agentImageArchive, APP_IMAGE, NODE_IP, startCluster, type Cluster } from '../support/cluster';
import { AGENT_NS, agentContext, agentPods, applyAgentNamespace, ensureNamespace, kubectlAsync, NODE_PORT, podNetns, podReady, waitPodsRunning, Witness, WITNESS_PORT } from '../support/cluster-pods';
import { helmInstall, requireHelm } from '../support/helm';
import { connect } from '../support/traffic';
import { ZtunnelStandIn } from '../support/ztunnel';

const AMBIENT = 'istio.io/dataplane-mode=ambient';

let cluster: Cluster | undefined;
let witness: Witness | undefined;

function c(): Cluster {
  if (!cluster) throw new Error('the cluster did not start (see the first failure)');
  return cluster;
}

test.before(async (t) => {
  t.timeout(40 * 60_000, 'building the agent image and starting the cluster');
  requireHelm();
  cluster = await startCluster({ agentImage: await agentImageArchive() });
  witness = await Witness.start(cluster);
});

test.after.always(async () => {
  if (cluster) await cluster.stop();
});

/** As README says: the namespace with its Pod Security labels, then the chart with ambient on. */
async function installWithAmbient(cl: Cluster): Promise<void> {
  applyAgentNamespace(cl);
  await helmInstall(cl, ['ambient.enabled=true']);
}

function agentReady(cl: Cluster, previous?: string): Promise<any> {
  return cl.waitFor(
    'the agent pod Ready',
    240_000,
    () => agentPods(cl).find((p) => !p.metadata.deletionTimestamp && p.metadata.uid !== previous && podReady(p)),
    () => agentContext(cl),
  );
}

/** An app that connects to the witness from its first instant, as the main suite's meshed pods do. */
async function createAmbientApp(cl: Cluster, namespace: string, name: string): Promise<void> {
  const probe = `while true; do echo "$POD_NAME" | /bin/busybox nc -w 1 ${NODE_IP} ${WITNESS_PORT}; /bin/busybox sleep 0.2; done`;
  const manifest = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels: { 'mesh-cni-test': 'true' } },
    spec: {
      terminationGracePeriodSeconds: 1,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      containers: [{ name: 'app', image: APP_IMAGE, imagePullPolicy: 'Never', command: ['/bin/busybox', 'sh', '-c', probe], env: [{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }] }],
    },
  };
  const r = await kubectlAsync(cl, ['create', '-f', '-'], JSON.stringify(manifest));
  if (r.status !== 0) throw new Error(`creating ${namespace}/${name}: ${r.stderr}`);
}

const socketPath = (cl: Cluster) => cl.inside('/var/run/ztunnel/ztunnel.sock');

test.serial('ambient on: a pod started in an ambient namespace is enrolled before its containers run; a running pod when its namespace is labelled', async (t) => {
  t.timeout(10 * 60_000);
  const cl = c();
  await installWithAmbient(cl);
  await agentReady(cl);
  await cl.waitFor('the agent serving ztunnel', 60_000, () => fs.existsSync(socketPath(cl)));
  const z = await ZtunnelStandIn.connect(t, socketPath(cl), { listen: true });
  await z.until(() => z.snapshot !== undefined, 'the snapshot');

  ensureNamespace(cl, 'amb');
  cl.kubectlOk(['label', 'namespace', 'amb', AMBIENT]);
  await createAmbientApp(cl, 'amb', 'first');
  const [first] = await waitPodsRunning(cl, 'amb', ['first'], 180_000);
  t.is(z.workloads.get(first.metadata.uid)?.inode, fs.statSync(podNetns(cl, first)).ino, `ztunnel holds the pod's netns (log: ${z.log.join(', ')})`);
  t.deepEqual(witness!.unredirected(['first']), [], 'the app never reached the witness: its rules were there before it ran');
  const out = connect(podNetns(cl, first), NODE_IP, NODE_PORT);
  t.is(out.listener, 'ztunnel', JSON.stringify(out));
  t.is(out.port, 15001);
  t.is(out.orig, `${NODE_IP}:${NODE_PORT}`);
  await cl.waitFor('the pod annotated ambient.istio.io/redirection=enabled', 30_000, () => cl.json(['-n', 'amb', 'get', 'pod', 'first']).metadata.annotations?.['ambient.istio.io/redirection'] === 'enabled');

  ensureNamespace(cl, 'later');
  await createAmbientApp(cl, 'later', 'running');
  const [running] = await waitPodsRunning(cl, 'later', ['running'], 180_000);
  await cl.waitFor('the running pod reaching the witness (not ambient yet)', 30_000, () => witness!.unredirected(['running']).length === 1);
  t.false(z.workloads.has(running.metadata.uid));
  cl.kubectlOk(['label', 'namespace', 'later', AMBIENT]);
  await z.until(() => z.workloads.has(running.metadata.uid), 'the running pod handed to ztunnel', 60_000);
  const now = connect(podNetns(cl, running), NODE_IP, NODE_PORT);
  t.is(now.listener, 'ztunnel', `once its namespace is labelled: ${JSON.stringify(now)}`);
  t.is(now.port, 15001);
  await z.close();
});

test.serial('the agent pod deleted: the next agent keeps the ambient pods\' rules and ztunnel gets both again in its snapshot', async (t) => {
  t.timeout(10 * 60_000);
  const cl = c();
  const old = await agentReady(cl);
  const pods = (name: string, ns: string) => cl.json(['-n', ns, 'get', 'pod', name]);
  const first = pods('first', 'amb');
  const running = pods('running', 'later');
  cl.kubectlOk(['-n', AGENT_NS, 'delete', 'pod', old.metadata.name, '--wait=false']);
  await agentReady(cl, old.metadata.uid);
  await cl.waitFor('the new agent serving ztunnel', 60_000, () => fs.existsSync(socketPath(cl)));
  const z = await ZtunnelStandIn.connect(t, socketPath(cl), { listen: true });
  await z.until(() => z.snapshot !== undefined, 'the snapshot from the new agent', 30_000);
  t.true(z.snapshot!.includes(first.metadata.uid), `snapshot ${z.snapshot!.join(', ')}`);
  t.true(z.snapshot!.includes(running.metadata.uid));
  for (const p of [first, running]) {
    t.is(z.workloads.get(p.metadata.uid)?.inode, fs.statSync(podNetns(cl, p)).ino);
    const out = connect(podNetns(cl, p), NODE_IP, NODE_PORT);
    t.is(out.listener, 'ztunnel', `${p.metadata.name} after the restart: ${JSON.stringify(out)}`);
  }
  t.deepEqual(witness!.unredirected(['first']), [], 'the first pod never ran without its rules, restart included');
  await z.close();
});
