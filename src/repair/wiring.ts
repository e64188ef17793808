/** Real dependencies for the reconciler, shared by the agent (continuous) and `mesh-cni repair` (one pass). */
import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import type { AttachmentStore } from '../cni/attachments';
import { podActions } from '../kube/actions';
import type { BackendName } from '../redirect/engine';
import { fromCri } from './cri';
import { firstOf, fromAttachments, fromProcCgroups } from './locate';
import type { RepairDeps } from './reconciler';

export interface RepairWiring {
  kubeConfig: KubeConfig;
  nodeName: string;
  pods: () => readonly V1Pod[];
  attachments: AttachmentStore;
  /** Where the host's /proc is (the DaemonSet mounts it at /host/proc). */
  procRoot?: string;
  /** the runtime's CRI socket; empty: do not ask the runtime */
  criSocket?: string;
  /** a locator failed in a way an operator should hear about (e.g. the CRI socket cannot be reached) */
  onLocatorError?: (err: Error) => void;
  backend?: BackendName;
  onAction?: RepairDeps['onAction'];
}

/**
 * The netns side of the reconciler: where a pod's netns is, cheapest and surest first (what our ADD recorded;
 * the runtime over CRI, for pods whose ADD we never saw; a /proc scan by pod cgroup), how to check it and
 * repair it. The benchmark uses it alone.
 */
export async function netnsDeps(
  w: Pick<RepairWiring, 'attachments' | 'procRoot' | 'backend' | 'criSocket' | 'onLocatorError'>,
): Promise<Pick<RepairDeps, 'locateNetns' | 'check' | 'apply'> & { close(): void }> {
  const engine = await import('../redirect/engine');
  const cri = w.criSocket ? fromCri(w.criSocket, w.onLocatorError) : undefined;
  return {
    close: () => cri?.close(),
    locateNetns: firstOf(fromAttachments(w.attachments), ...(cri ? [cri] : []), fromProcCgroups(w.procRoot)),
    check: (netns, config) => engine.checkRedirect({ netns, config, backend: w.backend }),
    apply: async (netns, config) => {
      await engine.applyRedirect({ netns, config, backend: w.backend });
    },
  };
}

export async function repairDeps(w: RepairWiring): Promise<RepairDeps & { close(): void }> {
  const actions = await podActions(w.kubeConfig, w.nodeName);
  return {
    pods: w.pods,
    ...(await netnsDeps(w)),
    label: actions.label,
    delete: actions.delete,
    event: actions.event,
    onAction: w.onAction,
  };
}

/** This node's pods, listed once (for `mesh-cni repair` outside the agent). */
export async function listNodePods(kubeConfig: KubeConfig, nodeName: string): Promise<V1Pod[]> {
  const k8s = await import('@kubernetes/client-node');
  const api = kubeConfig.makeApiClient(k8s.CoreV1Api);
  const list = await api.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${nodeName}` });
  return list.items;
}
