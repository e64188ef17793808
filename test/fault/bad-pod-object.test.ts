/**
 * Fault: the API server sends a pod the agent cannot read (`spec.containers` an object, a container that is
 * null, an object that is not one). A real kube-apiserver refuses to store such a pod (its typed decoding
 * rejects the create or patch), so these run against a real HTTP server of the test's that answers the
 * agent's list and watch requests as the API server's handlers do, with the bad objects in the list and in
 * the watch stream. One bad object must never stop the agent or its watch: it is left out of the cache (a
 * cached pod whose new version is bad goes too: what the cache held is out of date), logged and counted,
 * and every good pod before and after it is served.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { NodePodCache } from '../../src/kube/pod-cache';
import { showRedirect } from '../../src/redirect/engine';
import { httpGet, metricValue, startAgentProcess } from '../support/agent';
import { execShim } from '../support/shim';
import { testTempDir } from '../support/tmp';
import { requireKernelTools } from '../support/require';
import { createNetns, netnsPath } from '../support/netns';
import { STATUS_ANNOTATION } from '../cni/helpers';

const NODE = 'node-bad';
let version = 100;

function pod(name: string, spec: Record<string, unknown> = { containers: [{ name: 'app' }, { name: 'istio-proxy' }] }) {
  return { metadata: { name, namespace: 'shop', uid: `uid-${name}`, resourceVersion: String(++version), annotations: { 'sidecar.istio.io/status': STATUS_ANNOTATION } }, spec: { nodeName: NODE, ...spec }, status: {} };
}

const containersAnObject = (name: string) => pod(name, { containers: { name: 'istio-proxy' } });
const containerNull = (name: string) => pod(name, { containers: [null] });

/** What the server lists, then streams on the watch (each a watch event), and how many of them are bad. */
interface Script {
  list: unknown[];
  watch: Array<{ type: string; object: unknown }>;
}

/** An API server for /api/v1/pods only: the list, then one watch that sends the script's events and stays open. */
async function fakeApiServer(t: ExecutionContext, script: Script, dir: string): Promise<string> {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname !== '/api/v1/pods' || url.searchParams.get('fieldSelector') !== `spec.nodeName=${NODE}`) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/json' });
    if (url.searchParams.get('watch') !== 'true') return void res.end(JSON.stringify({ kind: 'PodList', metadata: { resourceVersion: '100' }, items: script.list }));
    // Events are written one by one, as the API server does, and the watch then stays open.
    for (const event of script.watch) res.write(`${JSON.stringify(event)}\n`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const kubeconfig = path.join(dir, 'kubeconfig');
  const port = (server.address() as AddressInfo).port;
  fs.writeFileSync(kubeconfig, JSON.stringify({
    'current-context': 'c',
    contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
    clusters: [{ name: 'k', cluster: { server: `http://127.0.0.1:${port}` } }],
    users: [{ name: 'u', user: { token: 'test-token' } }],
  }));
  return kubeconfig;
}

/**
 * Good pods around bad ones: in the watch, a cached pod whose new version is bad, and (`badList`) in the list.
 * Without bad ones in the list, the watch alone is tried: that is where one bad pod used to end the agent.
 */
function script(badList: boolean): Script {
  return {
    list: [pod('listed'), ...(badList ? [containersAnObject('bad-in-list'), 'not a pod'] : []), pod('changes-to-bad')],
    watch: [
      { type: 'ADDED', object: containersAnObject('bad-in-watch') },
      { type: 'ADDED', object: [] },
      { type: 'ADDED', object: containerNull('null-container') },
      { type: 'MODIFIED', object: containersAnObject('changes-to-bad') },
      { type: 'ADDED', object: pod('after-bad') },
    ],
  };
}
const BAD_IN_WATCH = 4;
const BAD_IN_LIST = 2;

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test.serial('fault bad-pod: bad pods in the list and the watch: the pod cache leaves out what it cannot read, counts it, and keeps listing and watching', async (t) => {
  const dir = testTempDir(t, 'bad-pod');
  const kubeconfigPath = await fakeApiServer(t, script(true), dir);
  const bad: string[] = [];
  const errors: unknown[] = [];
  const cache = await NodePodCache.start({ nodeName: NODE, kubeconfigPath, onBadPod: (err) => bad.push(String(err)), onError: (err) => errors.push(err) });
  t.teardown(() => cache.stop());
  await until('the pod after the bad ones', () => Boolean(cache.get('shop', 'after-bad')));
  t.true(cache.watching(), 'synced and watching');
  t.deepEqual(cache.pods().map((p) => p.metadata?.name).sort(), ['after-bad', 'listed']);
  t.is(cache.stats.badPods, BAD_IN_LIST + BAD_IN_WATCH, bad.join('\n'));
  t.is(cache.stats.lists, 1, 'one list: no relist loop');
  t.deepEqual(errors, []);
});

test.serial('fault bad-pod: bad pods in the watch: the agent lives on, logs and counts each bad pod, and serves an ADD from the pod watched after them', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'bad-pod-agent');
  const kubeconfig = await fakeApiServer(t, script(false), dir);
  const socket = path.join(dir, 'agent.sock');
  const agent = await startAgentProcess(
    ['--health-port', '0', '--health-host', '127.0.0.1', '--kubeconfig', kubeconfig, '--node-name', NODE, '--no-install', '--repair-mode', 'off', '--socket', socket, '--state-dir', path.join(dir, 'state')],
    path.join(dir, 'agent.log'),
  );
  t.teardown(() => agent.stop());
  await until('the agent caches the pod after the bad ones', async () => {
    if (agent.service.exited()) throw new Error(`the agent exited:\n${agent.log()}`);
    const pods = await httpGet(agent.healthPort, '/pods');
    return pods.body.includes('"after-bad"');
  });
  t.false(agent.service.exited(), 'the agent is alive');
  t.deepEqual((JSON.parse((await httpGet(agent.healthPort, '/pods')).body) as { pods: Array<{ name: string }> }).pods.map((p) => p.name).sort(), ['after-bad', 'listed']);
  t.is(metricValue((await httpGet(agent.healthPort, '/metrics')).body, 'mesh_cni_pod_cache_bad_objects_total'), BAD_IN_WATCH);
  const logged = agent.lines().filter((l) => /cannot be read/.test(String(l.msg))).map((l) => String(l.pod));
  t.deepEqual(logged.sort(), ['?/?', 'shop/bad-in-watch', 'shop/changes-to-bad', 'shop/null-container']);

  // The pod the watch brought after the bad ones is meshed from the cache (the runtime passes no annotations).
  const ns = createNetns(t, 'badpod');
  const conf = { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables-nft', log_file: path.join(dir, 'cni.log'), state_dir: path.join(dir, 'state') };
  const add = await execShim({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'badpod1', CNI_NETNS: netnsPath(ns), CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=after-bad;K8S_POD_UID=uid-after-bad', MESH_CNI_AGENT_SOCKET: socket }, conf);
  t.is(add.code, 0, add.stdout);
  t.true((await showRedirect({ netns: netnsPath(ns), backend: 'iptables-nft' })).rules.length > 0, 'the pod netns holds the redirect');
  await until('the ADD in the request log', () => fs.existsSync(path.join(dir, 'cni.log')) && fs.readFileSync(path.join(dir, 'cni.log'), 'utf8').includes('badpod1'));
  const line = fs.readFileSync(path.join(dir, 'cni.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.containerId === 'badpod1');
  t.is(line?.source, 'cache', JSON.stringify(line));
});
