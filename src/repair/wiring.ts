/** Real dependencies for the reconciler, shared by the agent (continuous) and `mesh-cni repair` (one pass). */
import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import type { AttachmentStore } from '../cni/attachments';
import { podActions } from '../kube/actions';
import type { BackendName } from '../redirect/engine';
import { nodeNetnsChain, type NetnsChainOptions } from './netns-chain';
import type { RepairDeps } from './reconciler';

export interface RepairWiring extends NetnsChainOptions {
  kubeConfig: KubeConfig;
  nodeName: string;
  pods: () => readonly V1Pod[];
  attachments: AttachmentStore;
  backend?: BackendName;
  onAction?: RepairDeps['onAction'];
}

/**
 * The netns side of the reconciler: where a pod's netns is (the node's one locator chain, ./netns-chain.ts),
 * how to check it and repair it. The benchmark uses it alone.
 */
export async function netnsDeps(
  w: Pick<RepairWiring, 'attachments' | 'procRoot' | 'backend' | 'criSocket' | 'onLocatorError'>,
): Promise<Pick<RepairDeps, 'locateNetns' | 'check' | 'apply'> & { close(): void }> {
  const engine = await import('../redirect/engine');
  const chain = nodeNetnsChain(w);
  return {
    close: () => chain.close(),
    locateNetns: async (pod) => (await chain.locate(pod))?.netns,
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
