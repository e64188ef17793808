/** The agent as its own process (as in the DaemonSet), and the shim executed as a runtime executes it. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, exec, MINIMAL_PATH, SHIM, type Exec } from './lib';

export const STATUS_ANNOTATION = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });
export const INJECTED = { 'sidecar.istio.io/status': STATUS_ANNOTATION };

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
    path.join(dir, 'state'),
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
        if (child.exitCode !== null) return resolve();
        const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', () => {
          clearTimeout(kill);
          resolve();
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
}

/** The shim with stdin = netconf and a runtime's environment, cwd /. */
export function runShim(c: ShimCall): Promise<Exec> {
  const pod = c.podName ?? c.containerId;
  return exec(c.shim ?? SHIM, [], {
    cwd: '/',
    input: JSON.stringify(c.netconf),
    env: {
      PATH: MINIMAL_PATH,
      CNI_COMMAND: c.command,
      CNI_CONTAINERID: c.containerId,
      CNI_NETNS: c.netns,
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/opt/cni/bin',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=${pod};K8S_POD_INFRA_CONTAINER_ID=${c.containerId};K8S_POD_UID=uid-${pod}`,
      MESH_CNI_AGENT_SOCKET: c.socket,
    },
  });
}

export function meshedNetconf(dir: string, backend: string): Record<string, unknown> {
  return {
    cniVersion: '1.0.0',
    name: 'k8s-pod-network',
    type: 'mesh-cni',
    backend,
    log_file: path.join(dir, 'mesh-cni.log'),
    state_dir: path.join(dir, 'state'),
    runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED },
  };
}
