/**
 * This node's pods judged by the reconciler itself (`inspect`, which never acts), for `status` and `pods`;
 * and the counts `status` shows.
 */
import type { V1Pod } from '@kubernetes/client-node';
import { AttachmentStore } from '../state/attachments';
import { listNodePods } from '../kube/node-pods';
import type { BackendName } from '../redirect/engine';
import { Reconciler, type Finding } from '../repair/reconciler';
import { namespaceLabels, type Kube } from './kube-client';

export interface InspectSettings {
  nodeName: string;
  namespace?: string;
  stateDir: string;
  procRoot: string;
  criSocket: string;
  backend: BackendName;
  excludeNamespaces: readonly string[];
  /** only the pods this selects (e.g. those behind a service) */
  select?: (pod: V1Pod) => boolean;
}

/**
 * Every pod of this node looked at by the reconciler itself (`inspect`, which never acts), with the real
 * netns locator and rule check the agent uses, so the CLI and the agent judge a pod the same way.
 */
export async function inspectNodePods(kube: Kube, s: InspectSettings): Promise<Array<{ pod: V1Pod; finding: Finding }>> {
  const listed = await listNodePods(kube.core, s.nodeName, { namespace: s.namespace });
  const pods = s.select ? listed.filter(s.select) : listed;
  const { repairDeps } = await import('../repair/wiring');
  const deps = await repairDeps({ kubeConfig: kube.kubeConfig, nodeName: s.nodeName, pods: () => pods, attachments: new AttachmentStore(s.stateDir), procRoot: s.procRoot, criSocket: s.criSocket, backend: s.backend });
  const namespaces = new Map<string, Promise<Record<string, string> | undefined>>();
  deps.namespaceLabels = (namespace) => {
    if (!namespaces.has(namespace)) namespaces.set(namespace, namespaceLabels(kube, namespace));
    return namespaces.get(namespace)!;
  };
  try {
    const reconciler = new Reconciler({ mode: 'off', excludeNamespaces: s.excludeNamespaces, backend: s.backend, dryRun: true }, deps);
    const out: Array<{ pod: V1Pod; finding: Finding }> = [];
    for (const pod of pods) out.push({ pod, finding: await reconciler.inspect(pod) });
    return out;
  } finally {
    deps.close();
  }
}

export interface PodCounts {
  total: number;
  /** pods the plugin redirects (healthy + broken + unknown) */
  meshed: number;
  healthy: number;
  broken: number;
  /** meshed pods whose rules could not be judged (no IP yet, netns not found) */
  unknown: number;
  /** pods the plugin leaves alone (not meshed, host network, terminating) */
  skipped: number;
  /** pods the plugin would mesh whose annotations are invalid: every ADD for them fails */
  invalid: number;
}

export function countFindings(findings: readonly Finding[]): PodCounts {
  const n = (v: Finding['verdict']) => findings.filter((f) => f.verdict === v).length;
  const healthy = n('healthy');
  const broken = n('broken');
  const unknown = n('unknown');
  return { total: findings.length, meshed: healthy + broken + unknown, healthy, broken, unknown, skipped: n('not-meshed') + n('skipped'), invalid: n('invalid') };
}
