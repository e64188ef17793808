/**
 * The API server as the CLI commands reach it: connected as kubectl connects (--kubeconfig, else $KUBECONFIG,
 * else the pod's service account), a pod read and checked to be on this node, a namespace's labels, a
 * service's selector. @kubernetes/client-node is loaded only here, and only by commands that name a pod or list
 * the node's pods. Every call is bounded (src/kube/node-pods.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CoreV1Api, KubeConfig, V1Pod, V1Service } from '@kubernetes/client-node';
import { ApiUnavailableError, MeshCniError, PodNotFoundError, PodNotOnNodeError } from '../errors';
import { apiCall } from '../kube/node-pods';
import type { PodRef } from './pod-ref';

export interface Kube {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
}

/**
 * The kubeconfig files to read, as kubectl picks them: --kubeconfig alone when given; else $KUBECONFIG, a
 * list separated by ':' whose files that do not exist are skipped; undefined: neither (the service account).
 */
export function kubeconfigFiles(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string[] | undefined {
  if (flag) return [flag];
  const listed = (env.KUBECONFIG ?? '').split(path.delimiter).filter((f) => f !== '');
  const present = listed.filter((f) => fs.existsSync(f));
  return present.length > 0 ? present : undefined;
}

/**
 * Several kubeconfig files as one, merged as kubectl merges $KUBECONFIG: the first file to name a cluster,
 * user or context wins, and the current context is the first one set.
 */
async function mergedKubeConfig(files: readonly string[]): Promise<KubeConfig> {
  const k8s = await import('@kubernetes/client-node');
  const configs = files.map((file) => {
    const kc = new k8s.KubeConfig();
    kc.loadFromFile(file);
    return kc;
  });
  if (configs.length === 1) return configs[0]!;
  const firstByName = <T extends { name: string }>(lists: T[][]): T[] => {
    const seen = new Map<string, T>();
    for (const item of lists.flat()) if (!seen.has(item.name)) seen.set(item.name, item);
    return [...seen.values()];
  };
  const merged = new k8s.KubeConfig();
  merged.loadFromOptions({
    clusters: firstByName(configs.map((c) => c.getClusters())),
    users: firstByName(configs.map((c) => c.getUsers())),
    contexts: firstByName(configs.map((c) => c.getContexts())),
    currentContext: configs.map((c) => c.getCurrentContext()).find((name) => Boolean(name)) ?? '',
  });
  return merged;
}

/** As kubectl connects: --kubeconfig, else $KUBECONFIG, else the in-cluster service account; refuses early when there is none. */
export async function connectKube(kubeconfigPath: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<Kube> {
  const files = kubeconfigFiles(kubeconfigPath, env);
  if (!files && !env.KUBERNETES_SERVICE_HOST) {
    const why = env.KUBECONFIG ? `none of $KUBECONFIG's files exists (${env.KUBECONFIG})` : 'no --kubeconfig given, $KUBECONFIG unset';
    throw new ApiUnavailableError(`no API server to ask: ${why}, and not running in a cluster`);
  }
  let kubeConfig: KubeConfig;
  try {
    if (files) kubeConfig = await mergedKubeConfig(files);
    else {
      const { loadKubeConfig } = await import('../kube/pod-cache');
      kubeConfig = await loadKubeConfig(undefined);
    }
  } catch (err) {
    throw new ApiUnavailableError(`cannot load the kubeconfig${files ? ` (${files.join(', ')})` : ''}: ${(err as Error).message}`, err);
  }
  const k8s = await import('@kubernetes/client-node');
  return { kubeConfig, core: kubeConfig.makeApiClient(k8s.CoreV1Api) };
}

export async function getPod(kube: Kube, ref: PodRef): Promise<V1Pod> {
  try {
    return await apiCall(`reading pod ${ref.namespace}/${ref.name}`, () => kube.core.readNamespacedPod(ref));
  } catch (err) {
    if ((err as { status?: number }).status === 404) throw new PodNotFoundError(ref.namespace, ref.name);
    throw err;
  }
}

export function requireOnNode(pod: V1Pod, nodeName: string | undefined): void {
  if (nodeName === undefined) return;
  const podNode = pod.spec?.nodeName;
  if (podNode !== nodeName) throw new PodNotOnNodeError(`${pod.metadata?.namespace}/${pod.metadata?.name}`, podNode, nodeName);
}

/** A namespace's labels (ambient can be enabled there); undefined when it cannot be read. */
export async function namespaceLabels(kube: Kube, namespace: string): Promise<Record<string, string> | undefined> {
  try {
    const ns = await apiCall(`reading namespace ${namespace}`, () => kube.core.readNamespace({ name: namespace }));
    return ns.metadata?.labels ?? {};
  } catch {
    return undefined;
  }
}

export async function getService(kube: Kube, ref: PodRef): Promise<V1Service> {
  try {
    return await apiCall(`reading service ${ref.namespace}/${ref.name}`, () => kube.core.readNamespacedService(ref));
  } catch (err) {
    if ((err as { status?: number }).status === 404) {
      throw new MeshCniError(`service ${ref.namespace}/${ref.name} not found`, { hint: `check the name and namespace: kubectl get services -n ${ref.namespace}` });
    }
    throw err;
  }
}

/** Whether a pod is behind a service: in its namespace and carrying every label of its selector. */
export function selectedBy(service: V1Service, pod: V1Pod): boolean {
  const selector = service.spec?.selector ?? {};
  if (Object.keys(selector).length === 0 || pod.metadata?.namespace !== service.metadata?.namespace) return false;
  const labels = pod.metadata?.labels ?? {};
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

/** Every service the API lists, as NAMESPACE/NAME (for completion), within `timeoutMs`. */
export async function listServices(kube: Kube, timeoutMs?: number): Promise<PodRef[]> {
  const list = await apiCall('listing services', () => kube.core.listServiceForAllNamespaces(), timeoutMs);
  return list.items.map((s) => ({ namespace: s.metadata?.namespace ?? '', name: s.metadata?.name ?? '' }));
}
