/**
 * Finding a pod's netns through the container runtime, as kubelet knows it: CRI ListPodSandbox (the
 * sandbox's metadata carries the pod's UID), then PodSandboxStatus with verbose on, whose `info` holds the
 * OCI runtime spec and so the netns path. This is what reaches pods whose ADD we never saw (started before
 * our plugin was in the chain, or while it was broken): they have no attachment record.
 *
 * Only the calls and fields in cri-subset.proto. runtime.v1 first, then runtime.v1alpha2 (containerd 1.5 and
 * 1.6 answer both, older runtimes only the latter); the first that answers is kept.
 * @grpc/grpc-js is loaded on first use: the standalone plugin never needs it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as GrpcModule from '@grpc/grpc-js';
import type { V1Pod } from '@kubernetes/client-node';
import type { NetnsLocator } from './locate';

export const DEFAULT_CRI_SOCKET = '/run/containerd/containerd.sock';
const API_VERSIONS = ['v1', 'v1alpha2'] as const;
type ApiVersion = (typeof API_VERSIONS)[number];
const CALL_TIMEOUT_MS = 2000;
/** One list serves a whole reconciler pass over many pods. */
const LIST_TTL_MS = 1000;

/** Where the proto is: beside this file in dist/ (the build copies it), or in src/ for a bare `tsc` build. */
export function criProtoPath(): string {
  const candidates = [path.join(__dirname, 'cri-subset.proto'), path.resolve(__dirname, '../../../src/repair/cri-subset.proto')];
  return candidates.find((p) => fs.existsSync(p)) ?? candidates[0]!;
}

export interface CriSandbox {
  id: string;
  metadata?: { name?: string; uid?: string; namespace?: string; attempt?: number };
  state?: string;
  created_at?: string;
  /** the pod's annotations, as the runtime passes them to the CNI plugin */
  annotations?: Record<string, string>;
}

type Unary = (request: unknown, metadata: GrpcModule.Metadata, options: GrpcModule.CallOptions, callback: (err: GrpcModule.ServiceError | null, value?: any) => void) => void;
type RuntimeClient = GrpcModule.Client & Record<string, Unary>;

export class CriRuntime {
  private clients = new Map<ApiVersion, RuntimeClient>();
  private version?: ApiVersion;
  private listed?: { at: number; items: Promise<CriSandbox[]> };

  private constructor(
    private readonly grpc: typeof GrpcModule,
    private readonly service: GrpcModule.ServiceDefinition,
    readonly socket: string,
  ) {}

  static async open(socket: string): Promise<CriRuntime> {
    const grpc = await import('@grpc/grpc-js');
    const loader = await import('@grpc/proto-loader');
    const definition = loader.loadSync(criProtoPath(), { keepCase: true, longs: String, enums: String, defaults: true });
    return new CriRuntime(grpc, definition['runtime.v1.RuntimeService'] as GrpcModule.ServiceDefinition, socket);
  }

  private client(version: ApiVersion): RuntimeClient {
    let client = this.clients.get(version);
    if (!client) {
      // The same messages under the other package: only the method paths differ.
      const service = Object.fromEntries(
        Object.entries(this.service).map(([name, method]) => [name, { ...method, path: method.path.replace('/runtime.v1.', `/runtime.${version}.`) }]),
      ) as GrpcModule.ServiceDefinition;
      const Client = this.grpc.makeClientConstructor(service, `runtime.${version}.RuntimeService`);
      client = new Client(`unix:${this.socket}`, this.grpc.credentials.createInsecure()) as RuntimeClient;
      this.clients.set(version, client);
    }
    return client;
  }

  private callOn<T>(version: ApiVersion, method: string, request: unknown): Promise<T> {
    const client = this.client(version);
    return new Promise((resolve, reject) => {
      client[method]!.call(client, request, new this.grpc.Metadata(), { deadline: Date.now() + CALL_TIMEOUT_MS }, (err, value) => {
        if (err) reject(Object.assign(new Error(`CRI ${method} on ${this.socket}: ${err.details || err.message}`), { code: err.code }));
        else resolve(value as T);
      });
    });
  }

  /** Calls `method` on the API version that answered before, or finds one that does. */
  async call<T>(method: string, request: unknown): Promise<T> {
    if (this.version) return this.callOn<T>(this.version, method, request);
    let last: unknown;
    for (const version of API_VERSIONS) {
      try {
        const answer = await this.callOn<T>(version, method, request);
        this.version = version;
        return answer;
      } catch (err) {
        last = err;
        if ((err as { code?: number }).code !== this.grpc.status.UNIMPLEMENTED) throw err;
      }
    }
    throw last;
  }

  /** Ready sandboxes, listed at most once a second (a failure too: a pass over many pods asks once). */
  readySandboxes(): Promise<CriSandbox[]> {
    const now = Date.now();
    if (!this.listed || now - this.listed.at > LIST_TTL_MS) {
      const items = this.call<{ items?: CriSandbox[] }>('ListPodSandbox', { filter: { state: { state: 'SANDBOX_READY' } } }).then((r) => r.items ?? []);
      this.listed = { at: now, items };
      items.catch(() => undefined);
    }
    return this.listed.items;
  }

  /** The sandbox's network namespace path from its verbose status (containerd's `info` JSON). */
  async netnsPath(sandboxId: string): Promise<string | undefined> {
    const r = await this.call<{ info?: Record<string, string> }>('PodSandboxStatus', { pod_sandbox_id: sandboxId, verbose: true });
    return netnsFromInfo(r.info ?? {});
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}

/** containerd: info.info = JSON with runtimeSpec.linux.namespaces[{type: "network", path}]. */
export function netnsFromInfo(info: Record<string, string>): string | undefined {
  for (const value of Object.values(info)) {
    let parsed: any;
    try {
      parsed = JSON.parse(value);
    } catch {
      continue;
    }
    const namespaces: Array<{ type?: string; path?: string }> = parsed?.runtimeSpec?.linux?.namespaces ?? [];
    const found = namespaces.find((ns) => ns.type === 'network' && ns.path)?.path;
    if (found) return found;
  }
  return undefined;
}

/**
 * The newest ready sandbox of namespace/name and its netns, as the runtime knows it: what `explain` uses when
 * Kubernetes is turned off (the sandbox carries the annotations the plugin was given).
 */
export async function findSandbox(socket: string, namespace: string, name: string): Promise<{ sandbox: CriSandbox; netns?: string } | undefined> {
  const cri = await CriRuntime.open(socket);
  try {
    const mine = (await cri.readySandboxes()).filter((s) => s.metadata?.namespace === namespace && s.metadata?.name === name);
    mine.sort((a, b) => Number(BigInt(b.created_at ?? '0') - BigInt(a.created_at ?? '0')));
    const sandbox = mine[0];
    if (!sandbox) return undefined;
    const netns = await cri.netnsPath(sandbox.id);
    return { sandbox, netns: netns && fs.existsSync(netns) ? netns : undefined };
  } finally {
    cri.close();
  }
}

/**
 * A locator over CRI. Failures (no runtime at that socket, an old runtime) answer "not found" so the next
 * locator (/proc) is tried; `onError` hears them, once per distinct message.
 */
export function fromCri(socket: string, onError?: (err: Error) => void): NetnsLocator & { close(): void } {
  let runtime: Promise<CriRuntime> | undefined;
  const reported = new Set<string>();
  const locate = async (pod: V1Pod): Promise<string | undefined> => {
    const uid = pod.metadata?.uid;
    if (!uid) return undefined;
    try {
      runtime ??= CriRuntime.open(socket);
      const cri = await runtime;
      const mine = (await cri.readySandboxes()).filter((s) => s.metadata?.uid === uid);
      // The newest ready sandbox is the pod's live one (an old one may linger while kubelet replaces it).
      mine.sort((a, b) => Number(BigInt(b.created_at ?? '0') - BigInt(a.created_at ?? '0')));
      for (const sandbox of mine) {
        const netns = await cri.netnsPath(sandbox.id);
        if (netns && fs.existsSync(netns)) return netns;
      }
      return undefined;
    } catch (err) {
      const message = (err as Error).message;
      if (!reported.has(message)) {
        reported.add(message);
        onError?.(err as Error);
      }
      return undefined;
    }
  };
  return Object.assign(locate, {
    close: () => {
      void runtime?.then((r) => r.close()).catch(() => undefined);
    },
  });
}
