/**
 * Pod lookup against a real kube-apiserver + etcd: the runtime passes no annotations (the conflist entry
 * declares no capability and names a kubeconfig), so our plugin reads the pod from the API. The test plays
 * kubelet: create the pod in the API, then RunPodSandbox with its name, namespace and uid.
 * The API listens on the host's loopback; a socat pair makes it 127.0.0.1:PORT inside the node netns too.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { POD_GATEWAY, podCniArgs } from '../support/cni-conf';
import { startNode, type CriNode } from '../support/cri';
import { forwardIntoNetns, freePort, startKube, type Forward, type Kube } from '../support/kube';
import { connect, listen } from '../support/traffic';

const STATUS = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });
const LOOKUP_TIMEOUT_MS = 2000;

let kube: Kube | undefined;
let node: CriNode | undefined;
let forward: Forward | undefined;

test.before(async () => {
  kube = await startKube();
  node = await startNode({
    annotationsCapability: false,
    meshCni: { kubernetes: { kubeconfig: kube.kubeconfig } },
    env: { MESH_CNI_POD_LOOKUP_TIMEOUT_MS: String(LOOKUP_TIMEOUT_MS) },
  });
  forward = await forwardIntoNetns(node.netnsPath, kube.port, node.dir);
});

test.after.always(async () => {
  if (node) await node.stop();
  if (forward) await forward.stop();
  if (kube) await kube.stop();
});

function rulesIn(netnsPath: string): string {
  return spawnSync('nsenter', [`--net=${netnsPath}`, '--', 'iptables-save'], { encoding: 'utf8' }).stdout;
}

test.serial('a pod created in the API, then started through CRI with no annotations, is redirected as the API says', async (t) => {
  const created = await kube!.createPod({
    namespace: 'shop',
    name: 'cart-api',
    containers: ['app', 'istio-proxy'],
    annotations: {
      'sidecar.istio.io/status': STATUS,
      // only the API knows this: it must show up as a rule
      'traffic.sidecar.istio.io/excludeOutboundPorts': '9411',
    },
  });
  const from = node!.meshCniLogSize();
  let pod;
  try {
    pod = await node!.runPodSandbox({ name: 'cart-api', namespace: 'shop', uid: created.metadata!.uid! });
  } catch (err) {
    throw new Error(`${(err as Error).message}\nplugin log: ${JSON.stringify(node!.meshCniLogSince(from))}`);
  }
  t.teardown(async () => {
    await node!.stopPodSandbox(pod.id).catch(() => undefined);
    await node!.removePodSandbox(pod.id).catch(() => undefined);
  });

  const add = node!.meshCniLogSince(from).find((l) => l.command === 'ADD');
  t.is(add?.decision, 'meshed', JSON.stringify(add));
  t.regex(String(add?.source), /api/, JSON.stringify(add));
  t.regex(pod.ip, /^10\.99\.0\.\d+$/);
  const rules = rulesIn(pod.netnsPath);
  t.regex(rules, /:ISTIO_OUTPUT/);
  t.regex(rules, /--dport 9411 -j RETURN/, 'the exclusion from the API pod’s annotation');
  t.regex(rules, /--uid-owner 1337/, 'the proxy uid from the API pod’s istio-proxy runAsUser');

  await listen(t, pod.netnsPath, 'proxy', ['15001']);
  t.is(connect(pod.netnsPath, POD_GATEWAY, 80).listener, 'proxy');
});

test.serial('an API that is down: ADD answers 11 after the bounded wait and leaves no rules', async (t) => {
  const deadPort = await freePort();
  const deadKubeconfig = kube!.writeKubeconfig(path.join(node!.dir, 'kubeconfig-down'), { server: `https://127.0.0.1:${deadPort}` });

  // As the runtime calls it, into a pod netns of the test's own.
  const netns = `mcni-node-${process.pid}-down`;
  spawnSync('ip', ['netns', 'add', netns]);
  t.teardown(() => {
    spawnSync('ip', ['netns', 'del', netns]);
  });
  const started = Date.now();
  const r = await node!.invokeShim('ADD', {
    containerId: 'down-1',
    netnsPath: `/var/run/netns/${netns}`,
    args: podCniArgs('shop', 'cart-down', 'down-1', 'uid-down'),
    netconf: node!.pluginNetconf({ kubernetes: { kubeconfig: deadKubeconfig } }),
    env: { MESH_CNI_POD_LOOKUP_TIMEOUT_MS: String(LOOKUP_TIMEOUT_MS) },
  });
  const elapsed = Date.now() - started;
  t.is(r.code, 1, r.stdout + r.stderr);
  t.is(r.json?.code, 11, r.stdout);
  t.true(elapsed >= LOOKUP_TIMEOUT_MS, `answered after ${elapsed} ms, before the bounded wait`);
  t.true(elapsed < LOOKUP_TIMEOUT_MS + 10_000, `answered after ${elapsed} ms`);
  t.notRegex(rulesIn(`/var/run/netns/${netns}`), /ISTIO_/);
});

test.serial('an API that is down: RunPodSandbox fails (kubelet will retry) and no sandbox is left', async (t) => {
  await kube!.createPod({ namespace: 'shop', name: 'cart-later', containers: ['app', 'istio-proxy'], annotations: { 'sidecar.istio.io/status': STATUS } });
  // Cut the node off from the API: the forwarder into the node netns goes away.
  await forward!.stop();
  forward = undefined;
  const from = node!.meshCniLogSize();
  const error = await t.throwsAsync(node!.runPodSandbox({ name: 'cart-later', namespace: 'shop', uid: 'uid-later' }));
  t.regex(error?.message ?? '', /mesh-cni/);
  const add = node!.meshCniLogSince(from).find((l) => l.command === 'ADD');
  t.is(add?.error?.code, 11, JSON.stringify(add));
  t.true(add?.durationMs >= LOOKUP_TIMEOUT_MS, JSON.stringify(add));
  const left = (await node!.listPodSandbox()).filter((s) => s.metadata?.name === 'cart-later' && s.state === 'SANDBOX_READY');
  t.deepEqual(left, []);
});
