/**
 * Conformance: every fixture of ./fixtures.ts (injected pods in the shapes Istio's injector emits today) is
 * created in a real kube-apiserver, then ADDed into a fresh network namespace through the native shim, three
 * ways:
 *   (a) agent:         the agent process (watching this node's pods), the netconf carrying the pod's
 *                      annotations as containerd passes them (runtimeConfig io.kubernetes.cri.pod-annotations);
 *   (b) standalone:    no agent, the standalone engine, a kubeconfig and no runtime annotations: a pod GET;
 *   (c) no-kubernetes: an agent started with --no-kubernetes, no kubeconfig: the annotations alone.
 * Each path asserts meshed or not, the skip reason, its metadata source, and the uid/gid really present in
 * the rules read back from the netns (iptables-save). Where (c) cannot know a fact, the fixture says what it
 * does instead and why, and the test asserts that.
 *
 * kube-apiserver 1.20 predates native sidecars: see STRIPPED_FOR_APISERVER_1_20. The test asserts what the
 * apiserver kept, and that the decision needs none of the stripped fields.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { decideMeshing } from '../../src/mesh/decision';
import { podInfoFromPod } from '../../src/kube/pod-api';
import { trimPod } from '../../src/kube/pod-cache';
import { httpGet, metricValue, startAgentProcess, type AgentProcess } from '../support/agent';
import { startKube, type Kube } from '../support/kube';
import { createNetns, netnsPath } from '../support/netns';
import { REPO_ROOT } from '../support/paths';
import { execShim } from '../support/shim';
import { fileTempDir } from '../support/tmp';
import { FIXTURES, forApiserver120, type Fixture, type Outcome } from './fixtures';
import { stripOwnerTags } from '../../src/redirect/iptables/render';

const NODE = 'node-conformance';
const dir = fileTempDir('conformance');
const logFile = path.join(dir, 'cni.log');

let kube: Kube | undefined;
let agent: AgentProcess | undefined;
let noKube: AgentProcess | undefined;
const stored = new Map<string, V1Pod>();
const strippedFields = new Map<string, string[]>();
let containerSerial = 0;

test.before(async () => {
  execFileSync(process.execPath, [path.join(REPO_ROOT, 'scripts', 'build-native.js')], { stdio: 'pipe' });
  kube = await startKube();
  const core = kube.core();
  const namespaces = new Map<string, Record<string, string>>();
  for (const f of FIXTURES) namespaces.set(f.namespace, { ...namespaces.get(f.namespace), ...f.namespaceLabels });
  for (const [name, labels] of namespaces) {
    if (name === 'kube-system') continue;
    await core.createNamespace({ body: { metadata: { name, labels } } });
  }
  for (const f of FIXTURES) {
    const { pod, stripped } = forApiserver120(f.pod);
    pod.spec!.nodeName = NODE;
    const created = await core.createNamespacedPod({ namespace: f.namespace, body: pod });
    stored.set(f.name, created);
    strippedFields.set(f.name, stripped);
  }
  const common = ['--no-install', '--health-port', '0', '--health-host', '127.0.0.1', '--state-dir'];
  agent = await startAgentProcess(
    ['--kubeconfig', kube.kubeconfig, '--node-name', NODE, '--socket', path.join(dir, 'agent.sock'), '--repair-mode', 'off', ...common, path.join(dir, 'agent-state')],
    path.join(dir, 'agent.log'),
  );
  noKube = await startAgentProcess(['--no-kubernetes', '--socket', path.join(dir, 'no-kube.sock'), ...common, path.join(dir, 'no-kube-state')], path.join(dir, 'no-kube.log'));
  // kubelet only runs a pod's sandbox once the pod is bound to the node, which the watch sees first.
  const deadline = Date.now() + 20_000;
  for (;;) {
    const cached = metricValue((await httpGet(agent.healthPort, '/metrics')).body, 'mesh_cni_pods_cached');
    if (cached >= FIXTURES.length) break;
    if (Date.now() > deadline) throw new Error(`the agent's watch cache holds ${cached} of ${FIXTURES.length} pods\n${agent.log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
});

test.after.always(async () => {
  await agent?.stop();
  await noKube?.stop();
  await kube?.stop();
});

type PathName = 'agent' | 'standalone' | 'no-kubernetes';

interface Added {
  code: number;
  stdout: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  line: Record<string, any>;
  rules: string;
}

function netconf(via: PathName, pod: V1Pod): Record<string, unknown> {
  return {
    cniVersion: '1.0.0',
    name: 'conformance',
    type: 'mesh-cni',
    backend: 'iptables',
    log_file: logFile,
    state_dir: path.join(dir, `${via}-state`),
    ...(via === 'no-kubernetes' ? {} : { kubernetes: { kubeconfig: kube!.kubeconfig } }),
    // containerd hands the plugin the pod's annotations as kubelet gave them to the sandbox.
    ...(via === 'standalone' ? {} : { capabilities: { 'io.kubernetes.cri.pod-annotations': true }, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': pod.metadata?.annotations ?? {} } }),
  };
}

async function add(t: ExecutionContext, via: PathName, pod: V1Pod): Promise<Added> {
  const ns = createNetns(t, 'conf');
  const id = `conformance${++containerSerial}`;
  const socket = via === 'agent' ? path.join(dir, 'agent.sock') : via === 'no-kubernetes' ? path.join(dir, 'no-kube.sock') : path.join(dir, 'absent.sock');
  const r = await execShim(
    {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: id,
      CNI_NETNS: netnsPath(ns),
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/opt/cni/bin',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${pod.metadata!.namespace};K8S_POD_NAME=${pod.metadata!.name};K8S_POD_INFRA_CONTAINER_ID=${id};K8S_POD_UID=${pod.metadata!.uid}`,
      MESH_CNI_AGENT_SOCKET: socket,
      MESH_CNI_LOG_FILE: logFile,
    },
    netconf(via, pod),
  );
  const line = r.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((l) => l.command === 'ADD') ?? {};
  const save = spawnSync('nsenter', [`--net=${netnsPath(ns)}`, '--', 'iptables-save'], { encoding: 'utf8' });
  if (save.status !== 0) throw new Error(`iptables-save in ${ns}: ${save.stderr}`);
  // The fixtures state Istio's rule shapes; our owner tag on built-in-chain rules is pinned by the goldens and
  // test/fault/foreign-rules, so it is left out here.
  return { code: r.code, stdout: r.stdout, line, rules: stripOwnerTags(save.stdout) };
}

function owners(rules: string, kind: 'uid' | 'gid'): number[] {
  return [...new Set([...rules.matchAll(new RegExp(`--${kind}-owner (\\d+)`, 'g'))].map((m) => Number(m[1])))].sort();
}

function assertOutcome(t: ExecutionContext, via: PathName, f: Fixture, got: Added, want: Outcome): void {
  const where = `${f.name} via ${via}: ${JSON.stringify(got.line)}`;
  t.is(got.code, 0, `${where}\n${got.stdout}`);
  if (want.reason === 'meshed') {
    t.is(got.line.decision, 'meshed', where);
    t.deepEqual(owners(got.rules, 'uid'), [want.uid!], `${where}: the uid the rules exempt`);
    t.deepEqual(owners(got.rules, 'gid'), [want.gid!], `${where}: the gid the rules exempt`);
    t.regex(got.rules, /^-A OUTPUT -j ISTIO_OUTPUT$/m, where);
    t.regex(got.rules, /-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006/, where);
  } else {
    t.is(got.line.decision, 'skipped', where);
    t.is(got.line.reason, want.reason, where);
    t.notRegex(got.rules, /ISTIO_/, `${where}: a pod that is not meshed gets no rule`);
  }
  for (const re of want.rules ?? []) t.regex(got.rules, re, where);
  for (const re of want.noRules ?? []) t.notRegex(got.rules, re, where);
}

const BEFORE_ANY_LOOKUP = new Set(['own-agent-pod', 'namespace-excluded']);

for (const f of FIXTURES) {
  test.serial(`conformance ${f.name}: ${f.about}`, async (t) => {
    const pod = stored.get(f.name)!;
    const early = BEFORE_ANY_LOOKUP.has(f.expect.reason);

    // What the apiserver kept of a native sidecar: istio-proxy stays in initContainers, which is all the
    // decision reads (as Istio's plugin: it never looks at restartPolicy or the probes).
    const proxyInInit = pod.spec?.initContainers?.some((c) => c.name === 'istio-proxy') ?? false;
    const writtenNative = f.pod.spec?.initContainers?.some((c) => c.name === 'istio-proxy') ?? false;
    t.is(proxyInInit, writtenNative, 'istio-proxy kept its list');
    if (writtenNative) {
      t.true(strippedFields.get(f.name)!.includes('initContainers[istio-proxy].readinessProbe'), 'kube-apiserver 1.20 refuses probes on init containers: stripped, and the decision does not need them');
      t.is((f.pod.spec!.initContainers!.find((c) => c.name === 'istio-proxy') as { restartPolicy?: string }).restartPolicy, 'Always', 'written as a native sidecar');
      t.is((pod.spec!.initContainers!.find((c) => c.name === 'istio-proxy') as { restartPolicy?: string }).restartPolicy, undefined, 'kube-apiserver 1.20 dropped the restartPolicy it does not know on decode');
    }

    // The pure decision on the stored pod: what the reconciler, `pods` and `explain` use.
    const decided = decideMeshing({ ...podInfoFromPod(pod), namespaceLabels: f.namespaceLabels ?? {} }, { excludeNamespaces: ['kube-system'] });
    t.is(decided.meshed ? 'meshed' : decided.reason, f.expect.reason, 'the decision on the stored pod');
    // The agent's cache keeps only the fields the decision and the reconciler read: the same decision, config and all.
    const fromTrimmed = decideMeshing({ ...podInfoFromPod(trimPod(pod)), namespaceLabels: f.namespaceLabels ?? {} }, { excludeNamespaces: ['kube-system'] });
    t.deepEqual(fromTrimmed, decided, 'the trimmed pod the watch cache holds decides exactly as the whole pod');
    t.true(JSON.stringify(trimPod(pod)).length < JSON.stringify(pod).length, 'trimmed');

    const a = await add(t, 'agent', pod);
    assertOutcome(t, 'agent', f, a, f.expect);
    t.is(a.line.source, early ? 'cni-args' : 'cache', 'the agent decided from its watch cache');

    const b = await add(t, 'standalone', pod);
    assertOutcome(t, 'standalone', f, b, f.expect);
    t.is(b.line.source, early ? 'cni-args' : 'api', 'the standalone engine read the pod from the API');

    const c = await add(t, 'no-kubernetes', pod);
    const want = f.annotationsOnly ?? f.expect;
    assertOutcome(t, 'no-kubernetes', f, c, want);
    if (f.annotationsOnly) t.log(`with Kubernetes off: ${want.reason} (${f.annotationsOnly.why})`);
    if (!early) t.true(['runtime', 'runtime+defaults'].includes(c.line.source), `decided from the annotations: ${c.line.source}`);
    if (c.line.source === 'runtime+defaults' && want.reason === 'meshed') {
      t.regex((c.line.notes ?? []).join('\n'), /assumed: .*proxy uid\/gid 1337/, 'the log names the facts it assumed');
      t.is(c.line.level, 'warn');
    }
  });
}

test.serial('conformance: at least 25 fixtures, covering every skip reason a pod can have', (t) => {
  t.true(FIXTURES.length >= 25, `${FIXTURES.length} fixtures`);
  const reasons = new Set(FIXTURES.map((f) => f.expect.reason));
  for (const r of ['meshed', 'own-agent-pod', 'namespace-excluded', 'ambient', 'has-istio-init', 'proxyless', 'no-istio-proxy', 'not-a-sidecar', 'injection-disabled', 'interception-mode-none']) {
    t.true(reasons.has(r), r);
  }
});

test.serial("conformance: the agent's metrics count ADDs by decision and reason", async (t) => {
  const text = (await httpGet(agent!.healthPort, '/metrics')).body;
  for (const f of FIXTURES) {
    const labels = f.expect.reason === 'meshed' ? { decision: 'meshed', reason: 'meshed' } : { decision: 'skipped', reason: f.expect.reason };
    t.true(metricValue(text, 'mesh_cni_add_decisions_total', labels) >= 1, `${f.name}: ${JSON.stringify(labels)}`);
  }
  t.true(fs.existsSync(logFile));
});
