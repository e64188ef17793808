/** The native shim executed as a container runtime executes a CNI plugin: CNI_* environment, netconf on stdin. */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SHIM } from './node-deps';

export interface ShimRun {
  code: number;
  stdout: string;
  stderr: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
}

export interface ExecShimOptions {
  timeoutMs?: number;
  /** the binary to run (default: the built shim); a node's bin dir holds a link to it */
  program?: string;
  /** the network namespace to run it from (as a runtime runs plugins from the node's); default ours */
  netnsPath?: string;
}

/**
 * `stdin`: a Buffer or string is sent as it is, anything else as JSON. The one way tests run the shim, from
 * this netns or (`netnsPath`) a node's, through nsenter as a runtime would start it there.
 */
export function execShim(env: Record<string, string | undefined>, stdin: unknown, options: number | ExecShimOptions = {}): Promise<ShimRun> {
  const o: ExecShimOptions = typeof options === 'number' ? { timeoutMs: options } : options;
  const timeoutMs = o.timeoutMs ?? 60_000;
  const program = o.program ?? SHIM;
  const [file, args] = o.netnsPath ? ['nsenter', [`--net=${o.netnsPath}`, '--', program]] : [program, []];
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString();
      let json: unknown;
      try {
        json = stdout ? JSON.parse(stdout) : undefined;
      } catch {
        json = undefined;
      }
      resolve({ code: code ?? -1, stdout, stderr: Buffer.concat(err).toString(), json });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(typeof stdin === 'string' || Buffer.isBuffer(stdin) ? stdin : JSON.stringify(stdin));
  });
}

/** A pod's netconf for a standalone ADD (its annotations in runtimeConfig, as containerd passes them), logging under `root`. */
export function standaloneNetconf(root: string, backend: string, annotations: Record<string, string>, stateDir = `${root}/state`): Record<string, unknown> {
  return { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend, log_file: `${root}/mesh-cni.log`, state_dir: stateDir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': annotations } };
}

/**
 * The environment a container runtime gives the plugin for an ADD (a node's PATH, the CNI_* variables), with
 * an agent socket nobody serves, so the shim runs the engine standalone.
 */
export function standaloneAddEnv(o: { containerId: string; netns: string; cniPath: string; root: string; podArgs: string }, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: o.containerId,
    CNI_NETNS: o.netns,
    CNI_IFNAME: 'eth0',
    CNI_PATH: o.cniPath,
    CNI_ARGS: o.podArgs,
    MESH_CNI_AGENT_SOCKET: `${o.root}/no-agent.sock`,
    ...extra,
  };
}

/**
 * Makes the engine installed under `binDir` require `probe` first (its entry, mesh-cni.js, rewritten by
 * rename: the installed file may share its inode with the build's). The shim starts the engine in a clean
 * environment, so a probe cannot ride in on NODE_OPTIONS; it goes into the engine's own first file instead.
 */
export function probeInstalledEngine(binDir: string, probe: string): void {
  const entry = path.join(binDir, 'mesh-cni.d', 'mesh-cni.js');
  const text = fs.readFileSync(entry, 'utf8');
  const strict = "'use strict';\n";
  if (!text.includes(strict)) throw new Error(`${entry} does not start as the engine's entry does`);
  fs.writeFileSync(`${entry}.probe`, text.replace(strict, `${strict}require(${JSON.stringify(probe)});\n`), { mode: 0o644 });
  fs.renameSync(`${entry}.probe`, entry);
}
