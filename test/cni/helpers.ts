/** Shared builders for the CNI tests: requests as a runtime sends them, and recording stand-ins. */
import { join } from 'node:path';
import { fileTempDir } from '../support/tmp';
import type { RedirectConfig } from '../../src/redirect/config';
import { pluginDeps, type EngineApi, type PluginOptions } from '../../src/standalone/wiring';
import { runCni } from '../../src/cni/dispatch';
import type { CniResponse } from '../../src/cni/types';

export const logDir = fileTempDir('test');
export const logFile = join(logDir, 'cni.log');

export const STATUS_ANNOTATION = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });
export const INJECTED = { 'sidecar.istio.io/status': STATUS_ANNOTATION };

export function netconf(extra: Record<string, unknown> = {}, cniVersion = '1.0.0'): Record<string, unknown> {
  return { cniVersion, name: 'k8s-pod-network', type: 'mesh-cni', log_file: logFile, state_dir: logDir, ...extra };
}

export function withAnnotations(annotations: Record<string, string>, extra: Record<string, unknown> = {}, cniVersion = '1.0.0') {
  return netconf({ runtimeConfig: { 'io.kubernetes.cri.pod-annotations': annotations }, ...extra }, cniVersion);
}

export const POD_ARGS = 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=uid-1';

export function env(command: string, overrides: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    CNI_COMMAND: command,
    CNI_CONTAINERID: 'abc123',
    CNI_NETNS: '/var/run/netns/cni-test',
    CNI_IFNAME: 'eth0',
    CNI_PATH: '/opt/cni/bin',
    CNI_ARGS: POD_ARGS,
    ...overrides,
  };
}

export interface EngineCall {
  fn: 'apply' | 'remove' | 'check';
  netns: string;
  config?: RedirectConfig;
  backend?: string;
}

export function recordingEngine(behaviour: Partial<EngineApi> = {}): EngineApi & { calls: EngineCall[] } {
  const calls: EngineCall[] = [];
  return {
    calls,
    applyRedirect: async (o) => {
      calls.push({ fn: 'apply', netns: o.netns, config: o.config, backend: o.backend });
      return behaviour.applyRedirect ? behaviour.applyRedirect(o) : { backend: 'iptables-nft', backendReason: 'chosen by the test', families: ['ipv4'], rules: 12, durationMs: 3 };
    },
    removeRedirect: async (o) => {
      calls.push({ fn: 'remove', netns: o.netns, backend: o.backend });
      return behaviour.removeRedirect ? behaviour.removeRedirect(o) : { removed: 12 };
    },
    checkRedirect: async (o) => {
      calls.push({ fn: 'check', netns: o.netns, config: o.config, backend: o.backend });
      return behaviour.checkRedirect ? behaviour.checkRedirect(o) : { ok: true, problems: [] };
    },
  };
}

/** The plugin's wiring with a recording engine, a netns check that passes and a STATUS that is ready. */
export function unitDeps(extra: Partial<PluginOptions> = {}): PluginOptions & { engine: ReturnType<typeof recordingEngine> } {
  return {
    engine: recordingEngine(),
    classifyNetns: () => 'netns',
    defaultLogFile: logFile,
    status: async () => undefined,
    ...extra,
  } as PluginOptions & { engine: ReturnType<typeof recordingEngine> };
}

export async function run(
  command: string,
  conf: Record<string, unknown> | string | Buffer,
  deps: PluginOptions = unitDeps(),
  envOverrides: Record<string, string | undefined> = {},
): Promise<CniResponse & { json: any }> {
  const stdin = Buffer.isBuffer(conf) ? conf : Buffer.from(typeof conf === 'string' ? conf : JSON.stringify(conf));
  const response = await runCni({ env: env(command, envOverrides), stdin }, pluginDeps(deps));
  let json: any;
  try {
    json = response.stdout ? JSON.parse(response.stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { ...response, json };
}
