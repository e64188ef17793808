/**
 * Benchmark 7, API load per node: what one agent asks of the API server while pods come and go. A real
 * etcd + kube-apiserver with an audit log (test/support/kube.ts), the agent as the DaemonSet runs it (watch
 * cache of its node's pods, reconciler in `repair` mode) under its own user, reaching the API server through
 * a byte-counting TCP relay on loopback (the audit log has no response sizes, and a watch's events are not
 * audited one by one). Then, as kubelet and the scheduler would:
 *   1. 100 pods created and deleted on other nodes (a node-scoped watch should hear nothing of them);
 *   2. 100 pods created on the agent's node, each ADDed through the shim with a netconf that names a
 *      kubeconfig and carries no annotations (so only the cache or a GET can decide it), marked running with
 *      a pod IP (the reconciler then checks it), DELeted and deleted.
 * The agent's requests are counted from the audit log by verb and resource (pods, pods/status and events
 * are audited), the bytes at the relay. Target: no per-pod GET while the watch is healthy.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { startKube, type AuditEvent, type Kube } from '../test/support/kube';
import { INJECTED, startAgentProcess, type AgentProcess } from './agent-process';
import { exec, freshNetnsBatch, MINIMAL_PATH, removeNetns, SHIM, table, tempDir, writeResult, type Summary } from './lib';

const PODS = Number(process.env.BENCH_API_PODS ?? 100);
const NODE = 'bench-api-node';
const AGENT_USER = 'system:serviceaccount:mesh-cni-system:mesh-cni';
const AGENT_TOKEN = 'bench-api-load-agent-token';
/** The cluster the figures are extrapolated to. */
const CLUSTER_NODES = 5000;
const PODS_PER_NODE = 110;

interface Relay {
  port: number;
  /** bytes the API server sent to the agent, and the agent to the API server */
  down: number;
  up: number;
  connections: number;
  close(): Promise<void>;
}

/** A TCP relay 127.0.0.1:port → the API server that counts bytes each way (TLS passes through untouched). */
function countingRelay(target: number): Promise<Relay> {
  const sockets = new Set<net.Socket>();
  const relay: Relay = { port: 0, down: 0, up: 0, connections: 0, close: async () => undefined };
  const server = net.createServer((client) => {
    relay.connections++;
    const upstream = net.connect(target, '127.0.0.1');
    sockets.add(client).add(upstream);
    client.on('data', (d: Buffer) => (relay.up += d.length));
    upstream.on('data', (d: Buffer) => (relay.down += d.length));
    client.pipe(upstream).pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  relay.close = () =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      relay.port = (server.address() as net.AddressInfo).port;
      resolve(relay);
    });
  });
}

function agentKubeconfig(file: string, port: number, caFile: string): void {
  fs.writeFileSync(
    file,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      `- name: bench\n  cluster:\n    server: https://127.0.0.1:${port}\n    certificate-authority: ${caFile}`,
      'users:',
      `- name: agent\n  user:\n    token: ${AGENT_TOKEN}`,
      'contexts:',
      '- name: bench\n  context:\n    cluster: bench\n    user: agent',
      'current-context: bench',
      '',
    ].join('\n'),
  );
}

/** One request per audit ID (a watch is logged when it starts and when it ends). */
function agentRequests(events: AuditEvent[]): AuditEvent[] {
  const seen = new Set<string>();
  return events.filter((e) => {
    if (e.user?.username !== AGENT_USER) return false;
    const id = (e as { auditID?: string }).auditID ?? `${e.verb} ${e.requestURI}`;
    if (seen.has(id)) return false;
    seen.add(id);
    return true;
  });
}

const kindOf = (e: AuditEvent) => `${e.verb} ${e.objectRef?.resource ?? '?'}${e.objectRef?.subresource ? `/${e.objectRef.subresource}` : ''}`;
const isPodGet = (e: AuditEvent) => e.verb === 'get' && e.objectRef?.resource === 'pods' && !e.objectRef.subresource && Boolean(e.objectRef.name);

function countByKind(events: AuditEvent[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const e of events) counts.set(kindOf(e), (counts.get(kindOf(e)) ?? 0) + 1);
  return counts;
}

async function inBatches<T>(items: T[], size: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

interface Phase {
  name: string;
  requests: AuditEvent[];
  down: number;
  up: number;
}

export async function benchApiLoad(): Promise<Summary[]> {
  const dir = tempDir('api-load');
  let kube: Kube | undefined;
  let relay: Relay | undefined;
  let agent: AgentProcess | undefined;
  const netns: string[] = [];
  const phases: Phase[] = [];
  const sources = new Map<string, number>();
  try {
    kube = await startKube({ audit: true, users: [[AGENT_TOKEN, AGENT_USER, ['system:serviceaccounts']]] });
    const k = kube;
    await k.ensureNamespace('bench');
    relay = await countingRelay(k.port);
    const r = relay;
    const kubeconfig = path.join(dir, 'agent.kubeconfig');
    agentKubeconfig(kubeconfig, r.port, k.caFile);
    const agentDir = fs.mkdtempSync(`${dir}/agent-`);
    const mark = () => ({ events: agentRequests(k.auditEvents()).length, down: r.down, up: r.up });
    const phase = async (name: string, work: () => Promise<void>) => {
      const before = mark();
      await work();
      // The last watch events and the reconciler's debounced checks (300 ms) settle.
      await new Promise((res) => setTimeout(res, 3000));
      phases.push({ name, requests: agentRequests(k.auditEvents()).slice(before.events), down: r.down - before.down, up: r.up - before.up });
    };
    await phase('agent start (list + watch), 5 s idle', async () => {
      agent = await startAgentProcess(agentDir, { kubeconfig, nodeName: NODE, repairMode: 'repair', extraArgs: ['--cri-socket', ''] });
      await new Promise((res) => setTimeout(res, 2000));
    });

    await phase(`${PODS} pods created and deleted on other nodes`, async () => {
      const names = Array.from({ length: PODS }, (_, i) => `other-${i}`);
      await inBatches(names, 20, (name) => k.createPod({ namespace: 'bench', name, nodeName: `other-node-${name.length % 7}`, annotations: INJECTED, containers: ['app', 'istio-proxy'] }));
      await inBatches(names, 20, (name) => k.core().deleteNamespacedPod({ namespace: 'bench', name, gracePeriodSeconds: 0 }));
    });

    const stateDir = path.join(agentDir, 'state');
    const netconf = { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables', log_file: path.join(dir, 'mesh-cni.log'), state_dir: stateDir, kubernetes: { kubeconfig } };
    netns.push(...freshNetnsBatch(PODS));
    const shim = (command: string, name: string, uid: string, ns: string) =>
      exec(SHIM, [], {
        cwd: '/',
        input: JSON.stringify(netconf),
        env: {
          PATH: MINIMAL_PATH,
          CNI_COMMAND: command,
          CNI_CONTAINERID: `c-${name}`,
          CNI_NETNS: ns,
          CNI_IFNAME: 'eth0',
          CNI_PATH: '/opt/cni/bin',
          CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=c-${name};K8S_POD_UID=${uid}`,
          MESH_CNI_AGENT_SOCKET: path.join(agentDir, 'agent.sock'),
        },
      });
    await phase(`${PODS} pods on the agent's node: create, ADD, running, DEL, delete`, async () => {
      const pods = Array.from({ length: PODS }, (_, i) => ({ name: `pod-${i}`, ns: netns[i]!, uid: '' }));
      // As kubelet: the sandbox of a pod is created once the pod is bound to the node, a few at a time.
      await inBatches(pods, 10, async (p) => {
        const created = await k.createPod({ namespace: 'bench', name: p.name, nodeName: NODE, annotations: INJECTED, containers: ['app', 'istio-proxy'] });
        p.uid = created.metadata!.uid!;
        const add = await shim('ADD', p.name, p.uid, p.ns);
        if (add.code !== 0) throw new Error(`ADD ${p.name} failed: ${add.stdout}${add.stderr}`);
        await k.markRunning('bench', p.name, `10.200.${Math.floor(pods.indexOf(p) / 250)}.${(pods.indexOf(p) % 250) + 1}`);
      });
      // Let a resync-free agent see every pod running (its reconciler checks each on the watch event).
      await new Promise((res) => setTimeout(res, 2000));
      await inBatches(pods, 10, async (p) => {
        const del = await shim('DEL', p.name, p.uid, p.ns);
        if (del.code !== 0) throw new Error(`DEL ${p.name} failed: ${del.stdout}${del.stderr}`);
        await k.core().deleteNamespacedPod({ namespace: 'bench', name: p.name, gracePeriodSeconds: 0 });
      });
    });
    for (const line of fs.readFileSync(path.join(dir, 'mesh-cni.log'), 'utf8').split('\n')) {
      try {
        const l = JSON.parse(line) as { command?: string; source?: string };
        if (l.command === 'ADD') sources.set(l.source ?? 'none', (sources.get(l.source ?? 'none') ?? 0) + 1);
      } catch {
        continue;
      }
    }
  } finally {
    await agent?.stop();
    await relay?.close();
    await kube?.stop();
    for (const ns of netns) removeNetns(ns);
    fs.rmSync(dir, { recursive: true, force: true });
  }

  const [start, others, own] = phases as [Phase, Phase, Phase];
  console.log('\n== 7. API load of one agent (audit log: pods, pods/status, events; bytes at a relay, TLS included)');
  console.log(
    table(
      ['phase', 'requests', 'by verb/resource', 'per-pod GETs', 'KiB down', 'KiB up'],
      phases.map((p) => [p.name, p.requests.length, [...countByKind(p.requests)].map(([k, n]) => `${k} ${n}`).join(', ') || '-', p.requests.filter(isPodGet).length, p.down / 1024, p.up / 1024]),
    ),
  );
  console.log(`ADDs by pod source (agent's log): ${[...sources].map(([s, n]) => `${s} ${n}`).join(', ')}`);
  const perPodBytes = own.down / PODS;
  const perPodRequests = own.requests.length / PODS;
  const clusterPods = CLUSTER_NODES * PODS_PER_NODE;
  const extrapolated = {
    nodes: CLUSTER_NODES,
    podsPerNode: PODS_PER_NODE,
    startBytesPerNode: start.down,
    startRequestsPerNode: start.requests.length,
    bytesPerPodLifecycle: perPodBytes,
    requestsPerPodLifecycle: perPodRequests,
    otherNodesBytesPerPod: others.down / PODS,
    /** every node starting once (a DaemonSet rollout) */
    rolloutRequests: CLUSTER_NODES * start.requests.length,
    rolloutMiB: (CLUSTER_NODES * start.down) / 2 ** 20,
    /** every pod of the cluster created and deleted once */
    churnRequests: clusterPods * perPodRequests,
    churnMiB: (clusterPods * perPodBytes) / 2 ** 20,
  };
  console.log(
    `extrapolated to ${CLUSTER_NODES} nodes × ${PODS_PER_NODE} pods: rollout (every agent starts) ${extrapolated.rolloutRequests} requests, ${extrapolated.rolloutMiB.toFixed(1)} MiB;` +
      ` every pod created and deleted once ${Math.round(extrapolated.churnRequests)} requests, ${extrapolated.churnMiB.toFixed(0)} MiB (${(perPodBytes / 1024).toFixed(1)} KiB and ${perPodRequests.toFixed(2)} requests per pod, on its own node only)`,
  );
  writeResult('api-load', {
    pods: PODS,
    phases: phases.map((p) => ({ name: p.name, requests: p.requests.length, byKind: Object.fromEntries(countByKind(p.requests)), podGets: p.requests.filter(isPodGet).length, bytesDown: p.down, bytesUp: p.up })),
    addSources: Object.fromEntries(sources),
    extrapolated,
  });
  const podGets = phases.reduce((n, p) => n + p.requests.filter(isPodGet).length, 0);
  return [
    {
      name: 'api-per-pod-gets',
      value: podGets,
      unit: 'GETs',
      target: 0,
      atMost: true,
      note: `${PODS} pods ADDed, sources ${[...sources].map(([s, n]) => `${s} ${n}`).join(', ')}; ${perPodRequests.toFixed(2)} requests and ${(perPodBytes / 1024).toFixed(1)} KiB per pod, ${(others.down / PODS).toFixed(0)} B per pod of another node`,
    },
  ];
}
