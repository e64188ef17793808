/** Real dependencies for the reconciler, shared by the agent (continuous) and `mesh-cni repair` (one pass). */
import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import type { AttachmentStore } from '../cni/attachments';
import { podActions } from '../kube/actions';
import type { BackendName } from '../redirect/engine';
import { firstOf, fromAttachments, fromProcCgroups } from './locate';
import type { RepairDeps } from './reconciler';

export interface RepairWiring {
  kubeConfig: KubeConfig;
  nodeName: string;
  pods: () => readonly V1Pod[];
  attachments: AttachmentStore;
  /** Where the host's /proc is (the DaemonSet mounts it at /host/proc). */
  procRoot?: string;
  backend?: BackendName;
  onAction?: RepairDeps['onAction'];
}

/** The netns side of the reconciler: find a pod's netns, check it, repair it (the benchmark uses it alone). */
export async function netnsDeps(w: Pick<RepairWiring, 'attachments' | 'procRoot' | 'backend'>): Promise<Pick<RepairDeps, 'locateNetns' | 'check' | 'apply'>> {
  const engine = await import('../redirect/engine');
  return {
    locateNetns: firstOf(fromAttachments(w.attachments), fromProcCgroups(w.procRoot)),
    check: (netns, config) => engine.checkRedirect({ netns, config, backend: w.backend }),
    apply: async (netns, config) => {
      await engine.applyRedirect({ netns, config, backend: w.backend });
    },
  };
}

export async function repairDeps(w: RepairWiring): Promise<RepairDeps> {
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
