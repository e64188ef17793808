/** The agent as its own process (as in the DaemonSet), and the shim executed as a runtime executes it. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, exec, MINIMAL_PATH, now, SHIM, type Exec } from './lib';
import { collectSpawn, startSpawn } from '../src/netns/spawn';

export const STATUS_ANNOTATION = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });
export const INJECTED = { 'sidecar.istio.io/status': STATUS_ANNOTATION };

/**
 * Where the bench's attachment records go: tmpfs, as /var/run/mesh-cni is on a node (/run is tmpfs under
 * systemd). On this machine's ext4 one record's write took 0.7 ms against 0.05 ms on tmpfs, a cost no node pays.
 */
export function stateDirFor(dir: string): string {
  return fs.existsSync('/dev/shm') ? path.join('/dev/shm', `${path.basename(dir)}-state`) : path.join(dir, 'state');
}

export interface AgentProcess {
  pid: number;
  socket: string;
  healthPort: number;
  stop(): Promise<void>;
}

export async function startAgentProcess(dir: string, options: { kubeconfig?: string; nodeName?: string; repairMode?: string; nodeArgs?: string[]; extraArgs?: string[] } = {}): Promise<AgentProcess> {
  const socket = path.join(dir, 'agent.sock');
  const args = [
    CLI,
    'agent',
    '--socket',
    socket,
    '--health-port',
    '0',
    '--health-host',
    '127.0.0.1',
    '--no-install',
    '--state-dir',
    stateDirFor(dir),
    ...(options.kubeconfig ? ['--kubeconfig', options.kubeconfig, '--node-name', options.nodeName ?? 'bench-node', '--repair-mode', options.repairMode ?? 'off'] : ['--no-kubernetes']),
    ...(options.extraArgs ?? []),
  ];
  const child: ChildProcess = spawn(process.execPath, [...(options.nodeArgs ?? []), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH } });
  const log = fs.createWriteStream(path.join(dir, 'agent.log'));
  child.stderr!.pipe(log);
  const ready = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`the agent did not start in 60 s; see ${path.join(dir, 'agent.log')}`)), 60_000);
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /health on port (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the agent exited (${code}) before it was ready; see ${path.join(dir, 'agent.log')}`));
    });
  });
  return {
    pid: child.pid!,
    socket,
    healthPort: ready,
    stop: () =>
      new Promise<void>((resolve) => {
        const done = () => {
          fs.rmSync(stateDirFor(dir), { recursive: true, force: true });
          resolve();
        };
        if (child.exitCode !== null) return done();
        const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', () => {
          clearTimeout(kill);
          done();
        });
        child.kill('SIGTERM');
      }),
  };
}

export interface ShimCall {
  shim?: string;
  command: string;
  netns: string;
  containerId: string;
  netconf: Record<string, unknown>;
  socket: string;
  podName?: string;
  /**
   * How the shim is started. `posix`: posix_spawn, as a container runtime starts a plugin (containerd's Go
   * os/exec clones with CLONE_VM | CLONE_VFORK), so the bench's own size is not counted. `fork`: Node's
   * child_process, which forks this bench process first. Default fork.
   */
  spawn?: 'posix' | 'fork';
}

/** A program started by posix_spawn and timed from spawn to exit (child_process where that is unavailable). */
export async function execPosix(program: string, env: Record<string, string>, input: string): Promise<Exec> {
  const started = now();
  const child = startSpawn(program, [], input, env);
  if (!child) return exec(program, [], { cwd: '/', env, input });
  const r = await collectSpawn(child, 60_000, () => undefined);
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, ms: now() - started };
}

/** The shim with stdin = netconf and a runtime's environment, cwd /. */
export function runShim(c: ShimCall): Promise<Exec> {
  const pod = c.podName ?? c.containerId;
  const env = {
    PATH: MINIMAL_PATH,
    CNI_COMMAND: c.command,
    CNI_CONTAINERID: c.containerId,
    CNI_NETNS: c.netns,
    CNI_IFNAME: 'eth0',
    CNI_PATH: '/opt/cni/bin',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=${pod};K8S_POD_INFRA_CONTAINER_ID=${c.containerId};K8S_POD_UID=uid-${pod}`,
    MESH_CNI_AGENT_SOCKET: c.socket,
  };
  const input = JSON.stringify(c.netconf);
  if (c.spawn === 'posix') return execPosix(c.shim ?? SHIM, env, input);
  return exec(c.shim ?? SHIM, [], { cwd: '/', input, env });
}

export function meshedNetconf(dir: string, backend: string): Record<string, unknown> {
  return {
    cniVersion: '1.0.0',
    name: 'k8s-pod-network',
    type: 'mesh-cni',
    backend,
    log_file: path.join(dir, 'mesh-cni.log'),
    state_dir: stateDirFor(dir),
    runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED },
  };
}

/** The agent's /metrics text. */
export async function scrapeMetrics(agent: AgentProcess): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${agent.healthPort}/metrics`);
  return res.text();
}

/** Cumulative bucket counts of one histogram series (`le` → count), from Prometheus text. */
export function histogramBuckets(text: string, name: string, labels: Record<string, string>): Map<number, number> {
  const buckets = new Map<number, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}_bucket{`)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    const le = /le="([^"]+)"/.exec(line)?.[1];
    if (le === undefined) continue;
    buckets.set(le === '+Inf' ? Infinity : Number(le), Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return buckets;
}

/**
 * A quantile of what a histogram observed between two scrapes, interpolated within its bucket as
 * Prometheus' histogram_quantile does; NaN when nothing was observed.
 */
export function histogramQuantile(before: Map<number, number>, after: Map<number, number>, q: number): { value: number; count: number } {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const count = (le: number) => (after.get(le) ?? 0) - (before.get(le) ?? 0);
  const total = count(Infinity);
  if (total === 0) return { value: NaN, count: 0 };
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const le of bounds) {
    const c = count(le);
    if (c >= rank) {
      if (le === Infinity) return { value: lower, count: total };
      return { value: lower + ((le - lower) * (rank - below)) / Math.max(c - below, 1e-9), count: total };
    }
    lower = le;
    below = c;
  }
  return { value: lower, count: total };
}

export interface SmallSpawner {
  pid: number;
  run(netns: string, program: string, args: string[], input: string): Promise<{ code: number | null; ms: number; stdout: string }>;
  stop(): void;
}

/** bench/small-spawner.ts as a child process, one job at a time; `fork`: it starts programs with child_process. */
export function startSmallSpawner(how: 'posix' | 'fork' = 'posix'): SmallSpawner {
  const env = { PATH: process.env.PATH, ...(how === 'fork' ? { MESH_CNI_SPAWN: 'fork' } : {}) };
  const child = spawn(process.execPath, [path.join(__dirname, 'small-spawner.js')], { stdio: ['pipe', 'pipe', 'inherit'], env });
  let pending: ((line: string) => void) | undefined;
  let buffered = '';
  child.stdout!.on('data', (c: Buffer) => {
    buffered += c.toString();
    const nl = buffered.indexOf('\n');
    if (nl >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      pending?.(line);
    }
  });
  return {
    pid: child.pid!,
    run: (netns, program, args, input) =>
      new Promise((resolve) => {
        pending = (line) => {
          const r = JSON.parse(line) as { code: number | null; ms: number; stderr: string };
          resolve({ code: r.code, ms: r.ms, stdout: r.stderr });
        };
        child.stdin!.write(`${JSON.stringify({ netns, program, args, input })}\n`);
      }),
    stop: () => {
      child.stdin!.end();
      child.kill('SIGTERM');
    },
  };
}
