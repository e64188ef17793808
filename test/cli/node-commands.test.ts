/**
 * status, pods, explain, repair and the --pod flag, run as a person on the node runs them (the built CLI, a
 * separate process) against a real kube-apiserver + etcd, real netns with real rules, and the agent as its
 * own process. Text and JSON are both checked, and the failure cases: pod not found, not on this node,
 * netns gone, no API, agent down.
 *
 * MESH_CNI_CLI_TRANSCRIPT=FILE writes the walk-through's commands and output to FILE (docs/cli.md quotes it).
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { mesh, type CliResult } from '../support/cli';
import { NODE, startCliNode, type CliNode, type NodePod } from '../support/cli-node';
import { freePort } from '../support/kube';
import { requireKernelTools } from '../support/require';

let node: CliNode | undefined;
let cart: NodePod;
let orders: NodePod;

const transcript = process.env.MESH_CNI_CLI_TRANSCRIPT;

function note(args: string[], r: CliResult): void {
  if (transcript) fs.appendFileSync(transcript, `$ mesh-cni ${args.join(' ')}\n${r.stdout}${r.stderr}[exit ${r.code}]\n\n`);
}

function ok(t: ExecutionContext, r: CliResult, code = 0): CliResult {
  t.is(r.code, code, `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return r;
}

const json = (r: CliResult) => JSON.parse(r.stdout);

test.before(async () => {
  node = await startCliNode();
  // Two meshed pods with sandboxes, one plain pod, one in an excluded namespace.
  cart = node.sandbox(await node.createPod({ namespace: 'shop', name: 'cart' }), 'cart');
  orders = node.sandbox(await node.createPod({ namespace: 'shop', name: 'orders', annotations: { 'traffic.sidecar.istio.io/excludeOutboundPorts': '5432' } }), 'orders');
  await node.createPod({ namespace: 'shop', name: 'legacy-batch', meshed: false, labels: { app: 'cart' } });
  await node.createPod({ namespace: 'kube-system', name: 'coredns', labels: { app: 'cart' } });
  await node.startAgent();
});

test.after.always(async () => {
  if (node) await node.stop();
});

/** Deletes the jump from nat OUTPUT into our chain, with the tool of the backend that programmed it. */
function breakOutputJump(t: ExecutionContext, netns: string, backend: string): void {
  const name = path.basename(netns);
  if (backend === 'nftables') {
    ok(t, node!.run(['remove', '--pod', 'shop/orders']));
    return;
  }
  const r = spawnSync('ip', ['netns', 'exec', name, `${backend === 'iptables-legacy' ? 'iptables-legacy' : 'iptables-nft'}`, '-t', 'nat', '-D', 'OUTPUT', '-m', 'comment', '--comment', 'mesh-cni/to-istio-output', '-j', 'ISTIO_OUTPUT'], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
}

test.serial('walk-through: apply --pod, then status → pods → explain → repair, text and JSON', async (t) => {
  requireKernelTools(t);
  const n = node!;
  // The plugin's ADD, by hand: program both sandboxes from their pods, then break one the way a stray
  // `iptables -t nat -F`-like change would.
  const applied = json(ok(t, n.run(['apply', '--pod', 'shop/cart', '-o', 'json'])));
  t.is(applied.pod, 'shop/cart');
  t.is(applied.netns, cart.netns);
  t.deepEqual(applied.families, ['ipv4']);
  n.recordProgrammed(cart, applied);
  const appliedOrders = json(ok(t, n.run(['apply', '--pod', 'shop/orders', '-o', 'json'])));
  n.recordProgrammed(orders, appliedOrders);
  breakOutputJump(t, orders.netns!, appliedOrders.backend);

  const step = (args: string[], code: number) => {
    const r = ok(t, n.run(args), code);
    note(args, r);
    return r;
  };

  // status: everything in place, one broken pod.
  const status = step(['status'], 1);
  t.regex(status.stdout, /^cni config\s+.*10-bridge\.conflist$/m);
  t.regex(status.stdout, /^our entry\s+last plugin of the active config$/m);
  t.regex(status.stdout, /^shim\s+[0-9a-f]{12} \(same as the agent's\)$/m);
  t.regex(status.stdout, /^engine\s+[0-9a-f]{12} \(same as the agent's\)$/m);
  t.regex(status.stdout, /^agent\s+answers on .*agent\.sock \(CNI 0\.3\.0, 0\.3\.1, 0\.4\.0, 1\.0\.0, 1\.1\.0\)$/m);
  t.regex(status.stdout, /^agent health\s+ready/m);
  t.regex(status.stdout, /^backend\s+\S+ \(auto: /m);
  t.regex(status.stdout, /^repair mode\s+off \(from the agent's \/metrics\)$/m);
  t.regex(status.stdout, new RegExp(`^pods\\s+4 on ${NODE}: 2 meshed \\(1 healthy, 1 broken, 0 unknown\\), 2 skipped$`, 'm'));
  t.regex(status.stdout, /1 problem:\n {2}- 1 meshed pod with rules missing or wrong/);
  t.notRegex(status.stdout, /\x1b\[/, 'no colour when piped');
  // In the agent pod there are no flags: the DaemonSet's HEALTH_PORT stands in for --health-port.
  const inPod = mesh(['status', ...n.flags(), '--cni-conf-dir', n.confDir, '--cni-bin-dir', n.binDir], { NODE_NAME: NODE, HEALTH_PORT: String(n.healthPort) });
  t.regex(inPod.stdout, /^repair mode\s+off \(from the agent's \/metrics\)$/m, inPod.stdout + inPod.stderr);
  const statusJson = json(ok(t, n.run(['status', '-o', 'json']), 1));
  t.deepEqual(Object.keys(statusJson), ['node', 'cniConfig', 'fight', 'binaries', 'versions', 'agent', 'backend', 'repairMode', 'pods', 'problems']);
  t.is(statusJson.node, NODE);
  t.true(statusJson.cniConfig.entryInActiveConfig);
  t.deepEqual(statusJson.binaries.map((b: { name: string; matchesAgent: boolean; matchesCli: boolean }) => [b.name, b.matchesAgent, b.matchesCli]), [
    ['shim', true, true],
    ['engine', true, true],
  ]);
  t.is(statusJson.versions.agent, statusJson.versions.cli);
  t.true(statusJson.agent.reachable);
  t.deepEqual(statusJson.repairMode, { mode: 'off', source: 'agent' });
  t.like(statusJson.pods, { available: true, node: NODE, total: 4, meshed: 2, healthy: 1, broken: 1, unknown: 0, skipped: 2 });

  // pods: which one, and why.
  const pods = step(['pods'], 1);
  const lines = pods.stdout.split('\n');
  t.regex(lines[0], /^POD\s+MESHED\s+REASON\s+RULES\s+BACKEND\s+LAST ACTION$/);
  t.regex(pods.stdout, /^kube-system\/coredns\s+no\s+namespace-excluded\s+-\s+-\s+-$/m);
  t.regex(pods.stdout, /^shop\/cart\s+yes\s+rules match the plan\s+ok\s+\S+\s+Programmed \d+s ago$/m);
  t.regex(pods.stdout, /^shop\/legacy-batch\s+no\s+no-istio-proxy\s+-\s+-\s+-$/m);
  t.regex(pods.stdout, /^shop\/orders\s+yes\s+rules differ from the plan\s+\d+ differ\s+/m);
  // Columns line up: every row's second column starts where the header's does.
  const col = lines[0].indexOf('MESHED');
  for (const line of lines.slice(1).filter((l) => /^\S+\/\S+/.test(l))) t.regex(line.slice(col), /^(yes|no) /, line);
  const podsJson = json(ok(t, n.run(['pods', '-n', 'shop', '-o', 'json']), 1));
  t.is(podsJson.node, NODE);
  t.is(podsJson.namespace, 'shop');
  t.deepEqual(podsJson.pods.map((p: { name: string }) => p.name), ['cart', 'legacy-batch', 'orders']);
  const ordersRow = podsJson.pods[2];
  t.deepEqual(Object.keys(ordersRow), ['namespace', 'name', 'uid', 'meshed', 'verdict', 'reason', 'rules', 'problems', 'netns', 'backend', 'lastAction']);
  t.like(ordersRow, { meshed: true, verdict: 'broken', rules: 'differ', netns: orders.netns, uid: orders.uid });
  t.true(ordersRow.problems.some((p: string) => /OUTPUT/.test(p)), ordersRow.problems.join('\n'));

  // explain: the trail, the plan, what is there, the diff.
  const explained = step(['explain', 'shop/orders'], 1);
  t.regex(explained.stdout, /^pod shop\/orders {2}uid [0-9a-f-]{36} {2}node node-a$/m);
  const trail = explained.stdout.slice(explained.stdout.indexOf('decision'), explained.stdout.indexOf('expected rules'));
  t.deepEqual(
    [...trail.matchAll(/^ {2}(\S+)\s+(pass|skip|assumed|meshed|error)\s/gm)].map((m) => `${m[1]}:${m[2]}`),
    [
      'host-network:pass',
      'own-agent-pod:pass',
      'namespace-excluded:pass',
      'ambient:pass',
      'has-istio-init:pass',
      'proxyless:pass',
      'no-istio-proxy:pass',
      'not-a-sidecar:pass',
      'injection-disabled:pass',
      'not-injected:pass',
      'proxy-settings:pass',
      'annotations:pass',
      'meshed:meshed',
    ],
  );
  t.regex(explained.stdout, /--dport 5432 -j RETURN/, "the pod's own exclusion is in the plan");
  t.regex(explained.stdout, new RegExp(`rules in the netns ${orders.netns} \\(found from what ADD recorded\\)`));
  t.regex(explained.stdout, /^ {2}- missing in ipv4 nat\/OUTPUT: .*ISTIO_OUTPUT/m);
  t.regex(explained.stdout, /^verdict: broken: the rules in .* differ from the plan \(1 difference\)$/m);
  t.regex(explained.stdout, /^fix: mesh-cni apply --pod shop\/orders/m);
  const explainJson = json(ok(t, n.run(['explain', 'shop/orders', '-o', 'json']), 1));
  t.deepEqual(Object.keys(explainJson), ['pod', 'uid', 'node', 'trail', 'assumed', 'meshed', 'mode', 'reason', 'backend', 'netns', 'lastAction', 'warnings', 'families', 'expected', 'observed', 'diff', 'verdict', 'problem']);
  t.deepEqual(explainJson.warnings, [], 'Events are readable: nothing is missing from the answer');
  t.like(explainJson, { pod: 'shop/orders', meshed: true, reason: 'meshed', verdict: 'broken', netns: { path: orders.netns, source: 'attachment', exists: true } });
  t.is(explainJson.diff.length, 1);
  t.is(explainJson.diff[0].kind, 'missing');
  t.is(explainJson.expected.length, explainJson.observed.length + 1);

  // repair: one pass, then everything is healthy and the Event is the last action.
  const repaired = step(['repair'], 0);
  t.regex(repaired.stdout, /^shop\/orders\s+broken\s+repaired\s+rules differ from the plan$/m);
  const after = step(['status'], 0);
  t.regex(after.stdout, /2 meshed \(2 healthy, 0 broken, 0 unknown\)/);
  t.regex(after.stdout, /no problems found/);
  const podsAfter = step(['pods', '-n', 'shop'], 0);
  t.regex(podsAfter.stdout, /^shop\/orders\s+yes\s+rules match the plan\s+ok\s+\S+\s+RedirectRepaired \d+s ago$/m);
  const explainedAfter = json(ok(t, n.run(['explain', 'shop/orders', '-o', 'json'])));
  t.like(explainedAfter, { verdict: 'healthy', problem: null, diff: [] });
  t.like(explainedAfter.lastAction, { source: 'event', reason: 'RedirectRepaired' });
});

test.serial('--pod on plan, show and remove: the pod from the API, the netns from the attachment record', async (t) => {
  requireKernelTools(t);
  const n = node!;
  const fromPod = json(ok(t, n.run(['plan', '--pod', 'shop/orders', '-o', 'json'])));
  const fromFlags = json(ok(t, mesh(['plan', '-o', 'json', '-a', 'traffic.sidecar.istio.io/excludeOutboundPorts=5432'])));
  t.is(fromPod.pod, 'shop/orders');
  t.deepEqual({ ...fromPod, pod: undefined }, { ...fromFlags, pod: undefined }, 'the same rules as the annotations given by hand');
  t.regex(ok(t, n.run(['plan', '--pod', 'shop/orders'])).stdout, /^# pod: shop\/orders\n# backend: /);

  const shown = json(ok(t, n.run(['show', '--pod', 'shop/cart', '-o', 'json'])));
  t.is(shown.netns, cart.netns);
  t.true(shown.rules.length > 10);
  const removed = ok(t, n.run(['remove', '--pod', 'shop/cart']));
  t.is(removed.stdout, `removed ${shown.rules.length} rules from ${cart.netns} (pod shop/cart)\n`);
  t.regex(ok(t, n.run(['show', '--pod', 'shop/cart'])).stdout, /^no mesh-cni rules in /);
  ok(t, n.run(['apply', '--pod', 'shop/cart']));
  t.is(json(ok(t, n.run(['show', '--pod', 'shop/cart', '-o', 'json']))).rules.length, shown.rules.length);

  const plain = ok(t, n.run(['plan', '--pod', 'shop/legacy-batch']), 1);
  t.regex(plain.stderr, /pod shop\/legacy-batch is not meshed \(no-istio-proxy\)/);
  t.regex(plain.stderr, /hint: mesh-cni explain shop\/legacy-batch/);
});

test.serial('explain: a pod that is not meshed says which rule skipped it, and exits 0', (t) => {
  const n = node!;
  const r = ok(t, n.run(['explain', 'shop/legacy-batch']));
  t.regex(r.stdout, /^ {2}no-istio-proxy\s+skip\s+no istio-proxy among \[app\] \(from the pod spec\)/m);
  t.notRegex(r.stdout, /injection-disabled/, 'the trail stops at the rule that decided');
  t.regex(r.stdout, /none: the pod is not meshed \(no-istio-proxy\)/);
  const excluded = json(ok(t, n.run(['explain', 'kube-system/coredns', '-o', 'json'])));
  t.like(excluded, { meshed: false, reason: 'namespace-excluded', verdict: 'not-meshed', problem: null, expected: [] });
  t.like(excluded.trail.at(-1), { rule: 'namespace-excluded', outcome: 'skip' });
});

test.serial('explain and --pod failures: not found, on another node, netns gone, nothing recorded', async (t) => {
  requireKernelTools(t);
  const n = node!;
  const missing = ok(t, n.run(['explain', 'shop/nope']), 1);
  t.is(missing.stdout, '');
  t.regex(missing.stderr, /^mesh-cni: pod shop\/nope not found\nhint: /);
  t.is(json(ok(t, n.run(['explain', 'shop/nope', '-o', 'json']), 1)).error.code, 'POD_NOT_FOUND');
  t.is(json(ok(t, n.run(['show', '--pod', 'shop/nope', '-o', 'json']), 1)).error.code, 'POD_NOT_FOUND');

  await n.createPod({ namespace: 'shop', name: 'elsewhere', node: 'node-b' });
  const other = ok(t, n.run(['explain', 'shop/elsewhere']), 1);
  t.regex(other.stderr, /pod shop\/elsewhere runs on node node-b, not on node-a\nhint: run this on node-b/);
  const otherJson = json(ok(t, n.run(['apply', '--pod', 'shop/elsewhere', '-o', 'json']), 1)).error;
  t.is(otherJson.code, 'POD_NOT_ON_NODE');

  const gone = n.sandbox(await n.createPod({ namespace: 'shop', name: 'gone' }), 'gone');
  ok(t, n.run(['apply', '--pod', 'shop/gone']));
  n.killSandbox(gone);
  const explained = ok(t, n.run(['explain', 'shop/gone']), 1);
  t.regex(explained.stdout, new RegExp(`${gone.netns} \\(recorded by ADD\\) no longer exists`));
  t.regex(explained.stdout, /^verdict: unknown: network namespace .* \(recorded by ADD\) no longer exists: the pod sandbox is gone$/m);
  t.regex(explained.stdout, /-A ISTIO_OUTPUT/, 'the expected plan is still shown');
  const goneJson = json(ok(t, n.run(['explain', 'shop/gone', '-o', 'json']), 1));
  t.like(goneJson, { verdict: 'unknown', observed: null, diff: null, netns: { path: null, recorded: gone.netns, exists: false } });
  const show = ok(t, n.run(['show', '--pod', 'shop/gone', '-o', 'json']), 1);
  t.is(json(show).error.code, 'NETNS_NOT_FOUND');
  t.regex(ok(t, n.run(['remove', '--pod', 'shop/gone']), 1).stderr, /ADD recorded it for shop\/gone, but the sandbox is gone/);
  t.regex(ok(t, n.run(['pods', '-n', 'shop']), 0).stdout, /^shop\/gone\s+yes\s+network namespace not found\s+unknown/m);

  await n.createPod({ namespace: 'shop', name: 'unrecorded' });
  const unrecorded = ok(t, n.run(['show', '--pod', 'shop/unrecorded', '--proc-root', n.dir]), 1);
  t.regex(unrecorded.stderr, /no network namespace found for pod shop\/unrecorded/);
});

test.serial('usage errors exit 2: malformed pod, --pod with --netns or annotations, neither', (t) => {
  const n = node!;
  for (const args of [
    ['explain', 'cart'],
    ['explain'],
    ['show', '--pod', 'shop/cart', '--netns', '/var/run/netns/x'],
    ['show'],
    ['apply', '--pod', 'shop/cart', '-a', 'traffic.sidecar.istio.io/excludeOutboundPorts=1'],
    ['plan', '--pod', 'Shop/Cart!'],
    ['pods', '--no-such-flag'],
  ]) {
    const r = n.run(args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, /\S/);
  }
  for (const cmd of ['status', 'pods', 'explain', 'completion']) t.regex(mesh([cmd, '--help']).stdout, /Examples:/, cmd);
});

test.serial('no API server: status still reports the node and says the pods were not counted; pods fails with a hint', async (t) => {
  const n = node!;
  const dead = n.kube.writeKubeconfig(path.join(n.dir, 'dead-kubeconfig'), { server: `https://127.0.0.1:${await freePort()}` });
  const status = mesh(['status', ...n.statusFlags(dead)], { NODE_NAME: NODE });
  t.is(status.code, 0, status.stdout + status.stderr);
  t.regex(status.stdout, /^our entry\s+last plugin of the active config$/m);
  t.regex(status.stdout, /^pods\s+not counted: listing the pods of node node-a: /m);
  const pods = mesh(['pods', ...n.flags(dead), '-o', 'json'], { NODE_NAME: NODE });
  t.is(pods.code, 1);
  t.like(json(pods).error, { code: 'API_UNAVAILABLE' });
  const none = mesh(['pods', '--state-dir', n.stateDir], { NODE_NAME: NODE, KUBERNETES_SERVICE_HOST: '', KUBECONFIG: '' });
  t.is(none.code, 1);
  t.regex(none.stderr, /no API server to ask: no --kubeconfig given, \$KUBECONFIG unset, and not running in a cluster\nhint: pass --kubeconfig or set \$KUBECONFIG/);
  const absent = mesh(['pods', '--state-dir', n.stateDir], { NODE_NAME: NODE, KUBERNETES_SERVICE_HOST: '', KUBECONFIG: path.join(n.dir, 'absent') });
  t.regex(absent.stderr, /none of \$KUBECONFIG's files exists/);
});

const podNames = (r: CliResult) => (json(r).pods as Array<{ namespace: string; name: string }>).map((p) => `${p.namespace}/${p.name}`);

test.serial('$KUBECONFIG as kubectl reads it: used when --kubeconfig is absent, missing files skipped, the first file to name a user wins', (t) => {
  const n = node!;
  const noKubeconfigFlag = ['--state-dir', n.stateDir, '--socket', n.socket];
  const env = (KUBECONFIG: string) => ({ NODE_NAME: NODE, KUBERNETES_SERVICE_HOST: '', KUBECONFIG });
  const withFlag = mesh(['pods', '-o', 'json', ...n.flags()], { NODE_NAME: NODE });
  t.true(podNames(withFlag).includes('shop/cart'), withFlag.stdout + withFlag.stderr);
  const viaEnv = mesh(['pods', '-o', 'json', ...noKubeconfigFlag], env(`${path.join(n.dir, 'absent')}:${n.kube.kubeconfig}`));
  t.is(viaEnv.code, withFlag.code, viaEnv.stderr);
  t.deepEqual(podNames(viaEnv), podNames(withFlag));
  // Merged as kubectl merges: the second file has the cluster and context but a wrong token; the first names
  // the same user with the right one, and wins.
  const wrongUser = n.kube.writeKubeconfig(path.join(n.dir, 'kubeconfig-wrong-user'), { token: 'not-the-token' });
  const rightUser = path.join(n.dir, 'kubeconfig-user-only');
  fs.writeFileSync(rightUser, `apiVersion: v1\nkind: Config\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: ${n.kube.token}\n`, { mode: 0o600 });
  const merged = mesh(['pods', '-o', 'json', ...noKubeconfigFlag], env(`${rightUser}:${wrongUser}`));
  t.deepEqual(podNames(merged), podNames(withFlag), merged.stderr);
  const reversed = mesh(['pods', '-o', 'json', ...noKubeconfigFlag], env(`${wrongUser}:${rightUser}`));
  t.is(reversed.code, 1);
  t.like(json(reversed).error, { code: 'API_UNAVAILABLE' });
  t.regex(json(reversed).error.message, /401/);
});

test.serial("pods --service NS/SVC: this node's pods behind the service, meshed or why not; <TAB> completes services", async (t) => {
  const n = node!;
  const core = n.kube.core();
  const service = (namespace: string, name: string, selector?: Record<string, string>) =>
    core.createNamespacedService({ namespace, body: { metadata: { name }, spec: { selector, ports: [{ port: 80 }] } } });
  await service('shop', 'cart', { app: 'cart' });
  await service('shop', 'checkout', { app: 'checkout' });
  await service('shop', 'external');
  await service('kube-system', 'cart-dns', { app: 'cart' });
  await core.patchNamespacedPod(
    { namespace: 'shop', name: 'cart', body: [{ op: 'add', path: '/metadata/labels', value: { app: 'cart', version: 'v1' } }] },
    // JSON patch: the client's default content type for patch is merge patch.
    (await import('@kubernetes/client-node')).setHeaderOptions('Content-Type', 'application/json-patch+json'),
  );
  // Behind the service too, but on another node: not listed.
  await n.createPod({ namespace: 'shop', name: 'cart-elsewhere', node: 'node-b', labels: { app: 'cart' } });

  const text = ok(t, n.run(['pods', '--service', 'shop/cart']));
  t.regex(text.stdout, /^shop\/cart\s+yes\s+/m);
  t.regex(text.stdout, /^shop\/legacy-batch\s+no\s+no-istio-proxy\s+/m);
  const rows = json(ok(t, n.run(['pods', '--service', 'shop/cart', '-o', 'json'])));
  t.is(rows.service, 'shop/cart');
  t.deepEqual(podNames({ ...text, stdout: JSON.stringify(rows) }), ['shop/cart', 'shop/legacy-batch'], 'not orders (no label), not kube-system/coredns (another namespace), not cart-elsewhere (another node)');
  t.regex(ok(t, n.run(['pods', '--service', 'shop/checkout'])).stdout, /^no pods on node-a behind service shop\/checkout$/m);
  const missing = n.run(['pods', '--service', 'shop/nope']);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /service shop\/nope not found/);
  t.regex(n.run(['pods', '--service', 'shop/external']).stderr, /service shop\/external has no selector/);
  t.is(n.run(['pods', '--service', 'shop/cart', '-n', 'shop']).code, 2, '--service and -n together are a usage error');
  t.is(n.run(['pods', '--service', 'cart']).code, 2, 'a service is NAMESPACE/SERVICE');

  // <TAB> after --service: services from the API named by $KUBECONFIG (no --kubeconfig typed), by prefix.
  const complete = (...words: string[]) =>
    mesh(['--get-yargs-completions', 'mesh-cni', ...words], { NODE_NAME: NODE, KUBECONFIG: n.kube.kubeconfig, KUBERNETES_SERVICE_HOST: '', HEALTH_PORT: String(n.healthPort + 1) });
  const shop = complete('pods', '--service', 'shop/c');
  t.deepEqual(shop.stdout.trim().split('\n'), ['shop/cart', 'shop/checkout'], shop.stderr);
  const all = complete('pods', '--service', '').stdout.trim().split('\n');
  for (const name of ['default/kubernetes', 'kube-system/cart-dns', 'shop/cart', 'shop/external']) t.true(all.includes(name), all.join(' '));
  t.deepEqual(complete('pods', '--service', 'kube-system/').stdout.trim().split('\n'), ['kube-system/cart-dns']);
});

// Last: stops the agent.
test.serial('agent down: status says so and exits 1; pods, explain and --pod commands work without it', async (t) => {
  requireKernelTools(t);
  const n = node!;
  await n.stopAgent();
  const status = ok(t, n.run(['status']), 1);
  t.regex(status.stdout, /^agent\s+not reachable on .*agent\.sock: ENOENT .*; the shim falls back to the standalone engine$/m);
  t.regex(status.stdout, /^agent health\s+http:\/\/127\.0\.0\.1:\d+ not reachable: ECONNREFUSED$/m);
  t.regex(status.stdout, /^shim\s+[0-9a-f]{12} \(same as this CLI's; agent's unknown\)$/m);
  t.regex(status.stdout, /^repair mode\s+unknown/m);
  t.regex(status.stdout, /^pods\s+\d+ on node-a: /m, 'pods are still counted');
  const statusJson = json(ok(t, n.run(['status', '-o', 'json', '--repair-mode', 'label']), 1));
  t.like(statusJson.agent, { reachable: false, health: { reachable: false } });
  t.deepEqual(statusJson.repairMode, { mode: 'label', source: 'flag' });
  t.true(statusJson.problems.some((p: string) => /the agent does not answer/.test(p)));
  t.regex(ok(t, n.run(['pods', '-n', 'shop'])).stdout, /^shop\/cart\s+yes\s+rules match the plan\s+ok/m);
  t.like(json(ok(t, n.run(['explain', 'shop/cart', '-o', 'json']))), { verdict: 'healthy' });
  t.true(json(ok(t, n.run(['show', '--pod', 'shop/cart', '-o', 'json']))).rules.length > 10);
});
