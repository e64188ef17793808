/** ADD / DEL / CHECK / GC / STATUS through the dispatcher with a recording engine: what is called, what is printed. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { testTempDir } from '../support/tmp';
import { AttachmentStore } from '../../src/state/attachments';
import test from 'ava';
import { NetnsNotFoundError } from '../../src/errors';
import { CniCode, CniError } from '../../src/errors';
import type { PodInfo } from '../../src/mesh/decision';
import { INJECTED, netconf, recordingEngine, run, unitDeps, withAnnotations } from './helpers';

const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/cni-test' }], ips: [{ address: '10.244.0.5/24', interface: 0 }] };

test('ADD of an injected pod applies rules once, with the netconf backend, and passes prevResult through', async (t) => {
  const deps = unitDeps();
  const r = await run('ADD', withAnnotations(INJECTED, { prevResult: prev, backend: 'nftables' }), deps);
  t.is(r.exitCode, 0, r.stdout);
  t.deepEqual(r.json, prev);
  t.like(deps.engine.calls, [{ fn: 'apply', netns: '/var/run/netns/cni-test', config: { mode: 'REDIRECT', proxyUid: 1337 }, backend: 'nftables' }]);
  t.is(deps.engine.calls.length, 1);
  const line = JSON.parse(r.stderr);
  t.like(line, { command: 'ADD', pod: 'shop/cart-7d9', decision: 'meshed', source: 'runtime+defaults', rules: 12, level: 'warn' });
  t.true(line.notes[0].includes('decided from annotations alone'), line.notes[0]);
  t.true(line.notes[0].includes('proxy uid/gid 1337'), 'the log names the facts it assumed');
});

test('ADD of a pod that is not injected passes through without the engine', async (t) => {
  const deps = unitDeps();
  const r = await run('ADD', withAnnotations({}, { prevResult: prev }), deps);
  t.deepEqual(r.json, prev);
  t.deepEqual(deps.engine.calls, []);
  t.like(JSON.parse(r.stderr), { decision: 'skipped', reason: 'not-injected' });
});

test('ADD without K8S_POD_NAME passes through (not a Kubernetes pod)', async (t) => {
  const deps = unitDeps();
  const r = await run('ADD', netconf({ prevResult: prev }), deps, { CNI_ARGS: 'IgnoreUnknown=1' });
  t.is(r.exitCode, 0);
  t.deepEqual(deps.engine.calls, []);
  t.like(JSON.parse(r.stderr), { reason: 'not-a-kubernetes-pod' });
});

test('ADD in an excluded namespace needs no metadata source at all', async (t) => {
  const deps = unitDeps();
  const r = await run('ADD', netconf(), deps, { CNI_ARGS: 'K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns' });
  t.is(r.exitCode, 0, r.stdout);
  t.like(JSON.parse(r.stderr), { reason: 'namespace-excluded', source: 'cni-args' });
});

test('ADD through an agent with Kubernetes on but no kubeconfig waits for its watch cache, never assumes', async (t) => {
  let lookups = 0;
  let clock = 0;
  const pod: PodInfo = { name: 'cart-7d9', namespace: 'shop', labels: {}, annotations: INJECTED, containers: [{ name: 'istio-proxy', list: 'initContainers' }], proxy: { lists: ['initContainers'], env: {}, runAsUser: 1000620000, runAsGroup: 1000620000 } };
  const timing = { now: () => clock, sleep: async (ms: number) => void (clock += ms) };
  const late = unitDeps({ ...timing, podCache: { lookup: async () => (++lookups >= 3 ? pod : undefined) } });
  const r = await run('ADD', withAnnotations(INJECTED), late);
  t.is(r.exitCode, 0, r.stdout);
  t.like(JSON.parse(r.stderr), { decision: 'meshed', source: 'cache' });
  t.like(late.engine.calls[0]!.config, { proxyUid: 1000620000, proxyGid: 1000620000 });
  const never = unitDeps({ ...timing, podCache: { lookup: async () => undefined } });
  const r2 = await run('ADD', withAnnotations(INJECTED), never);
  t.is(JSON.parse(r2.stdout).code, 11, 'kubelet retries');
  t.deepEqual(never.engine.calls, []);
  t.true(clock >= 30_000, 'it waited the lookup budget (30 s)');
});

test('ADD of our own agent pod needs no metadata source, not even a readable kubeconfig', async (t) => {
  const deps = unitDeps({
    podCache: { lookup: async () => t.fail('the cache must not be asked') as never },
    fetchPod: async () => t.fail('the API must not be asked') as never,
  });
  const args = 'K8S_POD_NAMESPACE=mesh-cni-system;K8S_POD_NAME=mesh-cni-x7k2p';
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: '/nonexistent/kubeconfig' } }), deps, { CNI_ARGS: args });
  t.is(r.exitCode, 0, r.stdout);
  t.like(JSON.parse(r.stderr), { decision: 'skipped', reason: 'own-agent-pod', source: 'cni-args' });
  // The netconf names the agent's namespace and prefix when the DaemonSet is installed elsewhere.
  const custom = await run('ADD', netconf({ kubernetes: { agent_namespace: 'istio-system', agent_pod_prefix: 'mesh-' } }), unitDeps(), { CNI_ARGS: 'K8S_POD_NAMESPACE=istio-system;K8S_POD_NAME=mesh-abc' });
  t.like(JSON.parse(custom.stderr), { reason: 'own-agent-pod' });
  const other = await run('ADD', netconf(), unitDeps(), { CNI_ARGS: 'K8S_POD_NAMESPACE=mesh-cni-system;K8S_POD_NAME=debug' });
  t.is(other.exitCode, 1, 'any other pod there still needs a metadata source');
  t.is(JSON.parse(other.stdout).code, 7);
});

test('ADD with interception mode NONE applies nothing', async (t) => {
  const deps = unitDeps();
  const r = await run('ADD', withAnnotations({ ...INJECTED, 'sidecar.istio.io/interceptionMode': 'NONE' }), deps);
  t.is(r.exitCode, 0);
  t.deepEqual(deps.engine.calls, []);
});

test('ADD asks the agent cache before the API, and the cache has the spec', async (t) => {
  const cached: PodInfo = { name: 'cart-7d9', namespace: 'shop', labels: {}, annotations: INJECTED, containers: [{ name: 'istio-proxy', list: 'containers' }], proxy: { lists: ['containers'], env: {}, runAsUser: 1500 } };
  let fetched = 0;
  const deps = unitDeps({
    podCache: { lookup: async () => cached },
    fetchPod: async () => {
      fetched++;
      return {};
    },
    buildConfig: (_a, proxy) => ({ mode: 'REDIRECT', proxy }) as never,
  });
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: '/etc/kubeconfig' } }), deps);
  t.is(r.exitCode, 0, r.stdout);
  t.is(fetched, 0);
  t.deepEqual((deps.engine.calls[0]!.config as unknown as { proxy: unknown }).proxy, { proxyUid: 1500 });
  t.like(JSON.parse(r.stderr), { source: 'cache' });
});

test('DEL removes our rules and prints nothing', async (t) => {
  const deps = unitDeps();
  const r = await run('DEL', netconf({ prevResult: prev }), deps);
  t.is(r.exitCode, 0);
  t.is(r.stdout, '');
  t.deepEqual(deps.engine.calls, [{ fn: 'remove', netns: '/var/run/netns/cni-test', backend: 'auto' }]);
});

test('DEL twice succeeds twice', async (t) => {
  const deps = unitDeps();
  t.is((await run('DEL', netconf(), deps)).exitCode, 0);
  t.is((await run('DEL', netconf(), deps)).exitCode, 0);
});

test('DEL with an empty CNI_NETNS (RemovePodSandbox) succeeds without the engine', async (t) => {
  const deps = unitDeps();
  const r = await run('DEL', netconf(), deps, { CNI_NETNS: '' });
  t.is(r.exitCode, 0);
  t.deepEqual(deps.engine.calls, []);
});

test('DEL when the netns is already gone succeeds without the engine', async (t) => {
  const deps = unitDeps({ classifyNetns: () => 'missing' });
  t.is((await run('DEL', netconf(), deps)).exitCode, 0);
  t.deepEqual(deps.engine.calls, []);
});

test('DEL when the engine finds the netns gone (race) succeeds', async (t) => {
  const deps = unitDeps({ engine: recordingEngine({ removeRedirect: async (o) => Promise.reject(new NetnsNotFoundError(o.netns)) }) });
  t.is((await run('DEL', netconf(), deps)).exitCode, 0);
});

test('DEL needs no pod metadata, even for a pod we cannot look up', async (t) => {
  const r = await run('DEL', netconf(), unitDeps());
  t.is(r.exitCode, 0, r.stdout);
});

test('CHECK of a meshed pod asks the engine and succeeds when rules match', async (t) => {
  const deps = unitDeps();
  const r = await run('CHECK', withAnnotations(INJECTED, { prevResult: prev }), deps);
  t.is(r.exitCode, 0, r.stdout);
  t.is(r.stdout, '');
  t.is(deps.engine.calls[0]!.fn, 'check');
});

test('CHECK of a pod that is not meshed does not ask the engine', async (t) => {
  const deps = unitDeps();
  t.is((await run('CHECK', withAnnotations({}), deps)).exitCode, 0);
  t.deepEqual(deps.engine.calls, []);
});

test('ADD records the attachment, DEL forgets it, GC drops records not in the valid list', async (t) => {
  const dir = testTempDir(t, 'state');
  const attachments = new AttachmentStore(dir);
  const deps = unitDeps({ attachments });
  t.is((await run('ADD', withAnnotations(INJECTED), deps)).exitCode, 0);
  t.like(attachments.list(), [{ containerId: 'abc123', ifName: 'eth0', netns: '/var/run/netns/cni-test', pod: { namespace: 'shop', name: 'cart-7d9', uid: 'uid-1' } }]);
  t.is((await run('ADD', withAnnotations(INJECTED), deps, { CNI_CONTAINERID: 'other' })).exitCode, 0);
  t.is(attachments.list().length, 2);
  const gc = await run('GC', netconf({ 'cni.dev/valid-attachments': [{ containerID: 'abc123', ifname: 'eth0' }] }, '1.1.0'), deps, { CNI_CONTAINERID: undefined, CNI_NETNS: undefined, CNI_IFNAME: undefined });
  t.is(gc.exitCode, 0, gc.stdout);
  t.deepEqual(attachments.list().map((a) => a.containerId), ['abc123']);
  t.is((await run('DEL', withAnnotations(INJECTED), deps)).exitCode, 0);
  t.deepEqual(attachments.list(), []);
});

test('ADD still succeeds fully when the state directory cannot be written', async (t) => {
  // A regular file where the state directory should be: every write fails (as on a read-only disk).
  const dir = testTempDir(t, 'state');
  writeFileSync(join(dir, 'attachments'), '');
  const deps = unitDeps({ attachments: new AttachmentStore(dir) });
  const r = await run('ADD', withAnnotations(INJECTED), deps);
  t.is(r.exitCode, 0, r.stdout);
  t.is(deps.engine.calls.length, 1);
  t.true(JSON.parse(r.stderr).notes.some((n: string) => n.includes('attachment state not recorded')));
});

test('STATUS succeeds silently when ready', async (t) => {
  const r = await run('STATUS', netconf({}, '1.1.0'), unitDeps());
  t.is(r.exitCode, 0);
  t.is(r.stdout, '');
});

test('STATUS standalone checks the backend programs (this machine has iptables and nft)', async (t) => {
  const deps = unitDeps();
  delete deps.status;
  const r = await run('STATUS', netconf({}, '1.1.0'), deps);
  t.is(r.exitCode, 0, r.stdout);
});

test('a command that throws a CniError is not wrapped again', async (t) => {
  const deps = unitDeps({ engine: recordingEngine({ applyRedirect: async () => Promise.reject(new CniError(CniCode.TryAgainLater, 'busy', 'lock held')) }) });
  const r = await run('ADD', withAnnotations(INJECTED), deps);
  t.deepEqual(r.json, { cniVersion: '1.0.0', code: 11, msg: 'busy', details: 'lock held' });
});

test('ADD: a null pod-annotations capability (containerd 1.6, pod without annotations) is an unmeshed pod, not a missing source', async (t) => {
  const deps = unitDeps();
  const prevResult = { cniVersion: '1.0.0', ips: [{ address: '10.99.0.2/24' }] };
  const r = await run('ADD', netconf({ capabilities: { 'io.kubernetes.cri.pod-annotations': true }, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': null }, prevResult }), deps);
  t.is(r.exitCode, 0, r.stdout);
  t.deepEqual(r.json, prevResult);
  t.deepEqual(deps.engine.calls, []);
});

test('a conflist still carrying agent_socket (older installers wrote it) keeps ADD working, and the log says it is ignored', async (t) => {
  for (const value of ['/var/run/mesh-cni/agent.sock', 'relative.sock']) {
    const deps = unitDeps();
    const r = await run('ADD', withAnnotations(INJECTED, { prevResult: prev, agent_socket: value }), deps);
    t.is(r.exitCode, 0, r.stdout);
    t.deepEqual(r.json, prev);
    t.is(deps.engine.calls.length, 1, 'the pod is still programmed');
    const line = JSON.parse(r.stderr);
    t.like(line, { decision: 'meshed' });
    t.true(line.notes.some((n: string) => /agent_socket is ignored/.test(n)), JSON.stringify(line.notes));
  }
  const plain = JSON.parse((await run('ADD', withAnnotations(INJECTED, { prevResult: prev }), unitDeps())).stderr);
  t.false((plain.notes ?? []).some((n: string) => /agent_socket/.test(n)), 'no note without the key');
});
