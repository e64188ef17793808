/**
 * The API server as the CLI commands reach it: connected from a kubeconfig or the service account, a pod
 * read and checked to be on this node, a namespace's labels. @kubernetes/client-node is loaded only here, and
 * only by commands that name a pod or list the node's pods. Every call is bounded (src/kube/node-pods.ts).
 */
import type { CoreV1Api, KubeConfig, V1Pod } from '@kubernetes/client-node';
import { ApiUnavailableError, PodNotFoundError, PodNotOnNodeError } from '../errors';
import { apiCall } from '../kube/node-pods';
import type { PodRef } from './pod-ref';

export interface Kube {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
}

/** A kubeconfig file, or the in-cluster service account; refuses early when there is neither. */
export async function connectKube(kubeconfigPath: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<Kube> {
  if (!kubeconfigPath && !env.KUBERNETES_SERVICE_HOST) {
    throw new ApiUnavailableError('no API server to ask: no --kubeconfig given and not running in a cluster');
  }
  const { loadKubeConfig } = await import('../kube/pod-cache');
  let kubeConfig: KubeConfig;
  try {
    kubeConfig = await loadKubeConfig(kubeconfigPath);
  } catch (err) {
    throw new ApiUnavailableError(`cannot load the kubeconfig: ${(err as Error).message}`, err);
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
