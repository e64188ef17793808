/**
 * A list+watch of one resource path over node's own https, without @kubernetes/client-node: loading that
 * library costs the agent ~50 MiB of RSS (its config module pulls in every generated API and model), and an
 * idle agent needs none of it. Semantics follow client-go's reflector as @kubernetes/client-node's ListWatch
 * implements them: list, then watch from the list's resourceVersion with bookmarks; a watch the server
 * ends (timeoutSeconds) resumes from the last resourceVersion seen; `410 Gone` (as an ERROR event or a
 * status) relists; any other failure is reported to `onError`, and the owner restarts with backoff.
 */
import * as fs from 'node:fs';
import { apiGet, type ApiTarget } from './https';
import type { ClientRequest } from 'node:http';
import { createInterface } from 'node:readline';
import type { KubeEndpoint } from './kubeconfig';
import { ApiStatusError } from '../errors';

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Where the API server is and how to authenticate; the token is re-read on every request (it rotates). */
export interface ApiEndpoint extends ApiTarget {
  token(): string | undefined;
}

export function endpointFromKubeconfig(e: KubeEndpoint): ApiEndpoint {
  return { ...e, token: () => e.token };
}

/** The in-cluster service account, as kubelet mounts it. */
export function inClusterEndpoint(): ApiEndpoint {
  const host = process.env.KUBERNETES_SERVICE_HOST;
  const port = process.env.KUBERNETES_SERVICE_PORT ?? '443';
  if (!host) throw new Error('not running in a cluster: KUBERNETES_SERVICE_HOST is not set (pass --kubeconfig)');
  return {
    server: new URL(`https://${host.includes(':') ? `[${host}]` : host}:${port}`),
    ca: fs.readFileSync(`${SA_DIR}/ca.crt`),
    insecureSkipTlsVerify: false,
    token: () => fs.readFileSync(`${SA_DIR}/token`, 'utf8').trim(),
  };
}

interface KubeObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string };
}

function request(endpoint: ApiEndpoint, pathAndQuery: string, timeoutMs: number | undefined): ClientRequest {
  return apiGet(endpoint, pathAndQuery, { token: endpoint.token(), timeoutMs, userAgent: 'mesh-cni-agent' });
}

/** One GET answered with JSON. */
export function getJson<T>(endpoint: ApiEndpoint, pathAndQuery: string, timeoutMs = 30_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = request(endpoint, pathAndQuery, timeoutMs);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new ApiStatusError(res.statusCode ?? 0, `GET ${pathAndQuery.split('?')[0]}`));
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as T);
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

export interface LeanListWatchOptions<T> {
  endpoint: ApiEndpoint;
  /** e.g. /api/v1/pods */
  path: string;
  fieldSelector?: string;
  /** Applied to every object before it is stored (the cache keeps only what it needs). */
  transform?: (obj: T) => T;
  onEvent?: (event: 'add' | 'update' | 'delete', obj: T) => void;
  /** The list is in and the watch is about to start (again). */
  onConnect?: () => void;
  onList?: () => void;
  /** A failure the owner should restart after; the watch is stopped. */
  onError: (err: unknown) => void;
  /**
   * An object from the list or the watch that could not be taken in (`transform` or `onEvent` threw on it):
   * it is left out of the cache, and the rest of the list and the watch go on.
   */
  onBadObject?: (err: unknown, obj: unknown) => void;
}

const key = (o: KubeObject) => `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;

export class LeanListWatch<T extends KubeObject> {
  private readonly objects = new Map<string, T>();
  private resourceVersion = '';
  private current?: ClientRequest;
  private stopped = false;
  private generation = 0;

  constructor(private readonly o: LeanListWatchOptions<T>) {}

  list(): T[] {
    return [...this.objects.values()];
  }

  get(name: string, namespace: string): T | undefined {
    return this.objects.get(`${namespace}/${name}`);
  }

  /** Lists (when there is no resourceVersion to resume from) and starts watching; rejects when the list fails. */
  async start(): Promise<void> {
    this.stopped = false;
    const generation = ++this.generation;
    if (!this.resourceVersion) await this.relist();
    if (this.stopped || generation !== this.generation) return;
    this.o.onConnect?.();
    this.watch(generation);
  }

  stop(): void {
    this.stopped = true;
    this.generation++;
    this.current?.destroy();
    this.current = undefined;
  }

  private query(extra: Record<string, string>): string {
    const q = new URLSearchParams(extra);
    if (this.o.fieldSelector) q.set('fieldSelector', this.o.fieldSelector);
    return `${this.o.path}?${q.toString()}`;
  }

  private async relist(): Promise<void> {
    this.o.onList?.();
    const list = await getJson<{ metadata?: { resourceVersion?: string }; items?: unknown }>(this.o.endpoint, this.query({}));
    // A list that is not one is a failed list (retried with backoff), never an empty one that would empty the cache.
    if (list.items != null && !Array.isArray(list.items)) throw new Error(`the list of ${this.o.path} is malformed: items is not an array`);
    const items: T[] = [];
    for (const item of (list.items ?? []) as T[]) {
      const taken = this.takeIn(item);
      if (taken) items.push(taken);
    }
    const fresh = new Set(items.map(key));
    for (const [k, old] of this.objects) {
      if (!fresh.has(k)) this.drop(k, old);
    }
    for (const item of items) this.guarded(item, () => this.store(item));
    this.resourceVersion = list.metadata?.resourceVersion ?? '';
  }

  /** The object as stored (transformed), or undefined when it cannot be: reported, and left out. */
  private takeIn(obj: T): T | undefined {
    try {
      if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new TypeError(`not an object: ${obj === null ? 'null' : typeof obj}`);
      return this.o.transform ? this.o.transform(obj) : obj;
    } catch (err) {
      this.bad(err, obj);
      // A newer version of a cached object that cannot be read: the cached one is out of date, so it goes too.
      if (typeof obj === 'object' && obj !== null && typeof obj.metadata?.name === 'string') this.drop(key(obj));
      return undefined;
    }
  }

  /** Runs `work` on one object; one that makes it throw is reported, not let through to stop everything else. */
  private guarded(obj: unknown, work: () => void): void {
    try {
      work();
    } catch (err) {
      this.bad(err, obj);
    }
  }

  private bad(err: unknown, obj: unknown): void {
    try {
      this.o.onBadObject?.(err, obj);
    } catch {
      // Reporting one bad object must not stop the watch either.
    }
  }

  private store(obj: T): void {
    const k = key(obj);
    const had = this.objects.has(k);
    this.objects.set(k, obj);
    this.o.onEvent?.(had ? 'update' : 'add', obj);
  }

  private drop(k: string, old = this.objects.get(k)): void {
    if (!old || !this.objects.delete(k)) return;
    this.guarded(old, () => this.o.onEvent?.('delete', old));
  }

  private watch(generation: number): void {
    // Like client-go: the server ends each watch after 5–10 minutes, and it is resumed from where it was.
    const timeoutSeconds = String(300 + Math.floor(Math.random() * 300));
    const req = request(this.o.endpoint, this.query({ watch: 'true', allowWatchBookmarks: 'true', resourceVersion: this.resourceVersion, timeoutSeconds }), undefined);
    this.current = req;
    const startedAt = Date.now();
    let finished = false;
    const finish = (err: unknown) => {
      if (finished || generation !== this.generation || this.stopped) return;
      finished = true;
      this.current = undefined;
      req.destroy();
      // A watch the server ends at once, again and again, must not become a busy loop: back off instead.
      if (!err && Date.now() - startedAt < 1000) err = new Error('the API server ended the watch at once');
      if (err) this.o.onError(err);
      // Ended by the server (or a 410): resume, relisting when there is nothing to resume from.
      else this.start().catch((e: unknown) => this.o.onError(e));
    };
    req.on('response', (res) => {
      // First: a connection cut at any point below (the API server going away) is an 'error' on the response.
      res.on('error', (err) => finish(err));
      if (res.statusCode === 410) {
        this.resourceVersion = '';
        res.resume();
        return finish(undefined);
      }
      if (res.statusCode !== 200) {
        res.resume();
        return finish(new ApiStatusError(res.statusCode ?? 0, `watch ${this.o.path}`));
      }
      // No idle timeout: a quiet node's watch carries nothing but bookmarks for minutes.
      res.socket?.setKeepAlive(true, 30_000);
      const lines = createInterface({ input: res });
      // readline passes its input's errors on as its own: unheard, a cut connection would crash the agent.
      lines.on('error', (err) => finish(err));
      lines.on('line', (line) => {
        let event: { type?: string; object?: T & { code?: number } };
        try {
          event = JSON.parse(line) as typeof event;
        } catch {
          return;
        }
        const obj = event?.object;
        if (!obj || typeof obj !== 'object') return;
        if (event.type === 'ERROR') {
          if (obj.code === 410) this.resourceVersion = '';
          return;
        }
        // One object the agent cannot read is left out; it must never stop the watch (or the agent).
        if (event.type === 'ADDED' || event.type === 'MODIFIED') {
          const stored = this.takeIn(obj);
          if (stored) this.guarded(stored, () => this.store(stored));
        } else if (event.type === 'DELETED') {
          const k = key(obj);
          if (this.objects.has(k)) this.drop(k);
          else this.guarded(obj, () => this.o.onEvent?.('delete', obj));
        }
        const version = obj.metadata?.resourceVersion;
        if (typeof version === 'string' && version) this.resourceVersion = version;
      });
      res.on('end', () => finish(undefined));
      res.on('close', () => finish(res.complete ? undefined : new Error('the watch connection was closed')));
    });
    req.on('error', (err) => finish(err));
    req.end();
  }
}
