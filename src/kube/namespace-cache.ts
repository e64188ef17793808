/**
 * Every namespace's labels, from one list+watch (ambient's enablement may name a namespace label, and
 * labelling a namespace must enrol its running pods at once, as Istio's node agent does with its namespace
 * informer). Namespaces are few and small; only name and labels are kept. Restarted with backoff on errors.
 */
import { readKubeconfig } from './kubeconfig';
import { endpointFromKubeconfig, inClusterEndpoint, LeanListWatch } from './lean-watch';

interface Namespace {
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; resourceVersion?: string };
}

export class NamespaceCache {
  private readonly watch: LeanListWatch<Namespace>;
  private hasSynced = false;
  private stopped = false;
  private restartTimer?: NodeJS.Timeout;
  private backoffMs = 500;

  private constructor(
    kubeconfigPath: string | undefined,
    private readonly onChange: (name: string, labels: Record<string, string>) => void,
    private readonly onError: (err: unknown) => void,
  ) {
    this.watch = new LeanListWatch<Namespace>({
      endpoint: kubeconfigPath ? endpointFromKubeconfig(readKubeconfig(kubeconfigPath)) : inClusterEndpoint(),
      path: '/api/v1/namespaces',
      transform: (ns) => ({ metadata: { name: ns.metadata?.name, labels: ns.metadata?.labels ?? {}, resourceVersion: ns.metadata?.resourceVersion } }),
      onEvent: (event, ns) => {
        if (event !== 'delete' && ns.metadata?.name) this.onChange(ns.metadata.name, ns.metadata.labels ?? {});
      },
      onConnect: () => {
        this.hasSynced = true;
        this.backoffMs = 500;
      },
      onError: (err) => this.restart(err),
    });
  }

  static async start(o: { kubeconfigPath?: string; onChange(name: string, labels: Record<string, string>): void; onError(err: unknown): void }): Promise<NamespaceCache> {
    const cache = new NamespaceCache(o.kubeconfigPath, o.onChange, o.onError);
    await cache.watch.start().catch((err: unknown) => cache.restart(err));
    return cache;
  }

  private restart(err: unknown): void {
    this.onError(err);
    if (this.stopped || this.restartTimer) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, 30_000);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (!this.stopped) this.watch.start().catch((e: unknown) => this.restart(e));
    }, delay);
    this.restartTimer.unref();
  }

  synced(): boolean {
    return this.hasSynced;
  }

  labels(name: string): Record<string, string> | undefined {
    return this.watch.get(name, '')?.metadata?.labels;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    this.watch.stop();
  }
}
