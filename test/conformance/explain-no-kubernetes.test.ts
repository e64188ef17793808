/**
 * Kubernetes turned off, end to end: containerd's CRI runs a pod sandbox whose conflist entry has no
 * kubeconfig, so the plugin decides from the annotations the runtime passes; `mesh-cni explain
 * --no-kubernetes` then reads the same annotations from the runtime's sandbox and says what was decided, which
 * container list each fact came from, and which facts were assumed. Needs containerd (setup-node-deps.sh).
 */
import test from 'ava';
import * as path from 'node:path';
import { startNode, type CriNode } from '../support/cri';
import { mesh } from '../support/cli';
import { FIXTURES } from './fixtures';

let node: CriNode | undefined;

test.before(async () => {
  node = await startNode();
});

test.after.always(async () => {
  await node?.stop();
});

const explain = (pod: string, extra: string[] = []) =>
  mesh(['explain', pod, '--no-kubernetes', '--cri-socket', node!.socket, '--state-dir', path.join(node!.dir, 'mesh-cni-state'), '--host-netns', node!.netnsPath, ...extra]);

test.serial('explain --no-kubernetes: a native sidecar decided from the status annotation, every assumption named, rules as planned', async (t) => {
  const fixture = FIXTURES.find((f) => f.name === 'cni-native-openshift-uid')!;
  const annotations = fixture.pod.metadata!.annotations!;
  const sandbox = await node!.runPodSandbox({ name: 'api-5f7d2', namespace: 'openshift-app', annotations });
  t.teardown(async () => {
    await node!.stopPodSandbox(sandbox.id).catch(() => undefined);
    await node!.removePodSandbox(sandbox.id).catch(() => undefined);
  });
  const add = node!.meshCniLogSince(0).find((l) => l.command === 'ADD' && l.pod === 'openshift-app/api-5f7d2');
  t.like(add, { decision: 'meshed', source: 'runtime+defaults', level: 'warn' });

  const r = explain('openshift-app/api-5f7d2', ['-o', 'json']);
  t.is(r.code, 0, r.stderr || r.stdout);
  const e = JSON.parse(r.stdout);
  t.like(e, { pod: 'openshift-app/api-5f7d2', uid: sandbox.uid, meshed: true, reason: 'meshed', verdict: 'healthy', netns: { path: sandbox.netnsPath, source: 'attachment', exists: true } });
  const steps = Object.fromEntries(e.trail.map((s: { rule: string }) => [s.rule, s]));
  t.regex(steps['no-istio-proxy'].detail, /istio-proxy in initContainers \(from the sidecar\.istio\.io\/status annotation\)/);
  for (const rule of ['proxyless', 'not-a-sidecar', 'injection-disabled', 'proxy-settings']) t.is(steps[rule].outcome, 'assumed', rule);
  // The pod's proxy really runs as 1000620000: with Kubernetes off that cannot be known, and explain says so.
  const assumed = e.assumed.join('\n');
  for (const fact of [/proxy uid\/gid 1337/, /DISABLE_ENVOY/, /proxy type sidecar/, /ISTIO_META_DNS_CAPTURE/]) t.regex(assumed, fact);
  t.true(e.expected.some((rule: { rule: string }) => /--uid-owner 1337/.test(rule.rule)));
  // Today's layout: every protocol goes from nat OUTPUT into the output chain, not TCP alone.
  const outputJumps = e.expected.filter((rule: { table: string; chain: string; rule: string }) => rule.table === 'nat' && /^output$/i.test(rule.chain) && /(-j ISTIO_OUTPUT|jump istio-output)$/.test(rule.rule));
  t.is(outputJumps.length, 1, JSON.stringify(outputJumps));
  t.notRegex(outputJumps[0].rule, /tcp/);

  const text = explain('openshift-app/api-5f7d2');
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /decided from the annotations alone \(Kubernetes turned off\); assumed:/);
  t.regex(text.stdout, /^ {2}proxyless\s+assumed\s+DISABLE_ENVOY unknown/m);
  t.regex(text.stdout, /^verdict: healthy$/m);
});

test.serial('explain --no-kubernetes: a pod without sidecar status is not meshed, and the runtime is where the netns was found', async (t) => {
  const sandbox = await node!.runPodSandbox({ name: 'legacy-batch', namespace: 'shop', annotations: { 'kubectl.kubernetes.io/default-container': 'app' } });
  t.teardown(async () => {
    await node!.stopPodSandbox(sandbox.id).catch(() => undefined);
    await node!.removePodSandbox(sandbox.id).catch(() => undefined);
  });
  const r = explain('shop/legacy-batch', ['-o', 'json']);
  t.is(r.code, 0, r.stderr || r.stdout);
  const e = JSON.parse(r.stdout);
  t.like(e, { meshed: false, reason: 'not-injected', verdict: 'not-meshed', problem: null, netns: { path: sandbox.netnsPath, source: 'cri' } });
  t.like(e.trail.at(-1), { rule: 'not-injected', outcome: 'skip' });

  const missing = explain('shop/no-such-pod');
  t.is(missing.code, 1);
  t.regex(missing.stderr, /has no ready sandbox for pod shop\/no-such-pod/);
});
