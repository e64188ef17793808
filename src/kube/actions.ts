/**
 * The reconciler's writes to the API: label through pods/status (Istio's repair controller does the same,
 * so only that subresource needs RBAC), delete with preconditions, and Events on the pod.
 */
import type { CoreV1Api, KubeConfig, V1Pod } from '@kubernetes/client-node';
import { AMBIENT_ANNOTATIONS, UNINITIALIZED_LABEL } from '../mesh/istio-names';

export interface PodActions {
  label(pod: V1Pod): Promise<void>;
  delete(pod: V1Pod): Promise<void>;
  event(pod: V1Pod, reason: string, message: string, type: 'Normal' | 'Warning'): Promise<void>;
}

/**
 * `kubeConfig` is asked for on the first action, not before: a node whose pods are all healthy never loads
 * @kubernetes/client-node for these (see pod-cache.ts).
 */
export async function podActions(kubeConfig: KubeConfig | (() => KubeConfig), nodeName: string): Promise<PodActions> {
  let client: CoreV1Api | undefined;
  const core = async (): Promise<CoreV1Api> => {
    if (!client) {
      const k8s = await import('@kubernetes/client-node');
      client = (typeof kubeConfig === 'function' ? kubeConfig() : kubeConfig).makeApiClient(k8s.CoreV1Api);
    }
    return client;
  };
  const id = (pod: V1Pod) => ({ name: pod.metadata?.name ?? '', namespace: pod.metadata?.namespace ?? '' });
  return {
    async label(pod) {
      // A JSON patch (the client's default patch type): add the label, creating the map if the pod has none.
      const escaped = UNINITIALIZED_LABEL.replace(/~/g, '~0').replace(/\//g, '~1');
      const body = pod.metadata?.labels
        ? [{ op: 'add', path: `/metadata/labels/${escaped}`, value: 'true' }]
        : [{ op: 'add', path: '/metadata/labels', value: { [UNINITIALIZED_LABEL]: 'true' } }];
      await (await core()).patchNamespacedPodStatus({ ...id(pod), body });
    },
    async delete(pod) {
      await (await core()).deleteNamespacedPod({
        ...id(pod),
        body: { preconditions: { uid: pod.metadata?.uid, resourceVersion: pod.metadata?.resourceVersion } },
      });
    },
    async event(pod, reason, message, type) {
      const now = new Date();
      await (await core()).createNamespacedEvent({
        namespace: id(pod).namespace,
        body: {
          metadata: { generateName: `${id(pod).name}.`, namespace: id(pod).namespace },
          involvedObject: { kind: 'Pod', apiVersion: 'v1', name: id(pod).name, namespace: id(pod).namespace, uid: pod.metadata?.uid },
          reason,
          message,
          type,
          source: { component: 'mesh-cni', host: nodeName },
          reportingComponent: 'mesh-cni',
          reportingInstance: nodeName,
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
        },
      });
    },
  };
}

/**
 * Istio's `ambient.istio.io/redirection` on a pod (through pods/status, as Istio's node agent writes it):
 * `enabled` once the pod's rules are in place and ztunnel has it (istiod then sends it HBONE), `pending`
 * while the rules are in place and no ztunnel has it yet, removed when the pod leaves ambient.
 */
export async function annotateRedirection(kubeConfig: KubeConfig | (() => KubeConfig)): Promise<(pod: V1Pod, value: 'enabled' | 'pending' | undefined) => Promise<void>> {
  const k8s = await import('@kubernetes/client-node');
  let client: CoreV1Api | undefined;
  const core = () => (client ??= (typeof kubeConfig === 'function' ? kubeConfig() : kubeConfig).makeApiClient(k8s.CoreV1Api));
  const escaped = AMBIENT_ANNOTATIONS.redirection.replace(/~/g, '~0').replace(/\//g, '~1');
  return async (pod, value) => {
    const current = pod.metadata?.annotations?.[AMBIENT_ANNOTATIONS.redirection];
    if (current === value) return;
    const body =
      value === undefined
        ? [{ op: 'remove', path: `/metadata/annotations/${escaped}` }]
        : pod.metadata?.annotations
          ? [{ op: 'add', path: `/metadata/annotations/${escaped}`, value }]
          : [{ op: 'add', path: '/metadata/annotations', value: { [AMBIENT_ANNOTATIONS.redirection]: value } }];
    await core().patchNamespacedPodStatus({ name: pod.metadata?.name ?? '', namespace: pod.metadata?.namespace ?? '', body });
  };
}
