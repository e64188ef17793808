/**
 * A list+watch of one resource path over node's own https, without @kubernetes/client-node: loading that
 * library costs the agent ~50 MiB of RSS (its config module pulls in every generated API and model), and an
 * idle agent needs none of it. Semantics follow client-go's reflector as @kubernetes/client-node's ListWatch
 * implements them: list, then watch from the list's resourceVersion with bookmarks; a watch the server
 * ends (timeoutSeconds) resumes from the last resourceVersion seen; `410 Gone` (as an ERROR event or a
 * status) relists; any other failure is reported to `onError`, and the owner restarts with backoff.
 */
import * as fs from 'node:fs';
import type * as https from 'node:https';
import type { ClientRequest } from 'node:http';
import { createInterface } from 'node:readline';
import type { KubeEndpoint } from './kubeconfig';
import { ApiStatusError } from '../errors';

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Where the API server is and how to authenticate; the token is re-read on every request (it rotates). */
export interface ApiEndpoint {
  server: URL;
  ca?: Buffer;
  insecureSkipTlsVerify: boolean;
  token(): string | undefined;
  clientCert?: Buffer;
  clientKey?: Buffer;
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
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const transport: typeof https = endpoint.server.protocol === 'https:' ? require('node:https') : require('node:http');
  const headers: Record<string, string> = { Accept: 'application/json', 'User-Agent': 'mesh-cni-agent' };
  const token = endpoint.token();
  if (token) headers.Authorization = `Bearer ${token}`;
  const req = transport.request({
    protocol: endpoint.server.protocol,
    hostname: endpoint.server.hostname.replace(/^\[|\]$/g, ''),
    port: endpoint.server.port || undefined,
    path: `${endpoint.server.pathname.replace(/\/+$/, '')}${pathAndQuery}`,
    method: 'GET',
    headers,
    ca: endpoint.ca,
    cert: endpoint.clientCert,
    key: endpoint.clientKey,
    rejectUnauthorized: !endpoint.insecureSkipTlsVerify,
    agent: false,
    timeout: timeoutMs,
  });
  req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
  return req;
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
    const list = await getJson<{ metadata?: { resourceVersion?: string }; items?: T[] }>(this.o.endpoint, this.query({}));
    const items = (list.items ?? []).map((i) => (this.o.transform ? this.o.transform(i) : i));
    const fresh = new Set(items.map(key));
    for (const [k, old] of this.objects) {
      if (!fresh.has(k)) {
        this.objects.delete(k);
        this.o.onEvent?.('delete', old);
      }
    }
    for (const item of items) this.store(item);
    this.resourceVersion = list.metadata?.resourceVersion ?? '';
  }

  private store(obj: T): void {
    const k = key(obj);
    const had = this.objects.has(k);
    this.objects.set(k, obj);
    this.o.onEvent?.(had ? 'update' : 'add', obj);
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
        const obj = event.object;
        if (!obj) return;
        if (event.type === 'ERROR') {
          if (obj.code === 410) this.resourceVersion = '';
          return;
        }
        const stored = event.type === 'BOOKMARK' || !this.o.transform ? obj : this.o.transform(obj);
        if (event.type === 'ADDED' || event.type === 'MODIFIED') this.store(stored);
        else if (event.type === 'DELETED') {
          const k = key(stored);
          const old = this.objects.get(k);
          this.objects.delete(k);
          this.o.onEvent?.('delete', old ?? stored);
        }
        if (obj.metadata?.resourceVersion) this.resourceVersion = obj.metadata.resourceVersion;
      });
      res.on('end', () => finish(undefined));
      res.on('close', () => finish(res.complete ? undefined : new Error('the watch connection was closed')));
    });
    req.on('error', (err) => finish(err));
    req.end();
  }
}
