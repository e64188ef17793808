/**
 * Pods, traffic and measurements for the cluster suite (test/cluster/), on a Cluster from ./cluster.
 *
 * Meshed pods have Istio's injected shape (the sidecar.istio.io/status annotation, an istio-validation init
 * container and an istio-proxy container running as 1337). Their app container connects, from its first
 * instant and every 0.2 s, to the witness in the node's netns (cluster-probe.py), sending its pod's name: with
 * the pod's rules in place that connection is redirected to the pod's own port 15001 and never arrives. So a
 * witness line naming a meshed pod is proof that the pod ran without its rules.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { APP_IMAGE, NODE_IP, type Cluster } from './cluster';
import { REPO_ROOT } from './paths';
import { startService, waitUntil, type Service } from './service';

const SUPPORT_DIR = path.resolve(__dirname, '../../../test/support');
/** The witness's port on the node IP. */
export const WITNESS_PORT = 18081;
/** A port on the node IP where the test listens for traffic that must not be redirected. */
export const NODE_PORT = 18080;
export const ISTIO_STATUS = JSON.stringify({
  initContainers: ['istio-validation'],
  containers: ['istio-proxy'],
  volumes: ['istio-envoy', 'istio-data', 'istio-podinfo', 'istiod-ca-cert'],
  imagePullSecrets: null,
  revision: 'default',
});

const PROBE = `while true; do echo "$POD_NAME" | /bin/busybox nc -w 1 ${NODE_IP} ${WITNESS_PORT}; /bin/busybox sleep 0.2; done`;

export interface PodOptions {
  name: string;
  namespace: string;
  meshed: boolean;
  labels?: Record<string, string>;
}

/** A pod manifest: meshed (Istio's injected shape, probing the witness) or plain (sleeps). */
export function podManifest(o: PodOptions): Record<string, unknown> {
  const busybox = (name: string, command: string[], extra: Record<string, unknown> = {}) => ({ name, image: APP_IMAGE, imagePullPolicy: 'Never', command, ...extra });
  const proxyUser = { securityContext: { runAsUser: 1337, runAsGroup: 1337 } };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: o.name,
      namespace: o.namespace,
      labels: { 'mesh-cni-test': 'true', ...o.labels },
      annotations: o.meshed ? { 'sidecar.istio.io/status': ISTIO_STATUS } : {},
    },
    spec: {
      terminationGracePeriodSeconds: 1,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      ...(o.meshed
        ? {
            initContainers: [busybox('istio-validation', ['/bin/busybox', 'true'], proxyUser)],
            containers: [
              busybox('app', ['/bin/busybox', 'sh', '-c', PROBE], { env: [{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }] }),
              busybox('istio-proxy', ['/bin/busybox', 'sleep', '2147483647'], proxyUser),
            ],
          }
        : { containers: [busybox('app', ['/bin/busybox', 'sleep', '2147483647'])] }),
    },
  };
}

/** kubectl without blocking the event loop (pods are created while the test watches other things). */
export function kubectlAsync(cluster: Cluster, args: string[], input?: string): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('nsenter', [`--net=${cluster.netnsPath}`, '--', 'kubectl', `--kubeconfig=${cluster.adminKubeconfig}`, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH, HOME: cluster.dir },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ status: code ?? -1, stdout, stderr }));
    child.on('error', (e) => resolve({ status: -1, stdout, stderr: e.message }));
    child.stdin.end(input ?? '');
  });
}

export async function createPod(cluster: Cluster, o: PodOptions): Promise<void> {
  const r = await kubectlAsync(cluster, ['create', '-f', '-'], JSON.stringify(podManifest(o)));
  if (r.status !== 0) throw new Error(`creating pod ${o.namespace}/${o.name} failed: ${r.stderr.trim()}`);
}

export function ensureNamespace(cluster: Cluster, name: string): void {
  if (cluster.kubectl(['get', 'namespace', name]).status !== 0) cluster.kubectlOk(['create', 'namespace', name]);
}

/** Every container of the pod running (init containers done). */
export function podRunning(pod: any): boolean {
  const statuses: any[] = pod?.status?.containerStatuses ?? [];
  return pod?.status?.phase === 'Running' && statuses.length === (pod.spec?.containers?.length ?? -1) && statuses.every((s) => s.state?.running);
}

export async function waitPodsRunning(cluster: Cluster, namespace: string, names: string[], timeoutMs: number): Promise<any[]> {
  return cluster.waitFor(
    `pods ${names.map((n) => `${namespace}/${n}`).join(', ')} Running`,
    timeoutMs,
    () => {
      const items: any[] = cluster.json(['-n', namespace, 'get', 'pods']).items;
      const byName = new Map(items.map((p) => [p.metadata.name, p]));
      const pods = names.map((n) => byName.get(n));
      return pods.every(podRunning) ? pods : undefined;
    },
    () => describePods(cluster, namespace),
  );
}

export function describePods(cluster: Cluster, namespace: string): string {
  const pods = cluster.kubectl(['-n', namespace, 'get', 'pods', '-o', 'wide']).stdout;
  const events = cluster.kubectl(['-n', namespace, 'get', 'events', '--sort-by=.lastTimestamp']).stdout.split('\n').slice(-15).join('\n');
  return `pods in ${namespace}:\n${pods}\nevents:\n${events}\nkubelet:\n${cluster.logTail('kubelet', 15)}`;
}

/** Where the chart puts the agent, and the label its DaemonSet, pods and cluster-wide objects carry. */
export const AGENT_NS = 'mesh-cni-system';
export const AGENT_SELECTOR = 'app.kubernetes.io/name=mesh-cni';

export function agentPods(cl: Cluster): any[] {
  return cl.json(['-n', AGENT_NS, 'get', 'pods', '-l', AGENT_SELECTOR]).items;
}

/** The agent pod that is not being deleted (one node: at most one). */
export function liveAgentPod(cl: Cluster): any {
  return agentPods(cl).find((p) => !p.metadata.deletionTimestamp);
}

export function podReady(pod: any): boolean {
  return !!pod?.status?.conditions?.some((x: any) => x.type === 'Ready' && x.status === 'True');
}

/** What a failed wait on the agent shows: its namespace's pods and events, and the agent's last log lines. */
export function agentContext(cl: Cluster): string {
  return `${describePods(cl, AGENT_NS)}\nagent log:\n${cl.kubectl(['-n', AGENT_NS, 'logs', '--tail=20', '-l', AGENT_SELECTOR]).stdout}`;
}

/** The agent's namespace with its Pod Security labels, applied before the chart as the README says. */
export function applyAgentNamespace(cl: Cluster): void {
  cl.kubectlOk(['apply', '-f', path.join(REPO_ROOT, 'install', '00-namespace.yaml')]);
}

/** PIDs of containerd's tasks (containers and sandboxes) by container id, as `ctr task ls` prints them. */
export function taskPids(cluster: Cluster): Map<string, number> {
  const r = cluster.ctr(['tasks', 'ls']);
  const pids = new Map<string, number>();
  for (const line of r.stdout.split('\n').slice(1)) {
    const [id, pid] = line.trim().split(/\s+/);
    if (id && pid && /^\d+$/.test(pid)) pids.set(id, Number(pid));
  }
  return pids;
}

/** A running container's host PID (its id from the pod's status). */
export function containerPid(cluster: Cluster, pod: any, container: string): number {
  const status = (pod.status?.containerStatuses ?? []).find((s: any) => s.name === container);
  const id = String(status?.containerID ?? '').replace(/^containerd:\/\//, '');
  const pid = taskPids(cluster).get(id);
  if (!pid) throw new Error(`no running task for ${pod.metadata.namespace}/${pod.metadata.name} container ${container} (${id || 'no id'})`);
  return pid;
}

/** The pod's network namespace, as the host opens it. */
export function podNetns(cluster: Cluster, pod: any): string {
  return `/proc/${containerPid(cluster, pod, pod.spec.containers[0].name)}/ns/net`;
}

export interface WitnessHit {
  name: string;
  peer: string;
  t: number;
}

/** The witness (cluster-probe.py) on NODE_IP:WITNESS_PORT in the node's netns. */
export class Witness {
  private constructor(private readonly service: Service) {}

  static async start(cluster: Cluster): Promise<Witness> {
    const service = cluster.add(
      startService('witness', ['/usr/bin/python3', path.join(SUPPORT_DIR, 'cluster-probe.py'), NODE_IP, String(WITNESS_PORT)], {
        netnsPath: cluster.netnsPath,
        logFile: path.join(cluster.dir, 'logs', 'witness.log'),
        graceSeconds: 1,
      }),
    );
    await waitUntil(service, 'listening', 10_000, () => fs.readFileSync(service.logFile, 'utf8').includes('"ready"'));
    return new Witness(service);
  }

  hits(): WitnessHit[] {
    return fs
      .readFileSync(this.service.logFile, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{"name"'))
      .map((l) => JSON.parse(l) as WitnessHit);
  }

  /** Meshed pods (by name) that reached the witness: pods that ran without their rules. */
  unredirected(names: string[]): string[] {
    const seen = new Set(this.hits().map((h) => h.name));
    return names.filter((n) => seen.has(n));
  }
}

/** Runs a command in a netns the host can open (a pod's /proc/PID/ns/net or the node's). */
export function inNetns(netns: string, argv: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('nsenter', [`--net=${netns}`, '--', ...argv], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

export interface Churn {
  /** Stops creating pods; resolves with the names created. */
  stop(): Promise<string[]>;
}

/**
 * Creates meshed pods `prefix-1`, `prefix-2`, ... one every `intervalMs` until stopped or `max` are created:
 * pods arriving throughout an agent restart (the cap keeps a slow restart on a loaded machine from piling up
 * pods that slow it further).
 */
export function churnPods(cluster: Cluster, namespace: string, prefix: string, intervalMs: number, created: Map<string, number>, max = 24): Churn {
  let stopping = false;
  let n = 0;
  const errors: string[] = [];
  const loop = (async () => {
    while (!stopping && n < max) {
      const name = `${prefix}-${++n}`;
      const t0 = Date.now();
      try {
        await createPod(cluster, { name, namespace, meshed: true, labels: { batch: prefix } });
        created.set(name, t0);
      } catch (err) {
        errors.push((err as Error).message);
      }
      const wait = intervalMs - (Date.now() - t0);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  return {
    async stop() {
      stopping = true;
      await loop;
      if (errors.length > 0) throw new Error(`creating pods failed: ${errors.join('; ')}`);
      return [...created.keys()];
    },
  };
}

/**
 * Polls the batch's pods until all run; returns each pod's start delay: from its creation (as the test
 * issued it) to the first poll that saw every container running.
 */
export async function startDelays(cluster: Cluster, namespace: string, batch: string, created: Map<string, number>, timeoutMs: number): Promise<Map<string, number>> {
  const delays = new Map<string, number>();
  await cluster.waitFor(
    `every pod of batch ${batch} running`,
    timeoutMs,
    () => {
      const items: any[] = cluster.json(['-n', namespace, 'get', 'pods', '-l', `batch=${batch}`]).items;
      const now = Date.now();
      for (const p of items) {
        const t0 = created.get(p.metadata.name);
        if (t0 !== undefined && !delays.has(p.metadata.name) && podRunning(p)) delays.set(p.metadata.name, now - t0);
      }
      return delays.size === created.size;
    },
    () => describePods(cluster, namespace),
  );
  return delays;
}

export function summarize(values: number[]): string {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return 'none';
  const q = (f: number) => s[Math.min(s.length - 1, Math.floor(f * s.length))]!;
  return `min ${(s[0]! / 1000).toFixed(1)} s, median ${(q(0.5) / 1000).toFixed(1)} s, max ${(s[s.length - 1]! / 1000).toFixed(1)} s`;
}
