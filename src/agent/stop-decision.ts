/**
 * What SIGTERM means for the plugin on this node. A rollout, `kubectl delete pod`, a drain and a node shutdown
 * all stop the agent while a new one is coming (or the node is going away): the entry, shim and engine then
 * stay, and while no agent answers the shim runs the standalone engine, so no meshed pod starts unredirected.
 * Only when no agent will come back -- the agent's DaemonSet is gone or being deleted, or no longer selects this
 * node -- does the agent restore what it changed. Istio's ambient node agent draws the same line
 * (`ShouldStopCleanup` in cni/pkg/nodeagent); this one also checks the nodeSelector and taints.
 *
 * Its namespace being deleted counts as the DaemonSet being deleted.
 *
 * Fail closed: when the API cannot say (unreachable, slow, 5xx), the plugin stays. A 401 or 403 counts as
 * "being uninstalled" only when the same read succeeded when the agent started: the service account or its
 * RBAC was removed since, which is what `kubectl delete -f install/` does before the DaemonSet's pods stop.
 */
import type { V1DaemonSet, V1Namespace, V1Node, V1NodeSelectorRequirement, V1NodeSelectorTerm, V1Pod, V1PodSpec, V1Taint, V1Toleration } from '@kubernetes/client-node';
import { readKubeconfig } from '../kube/kubeconfig';
import { endpointFromKubeconfig, getJson, inClusterEndpoint, type ApiEndpoint } from '../kube/lean-watch';

export interface StopDecision {
  uninstall: boolean;
  reason: string;
}

type Selection = { selects: true } | { selects: false; why: string };

/**
 * Tolerations the DaemonSet controller adds to every daemon pod (k8s.io/kubernetes pkg/controller/daemon/util
 * AddOrUpdateDaemonPodTolerations), so a drained, not-ready or pressured node keeps its daemon pods.
 */
function daemonTolerations(spec: V1PodSpec): V1Toleration[] {
  const added: V1Toleration[] = [
    { key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute' },
    { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute' },
    { key: 'node.kubernetes.io/disk-pressure', operator: 'Exists', effect: 'NoSchedule' },
    { key: 'node.kubernetes.io/memory-pressure', operator: 'Exists', effect: 'NoSchedule' },
    { key: 'node.kubernetes.io/pid-pressure', operator: 'Exists', effect: 'NoSchedule' },
    { key: 'node.kubernetes.io/unschedulable', operator: 'Exists', effect: 'NoSchedule' },
  ];
  if (spec.hostNetwork) added.push({ key: 'node.kubernetes.io/network-unavailable', operator: 'Exists', effect: 'NoSchedule' });
  return [...(spec.tolerations ?? []), ...added];
}

/** The scheduler's rule (v1 helper ToleratesTaint). */
export function tolerates(toleration: V1Toleration, taint: V1Taint): boolean {
  if (toleration.effect && toleration.effect !== taint.effect) return false;
  if (toleration.key && toleration.key !== taint.key) return false;
  if (toleration.operator === 'Exists') return true;
  // Equal is the default operator; an empty key with Equal matches nothing (the API rejects it anyway).
  return Boolean(toleration.key) && (toleration.value ?? '') === (taint.value ?? '');
}

function requirementHolds(r: V1NodeSelectorRequirement, value: string | undefined): boolean {
  const values = r.values ?? [];
  switch (r.operator) {
    case 'In':
      return value !== undefined && values.includes(value);
    case 'NotIn':
      return value === undefined || !values.includes(value);
    case 'Exists':
      return value !== undefined;
    case 'DoesNotExist':
      return value === undefined;
    case 'Gt':
    case 'Lt': {
      if (value === undefined || values.length !== 1 || !/^-?\d+$/.test(value) || !/^-?\d+$/.test(values[0]!)) return false;
      return r.operator === 'Gt' ? BigInt(value) > BigInt(values[0]!) : BigInt(value) < BigInt(values[0]!);
    }
    default:
      return false;
  }
}

/** One nodeSelectorTerm: every expression and field holds; a term with none matches nothing. */
function termMatches(term: V1NodeSelectorTerm, node: V1Node): boolean {
  const labels = node.metadata?.labels ?? {};
  const expressions = term.matchExpressions ?? [];
  const fields = term.matchFields ?? [];
  if (expressions.length === 0 && fields.length === 0) return false;
  return (
    expressions.every((r) => requirementHolds(r, labels[r.key])) &&
    fields.every((r) => r.key === 'metadata.name' && requirementHolds(r, node.metadata?.name))
  );
}

/** Whether the DaemonSet controller would run this pod template on this node. */
export function templateSelectsNode(spec: V1PodSpec, node: V1Node): Selection {
  const labels = node.metadata?.labels ?? {};
  for (const [key, value] of Object.entries(spec.nodeSelector ?? {})) {
    if (labels[key] !== value) return { selects: false, why: `its nodeSelector ${key}=${value} does not match the node (${key}=${labels[key] ?? '<unset>'})` };
  }
  const required = spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution;
  if (required && !required.nodeSelectorTerms.some((term) => termMatches(term, node))) {
    return { selects: false, why: 'no term of its required node affinity matches the node' };
  }
  const tolerations = daemonTolerations(spec);
  for (const taint of node.spec?.taints ?? []) {
    if (taint.effect !== 'NoSchedule' && taint.effect !== 'NoExecute') continue;
    if (!tolerations.some((tol) => tolerates(tol, taint))) {
      return { selects: false, why: `it does not tolerate the node's taint ${taint.key}${taint.value ? `=${taint.value}` : ''}:${taint.effect}` };
    }
  }
  return { selects: true };
}

/** The HTTP status of a failed read: ApiStatusError's `status` (its `code` is the stable string API_STATUS). */
function statusOf(err: unknown): number | undefined {
  const e = err as { status?: unknown; code?: unknown; statusCode?: unknown };
  return [e.status, e.code, e.statusCode].find((v): v is number => typeof v === 'number');
}

async function bounded<T>(ms: number, call: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([call(), new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function describe(err: unknown): string {
  const status = statusOf(err);
  return status ? `the API server answered ${status}` : String((err as Error).message ?? err).split('\n')[0]!;
}

export interface StopDeciderOptions {
  /** the agent's kubeconfig; absent: the in-cluster service account */
  kubeconfigPath?: string;
  /** the agent's own pod, from the downward API (POD_NAMESPACE, POD_NAME) */
  podNamespace: string;
  podName: string;
  nodeName: string;
  /** bound on each API call; SIGTERM leaves the pod's grace period (30 s) for all of it */
  callTimeoutMs?: number;
}

/**
 * Learns at start, while the API surely answers, which DaemonSet runs this agent and whether its reads are
 * allowed; decides at SIGTERM.
 */
export class StopDecider {
  private owner?: { name: string; namespace: string };
  private notOwned?: string;
  private readableAtStart = false;

  private constructor(
    private readonly options: StopDeciderOptions,
    private readonly endpoint: ApiEndpoint,
  ) {}

  /**
   * Every call here is a read, so it goes over node's https as the watch does (src/kube/lean-watch.ts), not
   * through @kubernetes/client-node: loading that library would cost the idle agent ~50 MiB for four GETs.
   */
  static async create(options: StopDeciderOptions): Promise<StopDecider> {
    const endpoint = options.kubeconfigPath ? endpointFromKubeconfig(readKubeconfig(options.kubeconfigPath)) : inClusterEndpoint();
    const decider = new StopDecider(options, endpoint);
    await decider.learnOwner().catch(() => undefined);
    if (decider.owner) {
      await decider
        .readDaemonSet()
        .then(() => (decider.readableAtStart = true))
        .catch(() => undefined);
    }
    return decider;
  }

  /** What start learned, for the agent's log. */
  describeOwner(): string {
    if (this.owner) return `DaemonSet ${this.owner.namespace}/${this.owner.name}${this.readableAtStart ? '' : ' (not readable at start)'}`;
    return this.notOwned ?? 'unknown (the API did not answer at start)';
  }

  private get timeout(): number {
    return this.options.callTimeoutMs ?? 5_000;
  }

  private get<T>(path: string): Promise<T> {
    return bounded(this.timeout, () => getJson<T>(this.endpoint, path, this.timeout));
  }

  private async learnOwner(): Promise<void> {
    const { podNamespace: namespace, podName: name } = this.options;
    const pod = await this.get<V1Pod>(`/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`);
    const ref = (pod.metadata?.ownerReferences ?? []).find((r) => r.kind === 'DaemonSet' && r.controller !== false);
    if (ref) this.owner = { name: ref.name, namespace };
    else this.notOwned = `pod ${namespace}/${name} is not run by a DaemonSet`;
  }

  private readDaemonSet() {
    const owner = this.owner!;
    return this.get<V1DaemonSet>(`/apis/apps/v1/namespaces/${encodeURIComponent(owner.namespace)}/daemonsets/${encodeURIComponent(owner.name)}`);
  }

  async decide(): Promise<StopDecision> {
    const keep = (reason: string): StopDecision => ({ uninstall: false, reason });
    const remove = (reason: string): StopDecision => ({ uninstall: true, reason });
    if (!this.owner && !this.notOwned) {
      try {
        await this.learnOwner();
      } catch (err) {
        return keep(`cannot tell which DaemonSet runs this agent (${describe(err)}): the plugin stays (fail closed)`);
      }
    }
    if (!this.owner) return keep(`${this.notOwned}: the plugin stays; \`mesh-cni uninstall\` removes it`);
    const ds = `DaemonSet ${this.owner.namespace}/${this.owner.name}`;
    let daemonSet;
    try {
      daemonSet = await this.readDaemonSet();
    } catch (err) {
      const status = statusOf(err);
      if (status === 404) return remove(`${ds} is gone`);
      if ((status === 401 || status === 403) && this.readableAtStart) {
        return remove(`${ds} was readable at start and now ${describe(err)}: the service account or its RBAC was removed, mesh-cni is being uninstalled`);
      }
      return keep(`cannot read ${ds} (${describe(err)}): the plugin stays (fail closed)`);
    }
    if (daemonSet.metadata?.deletionTimestamp) return remove(`${ds} is being deleted`);
    // `kubectl delete namespace`: the namespace controller deletes pods before DaemonSets (core before apps),
    // so the DaemonSet may still look intact while its namespace is going. Unreadable: decided by the rest.
    const namespace = await this.get<V1Namespace>(`/api/v1/namespaces/${encodeURIComponent(this.owner.namespace)}`).catch((err: unknown) => (statusOf(err) === 404 ? 'gone' : undefined));
    if (namespace === 'gone' || (namespace && namespace.metadata?.deletionTimestamp)) return remove(`namespace ${this.owner.namespace} of ${ds} is being deleted`);
    let node: V1Node;
    try {
      node = await this.get<V1Node>(`/api/v1/nodes/${encodeURIComponent(this.options.nodeName)}`);
    } catch (err) {
      if (statusOf(err) === 404) return remove(`node ${this.options.nodeName} is gone from the API`);
      return keep(`${ds} exists, but node ${this.options.nodeName} cannot be read (${describe(err)}): the plugin stays (fail closed)`);
    }
    const spec = daemonSet.spec?.template?.spec;
    const selection = spec ? templateSelectsNode(spec, node) : ({ selects: true } as const);
    if (!selection.selects) return remove(`${ds} no longer runs on node ${this.options.nodeName}: ${selection.why}`);
    return keep(`${ds} still runs on node ${this.options.nodeName}: a new agent is coming (restart, rollout or node shutdown), the plugin stays`);
  }
}
