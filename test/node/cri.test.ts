/**
 * The plugin as kubelet reaches it: CRI RunPodSandbox on containerd, which runs the real `bridge` +
 * `host-local` and then our shim from a real conflist, in a "node" netns of its own. Annotations travel
 * through the runtime (the conflist entry declares the pod-annotations capability). The kernel judges.
 * Needs what scripts/setup-node-deps.sh installs; fails (never skips) without it.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { podCniArgs, POD_GATEWAY } from '../support/cni-conf';
import type { Sandbox } from '../support/cri-client';
import { startNode, type CriNode } from '../support/cri';
import { connect, listen } from '../support/traffic';
import { nftProgram } from '../../src/redirect/nftables/backend';

const STATUS = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: ['istio-envoy'], imagePullSecrets: null, revision: 'default' });
const ISTIO_ANNOTATIONS = {
  'sidecar.istio.io/status': STATUS,
  'sidecar.istio.io/interceptionMode': 'REDIRECT',
  'traffic.sidecar.istio.io/excludeInboundPorts': '15020',
  'kubectl.kubernetes.io/default-container': 'app',
};

let node: CriNode;

test.before(async () => {
  node = await startNode();
});

test.after.always(async () => {
  if (node) await node.stop();
});

function rulesIn(netnsPath: string): string {
  const out: string[] = [];
  for (const argv of [['iptables-save'], ['ip6tables-save'], [nftProgram(), 'list', 'ruleset']]) {
    const r = spawnSync('nsenter', [`--net=${netnsPath}`, '--', ...argv], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${argv.join(' ')} in ${netnsPath}: ${r.stderr}`);
    out.push(r.stdout);
  }
  return out.join('\n');
}

function addressesIn(netnsPath: string): string {
  return spawnSync('nsenter', [`--net=${netnsPath}`, '--', 'ip', '-4', '-o', 'addr', 'show'], { encoding: 'utf8' }).stdout;
}

async function runPod(name: string, annotations: Record<string, string>): Promise<Sandbox> {
  try {
    return await node.runPodSandbox({ name, namespace: 'shop', annotations });
  } catch (err) {
    throw new Error(`${(err as Error).message}\ncontainerd log:\n${node.containerdLog()}`);
  }
}

async function removePod(id: string): Promise<void> {
  await node.stopPodSandbox(id);
  await node.removePodSandbox(id);
}

test.serial('a meshed pod gets the bridge IP (prevResult passed through), our rules, and outbound TCP lands on 15001', async (t) => {
  const pod = await runPod('cart-1', ISTIO_ANNOTATIONS);
  t.teardown(() => removePod(pod.id).catch(() => undefined));

  t.regex(pod.ip, /^10\.99\.0\.\d+$/, 'PodSandboxStatus reports the IP that bridge/host-local assigned');
  t.true(addressesIn(pod.netnsPath).includes(`${pod.ip}/24`), 'and the pod netns really has it');
  t.true(pod.netnsPath.startsWith('/var/run/netns/cni-'), pod.netnsPath);

  const rules = rulesIn(pod.netnsPath);
  for (const chain of ['ISTIO_INBOUND', 'ISTIO_IN_REDIRECT', 'ISTIO_OUTPUT', 'ISTIO_REDIRECT']) t.true(rules.includes(`:${chain}`), chain);
  t.regex(rules, /--to-ports 15001/);
  t.regex(rules, /--to-ports 15006/);

  // A real listener on the gateway's port 80 in the node netns: without our rules the connection would land there.
  await listen(t, node.netnsPath, 'gateway', ['80']);
  await listen(t, pod.netnsPath, 'proxy', ['15001']);
  const landing = connect(pod.netnsPath, POD_GATEWAY, 80);
  t.is(landing.listener, 'proxy', JSON.stringify(landing));
  t.is(landing.port, 15001);
  t.is(landing.orig, `${POD_GATEWAY}:80`);
});

test.serial('a pod without sidecar.istio.io/status gets no rules and its traffic goes where it was sent', async (t) => {
  const from = node.meshCniLogSize();
  const pod = await runPod('plain-1', { 'kubectl.kubernetes.io/default-container': 'app' });
  t.teardown(() => removePod(pod.id).catch(() => undefined));

  t.regex(pod.ip, /^10\.99\.0\.\d+$/);
  t.notRegex(rulesIn(pod.netnsPath), /ISTIO_|15001|15006/);
  const add = node.meshCniLogSince(from).find((l) => l.command === 'ADD');
  t.is(add?.decision, 'skipped', JSON.stringify(add));
  t.is(add?.reason, 'not-injected', JSON.stringify(add));

  await listen(t, node.netnsPath, 'gateway', ['80']);
  const landing = connect(pod.netnsPath, POD_GATEWAY, 80);
  t.is(landing.listener, 'gateway', JSON.stringify(landing));
});

test.serial('a pod with no annotations at all starts (containerd passes the capability as null) and gets no rules', async (t) => {
  const from = node.meshCniLogSize();
  const pod = await runPod('bare-1', {});
  t.teardown(() => removePod(pod.id).catch(() => undefined));
  t.regex(pod.ip, /^10\.99\.0\.\d+$/);
  t.notRegex(rulesIn(pod.netnsPath), /ISTIO_|15001|15006/);
  const add = node.meshCniLogSince(from).find((l) => l.command === 'ADD');
  t.is(add?.reason, 'not-injected', JSON.stringify(add));
});

test.serial('StopPodSandbox and RemovePodSandbox run our DEL twice; both succeed', async (t) => {
  const pod = await runPod('cart-2', ISTIO_ANNOTATIONS);
  const from = node.meshCniLogSize();
  await node.stopPodSandbox(pod.id);
  t.false(fs.existsSync(pod.netnsPath), 'containerd removed the pod netns after our DEL');
  await node.removePodSandbox(pod.id);
  t.false((await node.listPodSandbox()).some((s) => s.id === pod.id));

  const dels = node.meshCniLogSince(from).filter((l) => l.command === 'DEL');
  t.is(dels.length, 2, JSON.stringify(dels));
  t.is(dels[0]?.netns, pod.netnsPath, 'the first DEL (Stop) has the netns');
  t.falsy(dels[1]?.netns, 'the second DEL (Remove) has none');
  for (const del of dels) {
    t.is(del.containerId, pod.id);
    t.falsy(del.error, JSON.stringify(del));
  }
});

test.serial('CHECK as the runtime calls it: passes on the live pod, fails with 103 after the rules are removed by hand', async (t) => {
  const pod = await runPod('cart-3', ISTIO_ANNOTATIONS);
  t.teardown(() => removePod(pod.id).catch(() => undefined));
  const check = () =>
    node.invokeShim('CHECK', {
      containerId: pod.id,
      netnsPath: pod.netnsPath,
      args: podCniArgs('shop', 'cart-3', pod.id, pod.uid),
      netconf: node.pluginNetconf({
        runtimeConfig: { 'io.kubernetes.cri.pod-annotations': ISTIO_ANNOTATIONS },
        prevResult: node.cachedResult(pod.id),
      }),
    });

  const ok = await check();
  t.is(ok.code, 0, ok.stdout + ok.stderr);

  for (const argv of [['iptables', '-t', 'nat', '-F'], ['iptables', '-t', 'nat', '-X']]) {
    const r = spawnSync('nsenter', [`--net=${pod.netnsPath}`, '--', ...argv], { encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
  }
  const broken = await check();
  t.is(broken.code, 1);
  t.is(broken.json?.code, 103, broken.stdout);
  // every rule flushed: "no rules", not N differences
  t.regex(broken.json?.msg ?? '', /no redirect rules in \S+ \(the pod's \d+ planned rules are all missing\)/);
});
