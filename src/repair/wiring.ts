/** Real dependencies for the reconciler, shared by the agent (continuous) and `mesh-cni repair` (one pass). */
import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import type { AttachmentStore } from '../state/attachments';
import { podActions } from '../kube/actions';
import type { BackendName } from '../redirect/engine';
import { nodeNetnsChain, type NetnsChainOptions } from './netns-chain';
import type { RepairDeps } from './reconciler';
import type { CheckStats } from './check';

export interface RepairWiring extends NetnsChainOptions {
  /** a function: loaded only when the first action needs it */
  kubeConfig: KubeConfig | (() => KubeConfig);
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
): Promise<Pick<RepairDeps, 'locateNetns' | 'check' | 'apply'> & { close(): void; checkStats: CheckStats }> {
  const engine = await import('../redirect/engine');
  const { repairChecker } = await import('./check');
  const chain = nodeNetnsChain(w);
  // One checker per reconciler: it remembers expected rules per config and which netns were healthy.
  const checker = repairChecker({ backend: w.backend });
  return {
    close: () => chain.close(),
    locateNetns: async (pod) => (await chain.locate(pod))?.netns,
    check: (netns, config) => checker.check(netns, config),
    checkStats: checker.stats,
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
