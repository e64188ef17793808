/**
 * The agent's node-scoped pod cache: one list+watch of the pods on this node (`spec.nodeName` field
 * selector) over node's https (./lean-watch.ts), pods trimmed to the fields we read, restarted with backoff
 * on errors (a 410 relists). The plugin path asks it first, so a pod the cache knows costs no API request.
 *
 * @kubernetes/client-node is heavy to load (~0.5 s, ~50 MiB of RSS): the watch does not use it; it is
 * loaded only when something writes to the API (`kubeConfig`, first used by repair actions, the node taint
 * or the SIGTERM decision), and never on the standalone ADD path.
 */
import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import { readKubeconfig } from './kubeconfig';
import { endpointFromKubeconfig, getJson, inClusterEndpoint, LeanListWatch, type ApiEndpoint } from './lean-watch';
import { podInfoFromPod } from './pod-api';
import type { PodInfo } from '../mesh/decision';
import type { PodCache } from './pod-lookup';

export type PodEvent = 'add' | 'update' | 'delete';

type Container = NonNullable<NonNullable<V1Pod['spec']>['containers']>[number];
type ContainerStatus = NonNullable<NonNullable<V1Pod['status']>['initContainerStatuses']>[number];

/** A container as the decision reads it (src/kube/pod-api.ts podInfoFromPod): name, args, literal env, uid/gid. */
function trimContainer(c: Container): Container {
  const out: Container = { name: c.name };
  if (c.args) out.args = c.args;
  if (c.env) out.env = c.env.map((e) => ({ name: e.name, value: e.value }));
  if (c.securityContext) out.securityContext = { runAsUser: c.securityContext.runAsUser, runAsGroup: c.securityContext.runAsGroup };
  return out;
}

function trimStatus(c: ContainerStatus): ContainerStatus {
  const terminated = (t: { exitCode: number } | undefined) => (t ? { terminated: { exitCode: t.exitCode } } : undefined);
  return { name: c.name, state: terminated(c.state?.terminated), lastState: terminated(c.lastState?.terminated) } as ContainerStatus;
}

/**
 * The fields of a pod the agent reads, and nothing else: the decision's (name, namespace, uid, labels,
 * annotations, the containers' names, args, env and securityContext uid/gid), the reconciler's
 * (deletionTimestamp, resourceVersion for the delete precondition, hostNetwork, the pod IPs, the
 * istio-validation exit code) and the watch's (resourceVersion). A pod as the API server sends it is 5–20 KiB
 * of JSON (managedFields, volumes, probes, conditions); the cache keeps about a tenth of it.
 */
export function trimPod(pod: V1Pod): V1Pod {
  const m = pod.metadata ?? {};
  const out: V1Pod = {
    metadata: {
      name: m.name,
      namespace: m.namespace,
      uid: m.uid,
      resourceVersion: m.resourceVersion,
      labels: m.labels,
      annotations: m.annotations,
      ...(m.deletionTimestamp ? { deletionTimestamp: m.deletionTimestamp } : {}),
    },
  };
  if (pod.spec) {
    out.spec = {
      nodeName: pod.spec.nodeName,
      hostNetwork: pod.spec.hostNetwork,
      // ambient: ztunnel is told the pod's service account (ZDS WorkloadInfo)
      ...(pod.spec.serviceAccountName ? { serviceAccountName: pod.spec.serviceAccountName } : {}),
      containers: (pod.spec.containers ?? []).map(trimContainer),
      ...(pod.spec.initContainers ? { initContainers: pod.spec.initContainers.map(trimContainer) } : {}),
    };
  }
  if (pod.status) {
    out.status = {
      // ambient: a pod that ended (Succeeded, Failed) leaves ztunnel, as in Istio's informer
      ...(pod.status.phase ? { phase: pod.status.phase } : {}),
      podIP: pod.status.podIP,
      podIPs: pod.status.podIPs?.map((p) => ({ ip: p.ip })),
      ...(pod.status.initContainerStatuses ? { initContainerStatuses: pod.status.initContainerStatuses.map(trimStatus) } : {}),
    };
  }
  return out;
}

export interface NodePodCacheOptions {
  nodeName: string;
  /** A kubeconfig file; in-cluster service account when absent. */
  kubeconfigPath?: string;
  onEvent?: (event: PodEvent, pod: V1Pod) => void;
  onError?: (err: unknown) => void;
  /** A pod from the API that could not be read (left out of the cache; the watch goes on). */
  onBadPod?: (err: unknown, pod: unknown) => void;
  /** Backoff bounds for restarting the watch after an error. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

export async function loadKubeConfig(kubeconfigPath?: string): Promise<KubeConfig> {
  const k8s = await import('@kubernetes/client-node');
  const kc = new k8s.KubeConfig();
  if (kubeconfigPath) kc.loadFromFile(kubeconfigPath);
  else kc.loadFromCluster();
  return kc;
}

export class NodePodCache implements PodCache {
  private watch?: LeanListWatch<V1Pod>;
  private stopped = false;
  private restartTimer?: NodeJS.Timeout;
  private backoffMs: number;
  private hasSynced = false;
  /** connected and not failed since: every pod bound to this node reaches the cache within moments */
  private connected = false;
  private loadedKubeConfig?: KubeConfig;
  /** Lists and watch connections made, for tests and the status command. */
  readonly stats = { lists: 0, restarts: 0, errors: 0, badPods: 0 };

  private constructor(
    private readonly endpoint: ApiEndpoint,
    private readonly options: NodePodCacheOptions,
  ) {
    this.backoffMs = options.minBackoffMs ?? 500;
  }

  static async start(options: NodePodCacheOptions): Promise<NodePodCache> {
    const endpoint = options.kubeconfigPath ? endpointFromKubeconfig(readKubeconfig(options.kubeconfigPath)) : inClusterEndpoint();
    const cache = new NodePodCache(endpoint, options);
    await cache.begin();
    return cache;
  }

  /**
   * The @kubernetes/client-node configuration, for the parts that write to the API (repair actions, the
   * node taint, the SIGTERM decision): loaded on first use, so an agent that only watches never loads it.
   */
  get kubeConfig(): KubeConfig {
    if (!this.loadedKubeConfig) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const k8s = require('@kubernetes/client-node') as typeof import('@kubernetes/client-node');
      const kc = new k8s.KubeConfig();
      if (this.options.kubeconfigPath) kc.loadFromFile(this.options.kubeconfigPath);
      else kc.loadFromCluster();
      this.loadedKubeConfig = kc;
    }
    return this.loadedKubeConfig;
  }

  private async begin(): Promise<void> {
    const watch = new LeanListWatch<V1Pod>({
      endpoint: this.endpoint,
      path: '/api/v1/pods',
      fieldSelector: `spec.nodeName=${this.options.nodeName}`,
      transform: trimPod,
      onEvent: (event, pod) => this.options.onEvent?.(event, pod),
      onList: () => void this.stats.lists++,
      onConnect: () => {
        this.hasSynced = true;
        this.connected = true;
        this.backoffMs = this.options.minBackoffMs ?? 500;
      },
      onError: (err) => this.restartAfterError(err),
      onBadObject: (err, pod) => {
        this.stats.badPods++;
        this.options.onBadPod?.(err, pod);
      },
    });
    this.watch = watch;
    try {
      await watch.start();
    } catch (err) {
      this.restartAfterError(err);
    }
  }

  private restartAfterError(err: unknown): void {
    this.connected = false;
    this.stats.errors++;
    this.options.onError?.(err);
    if (this.stopped || this.restartTimer) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.options.maxBackoffMs ?? 30_000);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stopped || !this.watch) return;
      this.stats.restarts++;
      this.watch.start().catch((e: unknown) => this.restartAfterError(e));
    }, delay);
    this.restartTimer.unref();
  }

  /** True once the first list has completed (the cache then answers for every pod on the node). */
  synced(): boolean {
    return this.hasSynced;
  }

  /** Synced and the watch connected since its last error: a pod missing now is only a moment behind. */
  watching(): boolean {
    return this.hasSynced && this.connected && !this.stopped;
  }

  pods(): readonly V1Pod[] {
    return this.watch?.list() ?? [];
  }

  get(namespace: string, name: string): V1Pod | undefined {
    return this.watch?.get(name, namespace);
  }

  /** At once, from memory (an ADD's decision then needs no await). */
  lookup(namespace: string, name: string, uid?: string): PodInfo | undefined {
    const pod = this.get(namespace, name);
    if (!pod || (uid && pod.metadata?.uid && pod.metadata.uid !== uid)) return undefined;
    return podInfoFromPod(pod);
  }

  private readonly namespaces = new Map<string, { at: number; labels: Record<string, string> | undefined }>();
  private watchedNamespaces?: { synced(): boolean; labels(name: string): Record<string, string> | undefined };

  /** Namespace labels from a watch (ambient: enablement follows a namespace's label at once) instead of a GET kept a minute. */
  useNamespaces(source: { synced(): boolean; labels(name: string): Record<string, string> | undefined }): void {
    this.watchedNamespaces = source;
  }

  /**
   * A namespace's labels (ambient can be enabled on the namespace), read on demand and kept a minute: only
   * pods that are skipped anyway ask, to name the right reason. Undefined when the API refuses (the agent's
   * ClusterRole may not grant namespaces) or is away.
   */
  async namespaceLabels(namespace: string): Promise<Record<string, string> | undefined> {
    const watched = this.watchedNamespaces;
    if (watched?.synced()) {
      const labels = watched.labels(namespace);
      if (labels) return labels;
    }
    const now = Date.now();
    const known = this.namespaces.get(namespace);
    if (known && now - known.at < 60_000) return known.labels;
    let labels: Record<string, string> | undefined;
    try {
      const ns = await getJson<{ metadata?: { labels?: Record<string, string> } }>(this.endpoint, `/api/v1/namespaces/${encodeURIComponent(namespace)}`, 2000);
      labels = ns.metadata?.labels ?? {};
    } catch {
      labels = undefined;
    }
    this.namespaces.set(namespace, { at: now, labels });
    return labels;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.watch?.stop();
  }
}
