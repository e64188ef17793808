/**
 * The reconciler's writes to the API: label through pods/status (Istio's repair controller does the same,
 * so only that subresource needs RBAC), delete with preconditions, and Events on the pod.
 */
import type { CoreV1Api, CoreV1Event, KubeConfig, V1Pod } from '@kubernetes/client-node';
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
      const { name, namespace } = id(pod);
      await (await core()).createNamespacedEvent({
        namespace,
        body: eventBody({ kind: 'Pod', apiVersion: 'v1', name, namespace, uid: pod.metadata?.uid }, namespace, nodeName, reason, message, type),
      });
    },
  };
}

/**
 * An Event about this node (what the node itself is doing wrong, not one pod): in the `default` namespace, as
 * kubelet records its node events, so `kubectl describe node` and `kubectl get events` show it.
 */
export async function recordNodeEvent(kubeConfig: KubeConfig, nodeName: string, reason: string, message: string, type: 'Normal' | 'Warning'): Promise<void> {
  const k8s = await import('@kubernetes/client-node');
  await kubeConfig.makeApiClient(k8s.CoreV1Api).createNamespacedEvent({
    namespace: 'default',
    // kubelet names its node as the uid of its node events; kubectl describe node matches on the name.
    body: eventBody({ kind: 'Node', apiVersion: 'v1', name: nodeName, uid: nodeName }, 'default', nodeName, reason, message, type),
  });
}

/** One Event of ours, about `involvedObject`, reported from this node. */
function eventBody(involvedObject: CoreV1Event['involvedObject'], namespace: string, nodeName: string, reason: string, message: string, type: 'Normal' | 'Warning'): CoreV1Event {
  const now = new Date();
  return {
    metadata: { generateName: `${involvedObject.name}.`, namespace },
    involvedObject,
    reason,
    // The API refuses a message over 1 KiB.
    message: message.slice(0, 1024),
    type,
    source: { component: 'mesh-cni', host: nodeName },
    reportingComponent: 'mesh-cni',
    reportingInstance: nodeName,
    firstTimestamp: now,
    lastTimestamp: now,
    count: 1,
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
