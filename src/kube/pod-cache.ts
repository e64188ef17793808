/**
 * The agent's node-scoped pod cache: one list+watch of the pods on this node (`spec.nodeName` field
 * selector) through @kubernetes/client-node's ListWatch, restarted with backoff on errors (a 410 relists
 * inside ListWatch). The plugin path asks it first, so a pod the cache knows costs no API request.
 *
 * @kubernetes/client-node is heavy to load (~0.5 s, ~70 MB): it is imported here only, and only by the
 * agent, never on the standalone ADD path.
 */
import type { KubeConfig, ListWatch, V1Pod } from '@kubernetes/client-node';
import { podInfoFromPod } from '../cni/pod-api';
import type { PodInfo } from '../cni/decision';
import type { PodCache } from '../cni/pod-source';

export type PodEvent = 'add' | 'update' | 'delete';

type Container = NonNullable<NonNullable<V1Pod['spec']>['containers']>[number];
type ContainerStatus = NonNullable<NonNullable<V1Pod['status']>['initContainerStatuses']>[number];

/** A container as the decision reads it (src/cni/pod-api.ts podInfoFromPod): name, args, literal env, uid/gid. */
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
      containers: (pod.spec.containers ?? []).map(trimContainer),
      ...(pod.spec.initContainers ? { initContainers: pod.spec.initContainers.map(trimContainer) } : {}),
    };
  }
  if (pod.status) {
    out.status = {
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
  private watch?: ListWatch<V1Pod>;
  private stopped = false;
  private restartTimer?: NodeJS.Timeout;
  private backoffMs: number;
  private hasSynced = false;
  /** connected and not failed since: every pod bound to this node reaches the cache within moments */
  private connected = false;
  /** Lists and watch connections made, for tests and the status command. */
  readonly stats = { lists: 0, restarts: 0, errors: 0 };

  private constructor(
    readonly kubeConfig: KubeConfig,
    private readonly options: NodePodCacheOptions,
  ) {
    this.backoffMs = options.minBackoffMs ?? 500;
  }

  static async start(options: NodePodCacheOptions): Promise<NodePodCache> {
    const cache = new NodePodCache(await loadKubeConfig(options.kubeconfigPath), options);
    await cache.begin();
    return cache;
  }

  private async begin(): Promise<void> {
    const k8s = await import('@kubernetes/client-node');
    const api = this.kubeConfig.makeApiClient(k8s.CoreV1Api);
    const fieldSelector = `spec.nodeName=${this.options.nodeName}`;
    // Both the list and every watch event are trimmed before ListWatch stores them (trimPod).
    const listFn = async () => {
      this.stats.lists++;
      const list = await api.listPodForAllNamespaces({ fieldSelector });
      list.items = list.items.map(trimPod);
      return list;
    };
    const watcher = new k8s.Watch(this.kubeConfig);
    const watchFn = watcher.watch.bind(watcher);
    // Bookmarks keep the resume point fresh, so a watch the server times out resumes instead of relisting.
    watcher.watch = (path, query, callback, done) => watchFn(path, { ...query, allowWatchBookmarks: true }, (phase, obj, raw) => callback(phase, phase === 'ERROR' || phase === 'BOOKMARK' ? obj : trimPod(obj as V1Pod), raw), done);
    const watch = new k8s.ListWatch<V1Pod>('/api/v1/pods', watcher, listFn, false, undefined, fieldSelector);
    for (const event of ['add', 'update', 'delete'] as const) watch.on(event, (pod: V1Pod) => this.options.onEvent?.(event, pod));
    watch.on('connect', () => {
      this.hasSynced = true;
      this.connected = true;
      this.backoffMs = this.options.minBackoffMs ?? 500;
    });
    watch.on('error', (err: unknown) => this.restartAfterError(err));
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

  async lookup(namespace: string, name: string, uid?: string): Promise<PodInfo | undefined> {
    const pod = this.get(namespace, name);
    if (!pod || (uid && pod.metadata?.uid && pod.metadata.uid !== uid)) return undefined;
    return podInfoFromPod(pod);
  }

  private readonly namespaces = new Map<string, { at: number; labels: Record<string, string> | undefined }>();

  /**
   * A namespace's labels (ambient can be enabled on the namespace), read on demand and kept a minute: only
   * pods that are skipped anyway ask, to name the right reason. Undefined when the API refuses (the agent's
   * ClusterRole may not grant namespaces) or is away.
   */
  async namespaceLabels(namespace: string): Promise<Record<string, string> | undefined> {
    const now = Date.now();
    const known = this.namespaces.get(namespace);
    if (known && now - known.at < 60_000) return known.labels;
    const k8s = await import('@kubernetes/client-node');
    let labels: Record<string, string> | undefined;
    try {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('no answer within 2 s')), 2000);
      });
      try {
        const ns = await Promise.race([this.kubeConfig.makeApiClient(k8s.CoreV1Api).readNamespace({ name: namespace }), late]);
        labels = ns.metadata?.labels ?? {};
      } finally {
        clearTimeout(timer);
      }
    } catch {
      labels = undefined;
    }
    this.namespaces.set(namespace, { at: now, labels });
    return labels;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    await this.watch?.stop();
  }
}
