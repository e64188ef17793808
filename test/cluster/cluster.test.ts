/**
 * The real-world proof: a one-node Kubernetes cluster (test/support/cluster.ts: etcd, kube-apiserver with
 * Node,RBAC and an audit log, controller-manager, scheduler, containerd, kubelet, kube-proxy), our image built
 * from the Dockerfile from a clean clone (scripts/build-cluster-image.sh), installed as operators do: with helm
 * from charts/mesh-cni, and once with `kubectl apply -f install/`. Real pods, real traffic: outbound from a
 * meshed pod lands on its port 15001, inbound on 15006.
 *
 * The scenarios run in order on one cluster (starting it takes about a minute): helm install (the agent under
 * seccomp RuntimeDefault), traffic, the CLI in the agent pod, a primary-CNI rewrite, a helm upgrade (new image,
 * label repair), an agent pod delete and a SIGKILL, each with meshed pods created throughout (the witness counts
 * any that ran without rules: the target is 0), the not-ready taint through helm upgrade, the audit log, helm
 * uninstall restoring the node's files byte for byte; then the plain-YAML path on its own; then the same node
 * restarted with k3s's CNI dirs and CRI socket, the chart installed with nothing but global.platform=k3s.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AGENT_SA, agentImageArchive, AGENT_IMAGE, K3S_LAYOUT, NODE_IP, NODE_NAME, PRIMARY_CONFLIST, startCluster, type Cluster } from '../support/cluster';
import { helmInstall, helmUninstall, helmUpgrade, requireHelm } from '../support/helm';
import {
  AGENT_NS,
  AGENT_SELECTOR,
  agentContext,
  agentPods,
  applyAgentNamespace,
  churnPods,
  containerPid,
  createPod,
  ensureNamespace,
  inNetns,
  kubectlAsync,
  liveAgentPod,
  NODE_PORT,
  podNetns,
  podReady,
  startDelays,
  summarize,
  waitPodsRunning,
  Witness,
} from '../support/cluster-pods';
import { REPO_ROOT } from '../support/paths';
import { connect, listen } from '../support/traffic';
import { readJsonLines } from '../support/json-lines';

const NS = 'shop';

/** The node's files mesh-cni may touch (its layout's CNI dirs and our state dir); uninstall must leave them as they were. */
function nodeDirs(cl: Cluster): string[] {
  return [cl.layout.cniConfDir, cl.layout.cniBinDir, '/var/run/mesh-cni'];
}

let cluster: Cluster | undefined;
let witness: Witness | undefined;
let before: Map<string, string> | undefined;
const figures: string[] = [];
let suiteStart = 0;

function c(): Cluster {
  if (!cluster) throw new Error('the cluster did not start (see the first failure)');
  return cluster;
}

/** Every regular file and symlink under the node's dirs: path → mode and content hash-free bytes. */
function snapshot(cl: Cluster): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (inside: string) => {
    const host = cl.inside(inside);
    let entries: fs.Dirent[] = [];
    try {
      entries = fs.readdirSync(host, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.posix.join(inside, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isSymbolicLink()) files.set(p, `symlink ${fs.readlinkSync(cl.inside(p))}`);
      else if (e.isSocket()) files.set(p, 'socket');
      else {
        const st = fs.statSync(cl.inside(p));
        files.set(p, `mode ${(st.mode & 0o7777).toString(8)} ${fs.readFileSync(cl.inside(p)).toString('base64')}`);
      }
    }
  };
  for (const d of nodeDirs(cl)) walk(d);
  return files;
}

/** What differs between two snapshots, one line per path. */
function changes(before: Map<string, string>, after: Map<string, string>): string[] {
  const found: string[] = [];
  for (const [p, v] of before) if (after.get(p) !== v) found.push(`${p}: ${after.has(p) ? 'changed' : 'removed'}`);
  for (const p of after.keys()) if (!before.has(p)) found.push(`${p}: left behind`);
  return found;
}

function conflistPath(cl: Cluster): string {
  return cl.inside(path.posix.join(cl.layout.cniConfDir, PRIMARY_CONFLIST));
}

function conflist(cl: Cluster): any {
  return JSON.parse(fs.readFileSync(conflistPath(cl), 'utf8'));
}

function chained(cl: Cluster): boolean {
  try {
    const plugins: any[] = conflist(cl).plugins;
    return plugins.at(-1)?.type === 'mesh-cni';
  } catch {
    return false;
  }
}

/** The plugin's request log on the node (both the agent and the standalone engine write it). */
function pluginLog(cl: Cluster): Array<Record<string, any>> {
  return readJsonLines(cl.inside('/var/log/mesh-cni/cni.log'));
}

/** The one agent pod, Ready, and (optionally) not `previous`; returns it. */
async function agentReady(cl: Cluster, what: string, timeoutMs: number, previous?: string, accept: (pod: any) => boolean = () => true): Promise<any> {
  return cl.waitFor(
    what,
    timeoutMs,
    () => {
      const pods = agentPods(cl).filter((p) => !p.metadata.deletionTimestamp && p.metadata.uid !== previous);
      const ready = pods.find((p) => accept(p) && podReady(p));
      return ready && chained(cl) ? ready : undefined;
    },
    () => agentContext(cl),
  );
}

test.before(async (t) => {
  // Cold: the base images and the image build take minutes (cached afterwards by commit tree).
  t.timeout(40 * 60_000, 'building the agent image and starting the cluster');
  requireHelm();
  suiteStart = Date.now();
  let ms = Date.now();
  const archive = await agentImageArchive();
  figures.push(`agent image (scripts/build-cluster-image.sh, cached by commit tree): ${((Date.now() - ms) / 1000).toFixed(0)} s`);
  ms = Date.now();
  cluster = await startCluster({ agentImage: archive });
  figures.push(`cluster up (node Ready, kube-proxy, service-account tokens): ${((Date.now() - ms) / 1000).toFixed(0)} s`);
  witness = await Witness.start(cluster);
  ensureNamespace(cluster, NS);
  before = snapshot(cluster);
});

test.after.always(async () => {
  if (suiteStart) figures.push(`whole suite (image, cluster, every scenario): ${((Date.now() - suiteStart) / 1000).toFixed(0)} s`);
  if (figures.length > 0) console.log(`\ncluster suite figures:\n  ${figures.join('\n  ')}\n`);
  if (cluster) await cluster.stop();
});

/** The agent container's seccomp mode as its process has it (0 none, 2 filter) and how many filters. */
function seccompOf(cl: Cluster, agent: any): { mode: string; filters: string } {
  const status = fs.readFileSync(`/proc/${containerPid(cl, agent, 'agent')}/status`, 'utf8');
  return { mode: /^Seccomp:\s*(\d+)/m.exec(status)?.[1] ?? '?', filters: /^Seccomp_filters:\s*(\d+)/m.exec(status)?.[1] ?? '?' };
}

test.serial('helm install with the chart\'s defaults: the agent runs under seccomp RuntimeDefault, chains our entry into the primary conflist and installs the shim', async (t) => {
  t.timeout(5 * 60_000);
  const cl = c();
  const primary = conflist(cl);
  // As README says: the namespace with its Pod Security labels, then the chart.
  applyAgentNamespace(cl);
  const ms = Date.now();
  const notes = await helmInstall(cl);
  t.regex(notes, /kubectl -n mesh-cni-system rollout status ds\/mesh-cni/, 'NOTES tell what to check next');
  const agent = await agentReady(cl, 'the agent pod Ready with our entry chained', 180_000);
  figures.push(`helm install: agent Ready and chained ${((Date.now() - ms) / 1000).toFixed(1)} s after helm install began`);
  t.is(agent.spec.containers[0].image, 'mesh-cni:0.1.0');
  t.deepEqual(agent.spec.containers[0].securityContext.seccompProfile, { type: 'RuntimeDefault' });
  // The kernel's view: the agent's process runs under a seccomp filter (mode 2), the runtime's default profile.
  const seccomp = seccompOf(cl, agent);
  t.is(seccomp.mode, '2', `the agent runs under a seccomp filter: ${JSON.stringify(seccomp)}`);
  figures.push(`agent seccomp: mode ${seccomp.mode} (filter), ${seccomp.filters} filter(s) (containerd 1.6's RuntimeDefault)`);
  const list = conflist(cl);
  t.deepEqual(list.plugins.slice(0, -1), primary.plugins, 'the primary plugins are kept, in order');
  t.is(list.plugins.at(-1).type, 'mesh-cni');
  t.true(fs.existsSync(cl.inside('/opt/cni/bin/mesh-cni')), 'the shim is in /opt/cni/bin');
  t.true(fs.existsSync(cl.inside('/var/run/mesh-cni/agent.sock')), 'the agent serves /var/run/mesh-cni/agent.sock');
});

test.serial('a meshed pod: outbound lands on its 15001, inbound on 15006; a plain pod is untouched', async (t) => {
  t.timeout(5 * 60_000);
  const cl = c();
  await createPod(cl, { name: 'meshed', namespace: NS, meshed: true });
  await createPod(cl, { name: 'plain', namespace: NS, meshed: false });
  const [meshed, plain] = await waitPodsRunning(cl, NS, ['meshed', 'plain'], 180_000);
  const meshedNs = podNetns(cl, meshed);
  const plainNs = podNetns(cl, plain);
  await listen(t, meshedNs, 'meshed-proxy', ['15001', '15006', '8080']);
  await listen(t, plainNs, 'plain-proxy', ['15001', '15006', '8080']);
  await listen(t, cl.netnsPath, 'node', [String(NODE_PORT)]);

  const out = connect(meshedNs, NODE_IP, NODE_PORT);
  t.is(out.listener, 'meshed-proxy', `meshed outbound: ${JSON.stringify(out)}`);
  t.is(out.port, 15001);
  t.is(out.orig, `${NODE_IP}:${NODE_PORT}`);
  const inbound = connect(cl.netnsPath, meshed.status.podIP, 8080);
  t.is(inbound.listener, 'meshed-proxy', `meshed inbound: ${JSON.stringify(inbound)}`);
  t.is(inbound.port, 15006);
  t.is(inbound.orig, `${meshed.status.podIP}:8080`);
  // The proxy's own traffic (uid 1337) leaves unredirected.
  const proxyOut = connect(meshedNs, NODE_IP, NODE_PORT, { uid: 1337 });
  t.is(proxyOut.listener, 'node', `proxy outbound: ${JSON.stringify(proxyOut)}`);

  const plainOut = connect(plainNs, NODE_IP, NODE_PORT);
  t.is(plainOut.listener, 'node', `plain outbound: ${JSON.stringify(plainOut)}`);
  const plainIn = connect(cl.netnsPath, plain.status.podIP, 8080);
  t.is(plainIn.port, 8080, `plain inbound: ${JSON.stringify(plainIn)}`);
  t.deepEqual(witness!.unredirected(['meshed']), [], 'the meshed pod never reached the witness unredirected');
});

test.serial('a pod with the sidecar in an excluded namespace (kube-system) gets no rules', async (t) => {
  t.timeout(5 * 60_000);
  const cl = c();
  await createPod(cl, { name: 'system-meshed', namespace: 'kube-system', meshed: true });
  const [pod] = await waitPodsRunning(cl, 'kube-system', ['system-meshed'], 180_000);
  const ns = podNetns(cl, pod);
  await listen(t, ns, 'system-proxy', ['15001']);
  await listen(t, cl.netnsPath, 'node', [String(NODE_PORT)]);
  const out = connect(ns, NODE_IP, NODE_PORT);
  t.is(out.listener, 'node', `excluded outbound: ${JSON.stringify(out)}`);
  cl.kubectl(['-n', 'kube-system', 'delete', 'pod', 'system-meshed', '--wait=false']);
});

test.serial('the CLI in the agent pod: kubectl exec ds/mesh-cni -- mesh-cni status, pods, explain', (t) => {
  t.timeout(3 * 60_000);
  const cl = c();
  // Up to three tries, 5 s apart: on a loaded machine one answer (the agent's VERSION over its socket) can miss
  // its deadline; a problem that persists fails with the last output.
  const exec = (...args: string[]) => {
    let r = cl.kubectl(['-n', AGENT_NS, 'exec', 'ds/mesh-cni', '--', 'mesh-cni', ...args], { timeoutMs: 60_000 });
    for (let attempt = 2; attempt <= 3 && r.status !== 0; attempt++) {
      t.log(`mesh-cni ${args.join(' ')} exited ${r.status} (try ${attempt - 1}):\n${r.stdout}${r.stderr}`);
      spawnSync('sleep', ['5']);
      r = cl.kubectl(['-n', AGENT_NS, 'exec', 'ds/mesh-cni', '--', 'mesh-cni', ...args], { timeoutMs: 60_000 });
    }
    return r;
  };
  const status = exec('status');
  t.is(status.status, 0, `mesh-cni status exited ${status.status}:\n${status.stdout}\n${status.stderr}`);
  t.log(status.stdout);
  t.regex(status.stdout, /mesh-cni/);
  const pods = exec('pods');
  t.is(pods.status, 0, `mesh-cni pods exited ${pods.status}:\n${pods.stdout}\n${pods.stderr}`);
  t.log(pods.stdout);
  const meshedLine = pods.stdout.split('\n').find((l) => /\bmeshed\b/.test(l) && l.includes(NS));
  t.truthy(meshedLine, `mesh-cni pods lists ${NS}/meshed:\n${pods.stdout}`);
  t.notRegex(pods.stdout + pods.stderr, /forbidden|403/i);
  const explain = exec('explain', `${NS}/meshed`);
  t.is(explain.status, 0, `mesh-cni explain exited ${explain.status}:\n${explain.stdout}\n${explain.stderr}`);
  t.log(explain.stdout);
  t.notRegex(explain.stdout + explain.stderr, /forbidden|403/i);
});

test.serial('a primary CNI rewriting its config is re-chained, and new meshed pods get their rules', async (t) => {
  t.timeout(5 * 60_000);
  const cl = c();
  const file = conflistPath(cl);
  const original = conflist(cl);
  const rewritten = { ...original, plugins: original.plugins.filter((p: any) => p.type !== 'mesh-cni') };
  // As a primary CNI's daemon does: a whole new file, renamed over the old one.
  fs.writeFileSync(`${file}.tmp`, `${JSON.stringify(rewritten, null, 2)}\n`);
  fs.renameSync(`${file}.tmp`, file);
  t.false(chained(cl));
  const ms = Date.now();
  await cl.waitFor('our entry chained again after the rewrite', 60_000, () => chained(cl), () => agentContext(cl));
  figures.push(`primary-CNI rewrite: re-chained within ${((Date.now() - ms) / 1000).toFixed(1)} s`);
  await createPod(cl, { name: 'after-rewrite', namespace: NS, meshed: true });
  const [pod] = await waitPodsRunning(cl, NS, ['after-rewrite'], 180_000);
  const ns = podNetns(cl, pod);
  await listen(t, ns, 'rewrite-proxy', ['15001']);
  const out = connect(ns, NODE_IP, NODE_PORT);
  t.is(out.listener, 'rewrite-proxy', JSON.stringify(out));
  t.deepEqual(witness!.unredirected(['after-rewrite']), []);
});

/**
 * Meshed pods created every 1.5 s from before `disrupt` until the agent is back and Ready: how many ran
 * without rules (the witness), and their start delays.
 */
async function throughDisruption(t: any, batch: string, disrupt: (cl: Cluster) => Promise<((pod: any) => boolean) | void> | void): Promise<number> {
  const cl = c();
  const before = liveAgentPod(cl);
  const previous = before?.metadata.uid as string | undefined;
  // When the agent's process is gone: from then until the next one starts, nothing but the standalone
  // engine can have programmed a pod.
  const oldPid = containerPid(cl, before, 'agent');
  let down = 0;
  const watch = setInterval(() => {
    if (!down && !fs.existsSync(`/proc/${oldPid}`)) down = Date.now();
  }, 50);
  const created = new Map<string, number>();
  const churn = churnPods(cl, NS, batch, 1500, created);
  await new Promise((r) => setTimeout(r, 3000));
  const t0 = Date.now();
  const isNew = await disrupt(cl);
  // Two more at once while the agent is away.
  await Promise.all(
    [1, 2].map(async (i) => {
      const name = `${batch}-burst-${i}`;
      created.set(name, Date.now());
      await createPod(cl, { name, namespace: NS, meshed: true, labels: { batch } });
    }),
  );
  await agentReady(cl, `the agent Ready again after the ${batch}`, 240_000, isNew ? undefined : previous, isNew ?? undefined);
  clearInterval(watch);
  const back = Date.now() - t0;
  // The new agent binds a new socket when it starts serving: its ctime ends the window.
  const up = fs.statSync(cl.inside('/var/run/mesh-cni/agent.sock')).ctimeMs;
  await new Promise((r) => setTimeout(r, 3000));
  const names = await churn.stop();
  const delays = await startDelays(cl, NS, batch, created, 240_000);
  const unredirected = witness!.unredirected(names);
  const adds = pluginLog(cl).filter((l) => l.command === 'ADD' && names.some((n) => l.pod === `${NS}/${n}`));
  const outcomes = new Map<string, number>();
  for (const l of adds) {
    const key = l.error ? `error ${l.error.code}` : `${l.decision}`;
    outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
  }
  const standalone = adds.filter((l) => !l.error && l.decision === 'meshed' && down > 0 && Date.parse(l.time) >= down && Date.parse(l.time) < up).length;
  const inGap = [...delays].filter(([n]) => created.get(n)! >= t0 && created.get(n)! <= t0 + back).map(([, d]) => d);
  const outside = [...delays].filter(([n]) => created.get(n)! < t0 || created.get(n)! > t0 + back).map(([, d]) => d);
  const line =
    `${batch}: ${names.length} meshed pods created throughout, agent Ready again after ${(back / 1000).toFixed(1)} s; ` +
    `ran without rules: ${unredirected.length}; start delay of the ${inGap.length} created in that gap ${summarize(inGap)}, ` +
    `of the ${outside.length} others ${summarize(outside)}; ADDs logged: ${[...outcomes].map(([k, n]) => `${n} ${k}`).join(', ') || 'none'}, ` +
    `of which ${standalone} meshed by the standalone engine while no agent process ran (${down ? `${((up - down) / 1000).toFixed(1)} s` : 'never seen down'})`;
  figures.push(line);
  t.log(line);
  // Every one of them has its rules now: outbound is redirected (nothing listens on its 15001: refused).
  const items: any[] = cl.json(['-n', NS, 'get', 'pods', '-l', `batch=${batch}`]).items;
  for (const p of items) {
    const rules = inNetns(podNetns(cl, p), ['iptables-save']).stdout + inNetns(podNetns(cl, p), ['nft', 'list', 'ruleset']).stdout;
    t.regex(rules, /15001/, `${p.metadata.name} has its redirect rules`);
  }
  t.deepEqual(unredirected, [], 'no meshed pod ran without its rules');
  await kubectlAsync(cl, ['-n', NS, 'delete', 'pods', '-l', `batch=${batch}`, '--wait=false']);
  return standalone;
}

test.serial('helm upgrade to a new image tag and label repair while pods are created: the DaemonSet rolls, no meshed pod runs without rules', async (t) => {
  t.timeout(10 * 60_000);
  const cl = c();
  cl.tagImage(AGENT_IMAGE, 'docker.io/library/mesh-cni:0.1.0-next');
  await throughDisruption(t, 'upgrade', async () => {
    await helmUpgrade(cl, ['image.tag=0.1.0-next', 'repair.repairPods=false', 'repair.labelPods=true']);
  });
  const agent = liveAgentPod(cl);
  t.is(agent?.spec.containers[0].image, 'mesh-cni:0.1.0-next');
  t.is(cl.json(['-n', AGENT_NS, 'get', 'configmap', 'mesh-cni-config']).data['repair-mode'], 'label');
  const role = cl.json(['get', 'clusterrole', 'mesh-cni-repair-label']);
  t.deepEqual(role.rules, [{ apiGroups: [''], resources: ['pods/status'], verbs: ['patch'] }], 'label repair got its RBAC from the values');
  t.deepEqual(seccompOf(cl, agent).mode, '2');
});

test.serial('the agent pod deleted while pods are created: no meshed pod runs without rules', async (t) => {
  t.timeout(10 * 60_000);
  await throughDisruption(t, 'delete', (cl) => {
    cl.kubectlOk(['-n', AGENT_NS, 'delete', 'pod', '-l', AGENT_SELECTOR, '--wait=false']);
  });
});

test.serial('the agent SIGKILLed while pods are created (no node on the host): no meshed pod runs without rules', async (t) => {
  t.timeout(10 * 60_000);
  const standalone = await throughDisruption(t, 'sigkill', async (cl) => {
    const agent = liveAgentPod(cl);
    const pid = containerPid(cl, agent, 'agent');
    const restarts = agent.status.containerStatuses[0].restartCount as number;
    process.kill(pid, 'SIGKILL');
    return (pod: any) => pod.status.containerStatuses[0].restartCount > restarts;
  });
  // The proof that the fallback needs no Node.js on the host (this node has none on PATH).
  t.true(standalone >= 1, 'at least one pod was programmed by the standalone engine while no agent ran');
});

test.serial('node readiness through helm upgrade --set removeNotReadyTaint=true: a node provisioned with the cni.istio.io/not-ready taint takes pods only once the agent is ready', async (t) => {
  t.timeout(8 * 60_000);
  const cl = c();
  const taint = 'cni.istio.io/not-ready';
  const taints = () => ((cl.json(['get', 'node', NODE_NAME]).spec?.taints ?? []) as any[]).map((x) => `${x.key}:${x.effect}`);
  cl.kubectlOk(['taint', 'node', NODE_NAME, `${taint}=:NoSchedule`]);
  await createPod(cl, { name: 'while-tainted', namespace: NS, meshed: true });
  await new Promise((r) => setTimeout(r, 5000));
  const pending = cl.json(['-n', NS, 'get', 'pod', 'while-tainted']);
  t.falsy(pending.spec.nodeName, 'the scheduler keeps the pod off the tainted node');
  const previous = agentPods(cl)[0]?.metadata.uid as string | undefined;
  // The value renders the setting and the RBAC it needs, and rolls the DaemonSet (the ConfigMap's checksum).
  const ms = Date.now();
  await helmUpgrade(cl, ['removeNotReadyTaint=true']);
  await agentReady(cl, 'the agent restarted with remove-not-ready-taint Ready', 240_000, previous);
  await cl.waitFor(`the ${taint} taint removed by the agent`, 60_000, () => !taints().includes(`${taint}:NoSchedule`), () => agentContext(cl));
  figures.push(`node readiness: taint removed ${((Date.now() - ms) / 1000).toFixed(1)} s after the rollout began`);
  const [pod] = await waitPodsRunning(cl, NS, ['while-tainted'], 180_000);
  await listen(t, podNetns(cl, pod), 'tainted-proxy', ['15001']);
  const out = connect(podNetns(cl, pod), NODE_IP, NODE_PORT);
  t.is(out.listener, 'tainted-proxy', JSON.stringify(out));
  t.deepEqual(witness!.unredirected(['while-tainted']), []);
});

test.serial("the agent's API calls, as the audit log records them: none forbidden", (t) => {
  const events = c().auditEvents();
  const calls = new Map<string, number>();
  for (const e of events) {
    const key = `${e.verb} ${e.objectRef?.apiGroup ? `${e.objectRef.apiGroup}/` : ''}${e.objectRef?.resource ?? e.requestURI}${e.objectRef?.subresource ? `/${e.objectRef.subresource}` : ''} → ${e.responseStatus?.code}`;
    calls.set(key, (calls.get(key) ?? 0) + 1);
  }
  t.log([...calls].map(([k, n]) => `${n}× ${k}`).join('\n'));
  t.true(events.some((e) => e.user?.username === AGENT_SA && e.verb === 'watch' && e.objectRef?.resource === 'pods'), 'the agent watches pods as its service account');
  const forbidden = events.filter((e) => e.responseStatus?.code === 403);
  t.deepEqual(
    forbidden.map((e) => `${e.verb} ${e.requestURI}`),
    [],
    'no request of the agent was forbidden',
  );
});

/** Waits for the agent's pods and DaemonSet to be gone (each agent restores its node on the way out). */
async function agentGone(cl: Cluster): Promise<void> {
  await cl.waitFor('the agent pods gone', 180_000, () => agentPods(cl).length === 0, () => agentContext(cl));
  await cl.waitFor('DaemonSet mesh-cni gone', 60_000, () => cl.kubectl(['-n', AGENT_NS, 'get', 'daemonset', 'mesh-cni']).status !== 0);
}

/** A meshed pod created now: its outbound lands on its own 15001 (redirected) or on the node (plain). */
async function podLandsOn(t: any, cl: Cluster, name: string, meshed: boolean): Promise<string> {
  await createPod(cl, { name, namespace: NS, meshed: true });
  const [pod] = await waitPodsRunning(cl, NS, [name], 180_000);
  const ns = podNetns(cl, pod);
  if (meshed) await listen(t, ns, `${name}-proxy`, ['15001']);
  await listen(t, cl.netnsPath, 'node', [String(NODE_PORT)]);
  const out = connect(ns, NODE_IP, NODE_PORT);
  return `${out.listener}:${out.port}`;
}

test.serial('helm uninstall restores the node: conflist, binaries and state dir byte for byte', async (t) => {
  t.timeout(5 * 60_000);
  const cl = c();
  // Meshed pods are still running: their attachment records must go with the agent.
  const during = [...snapshot(cl).keys()];
  t.true(during.some((p) => p.startsWith('/var/run/mesh-cni/attachments/')), `attachment records exist before uninstall: ${during.join(', ')}`);
  t.true(during.includes('/opt/cni/bin/mesh-cni'));
  const ms = Date.now();
  await helmUninstall(cl);
  await agentGone(cl);
  figures.push(`helm uninstall: agent gone, node restored ${((Date.now() - ms) / 1000).toFixed(1)} s after it began`);
  t.deepEqual(changes(before!, snapshot(cl)), [], "the node's CNI dirs and /var/run/mesh-cni are as before install");
  t.deepEqual(cl.json(['get', 'clusterroles', '-l', AGENT_SELECTOR]).items.map((r: any) => r.metadata.name), [], 'the release\'s ClusterRoles are gone');
  // And a meshed pod created now is plain again (no agent, no entry).
  t.is(await podLandsOn(t, cl, 'after-uninstall', false), `node:${NODE_PORT}`);
});

test.serial('the plain-YAML path: kubectl apply -f install/ redirects a meshed pod, kubectl delete -f install/ restores the node byte for byte', async (t) => {
  t.timeout(8 * 60_000);
  const cl = c();
  const ms = Date.now();
  cl.kubectlOk(['apply', '-f', path.join(REPO_ROOT, 'install')]);
  const agent = await agentReady(cl, 'the agent from install/ Ready with our entry chained', 180_000);
  t.is(seccompOf(cl, agent).mode, '2', 'install/ runs the agent under RuntimeDefault too');
  t.is(await podLandsOn(t, cl, 'plain-yaml', true), 'plain-yaml-proxy:15001');
  t.deepEqual(witness!.unredirected(['plain-yaml']), [], 'the pod never ran without its rules');
  cl.kubectl(['delete', '-f', path.join(REPO_ROOT, 'install'), '--wait=false']);
  await agentGone(cl);
  await cl.waitFor('namespace mesh-cni-system gone', 180_000, () => cl.kubectl(['get', 'namespace', AGENT_NS]).status !== 0);
  figures.push(`plain YAML: apply, a meshed pod redirected, delete and the node restored in ${((Date.now() - ms) / 1000).toFixed(0)} s; ran without rules: ${witness!.unredirected(['plain-yaml']).length}`);
  t.deepEqual(changes(before!, snapshot(cl)), [], "the node's CNI dirs and /var/run/mesh-cni are as before install");
});

test.serial("k3s's layout (its CNI dirs and CRI socket): helm install --set global.platform=k3s and nothing else about paths redirects a meshed pod; helm uninstall restores", async (t) => {
  t.timeout(12 * 60_000);
  const cl = c();
  let ms = Date.now();
  await kubectlAsync(cl, ['-n', NS, 'delete', 'pods', '--all', '--wait=true', '--timeout=120s']);
  await kubectlAsync(cl, ['-n', 'kube-system', 'delete', 'pods', '--all', '--wait=true', '--timeout=120s']);
  await cl.switchLayout(K3S_LAYOUT);
  figures.push(`k3s layout: containerd and kubelet restarted with k3s's dirs and socket, node Ready in ${((Date.now() - ms) / 1000).toFixed(0)} s`);
  t.false(fs.existsSync(cl.inside('/etc/cni/net.d/mesh-cni-kubeconfig')));
  const k3sBefore = snapshot(cl);
  t.true(k3sBefore.has(`${K3S_LAYOUT.cniConfDir}/${PRIMARY_CONFLIST}`), [...k3sBefore.keys()].join(', '));

  ms = Date.now();
  applyAgentNamespace(cl);
  await helmInstall(cl, ['global.platform=k3s']);
  await agentReady(cl, 'the agent Ready with our entry chained into k3s\'s conflist', 180_000);
  const entry = conflist(cl).plugins.at(-1);
  t.is(entry.kubernetes?.kubeconfig, `${K3S_LAYOUT.cniConfDir}/mesh-cni-kubeconfig`, 'our entry names the kubeconfig by its host path in k3s\'s conf dir');
  t.true(fs.existsSync(cl.inside(`${K3S_LAYOUT.cniBinDir}/mesh-cni`)), 'the shim is in k3s\'s bin dir');
  t.false(fs.existsSync(cl.inside('/opt/cni/bin/mesh-cni')), 'and not in /opt/cni/bin');
  const landed = await podLandsOn(t, cl, 'k3s-meshed', true);
  t.is(landed, 'k3s-meshed-proxy:15001');
  t.deepEqual(witness!.unredirected(['k3s-meshed']), []);
  const add = pluginLog(cl).find((l) => l.command === 'ADD' && l.pod === `${NS}/k3s-meshed`);
  t.is(add?.decision, 'meshed', JSON.stringify(add));

  await helmUninstall(cl);
  await agentGone(cl);
  figures.push(`k3s layout: helm install, a meshed pod redirected (${landed}), helm uninstall and the node restored in ${((Date.now() - ms) / 1000).toFixed(0)} s; ran without rules: ${witness!.unredirected(['k3s-meshed']).length}`);
  t.deepEqual(changes(k3sBefore, snapshot(cl)), [], "k3s's CNI dirs and /var/run/mesh-cni are as before install");
});
