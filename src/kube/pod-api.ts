/**
 * One GET of a pod from the API server with node's http/https, and the conversion of the pod object to
 * PodInfo. Retries live in pod-lookup.ts; this module only classifies each failure as retryable or not.
 */
import type https from 'node:https';
import { CniCode, CniError, RetryableLookupError } from '../errors';
import type { ContainerList, PodInfo, ProxyFacts } from '../mesh/decision';
import { PROXY_CONTAINER } from '../mesh/istio-names';
import type { KubeEndpoint } from './kubeconfig';

const MAX_POD_BYTES = 4 * 1024 * 1024;

export function getPodJson(endpoint: KubeEndpoint, namespace: string, name: string, timeoutMs: number): Promise<unknown> {
  return getApiJson(endpoint, `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`, `GET pod ${namespace}/${name}`, timeoutMs);
}

/** The pod's namespace: only its labels matter (ambient can be enabled there). */
export function getNamespaceJson(endpoint: KubeEndpoint, namespace: string, timeoutMs: number): Promise<unknown> {
  return getApiJson(endpoint, `/api/v1/namespaces/${encodeURIComponent(namespace)}`, `GET namespace ${namespace}`, timeoutMs);
}

function getApiJson(endpoint: KubeEndpoint, apiPath: string, where: string, timeoutMs: number): Promise<unknown> {
  const base = endpoint.server.pathname.replace(/\/+$/, '');
  const path = `${base}${apiPath}`;
  const headers: Record<string, string> = { Accept: 'application/json', 'User-Agent': 'mesh-cni' };
  if (endpoint.token) headers.Authorization = `Bearer ${endpoint.token}`;
  const options: https.RequestOptions = {
    protocol: endpoint.server.protocol,
    hostname: endpoint.server.hostname.replace(/^\[|\]$/g, ''),
    port: endpoint.server.port || undefined,
    path,
    method: 'GET',
    headers,
    timeout: timeoutMs,
    ca: endpoint.ca,
    cert: endpoint.clientCert,
    key: endpoint.clientKey,
    rejectUnauthorized: !endpoint.insecureSkipTlsVerify,
    agent: false,
  };
  // Loaded here, not at the top: node's http and tls cost the standalone plugin ~8 ms of start on every
  // VERSION, DEL and annotated ADD, which never reach the API server.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const transport: typeof https = endpoint.server.protocol === 'https:' ? require('node:https') : require('node:http');
  return new Promise((resolve, reject) => {
    const req = transport.request(options, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_POD_BYTES) req.destroy(new Error('object larger than 4 MiB'));
        else chunks.push(chunk);
      });
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        if (status === 200) {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
          } catch {
            reject(new RetryableLookupError(`${where}: undecodable response`));
          }
        } else if (status === 401 || status === 403) {
          reject(new CniError(CniCode.PodLookupRefused, `${where}: API server answered ${status}`, 'the kubeconfig credentials or the ClusterRole do not allow reading pods'));
        } else {
          reject(new RetryableLookupError(`${where}: API server answered ${status}`));
        }
      });
      res.on('error', (err) => reject(new RetryableLookupError(err.message)));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => reject(err instanceof CniError ? err : new RetryableLookupError(`${where}: ${err.message}`)));
    req.end();
  });
}

interface K8sContainer {
  name?: string;
  args?: unknown;
  env?: { name?: string; value?: string }[];
  securityContext?: { runAsUser?: number; runAsGroup?: number } | null;
}

function stringMap(v: unknown): Record<string, string> {
  if (typeof v !== 'object' || v === null) return {};
  return Object.fromEntries(Object.entries(v).filter((e): e is [string, string] => typeof e[1] === 'string'));
}

/**
 * PodInfo from a v1 Pod object, as Istio's ExtractPodInfo reads it: the containers are the init containers
 * followed by the regular ones; from each istio-proxy (a native sidecar is an init container) come its env
 * (literal values; `valueFrom` reads as ""), its proxy type (`args[1]` when `args[0]` is `proxy`) and its
 * container securityContext's runAsUser/runAsGroup. Istio does not look at the pod-level securityContext.
 */
export function podInfoFromPod(pod: unknown): PodInfo & { uid?: string } {
  const p = (pod ?? {}) as {
    metadata?: { name?: string; namespace?: string; uid?: string; labels?: unknown; annotations?: unknown };
    spec?: { containers?: K8sContainer[] | null; initContainers?: K8sContainer[] | null; hostNetwork?: boolean };
  };
  const lists: Array<[ContainerList, K8sContainer[]]> = [
    ['initContainers', p.spec?.initContainers ?? []],
    ['containers', p.spec?.containers ?? []],
  ];
  const info: PodInfo & { uid?: string } = {
    name: p.metadata?.name ?? '',
    namespace: p.metadata?.namespace ?? '',
    uid: p.metadata?.uid,
    labels: stringMap(p.metadata?.labels),
    annotations: stringMap(p.metadata?.annotations),
    containers: lists.flatMap(([list, containers]) => containers.map((c) => ({ name: c.name ?? '', list }))),
    ...(p.spec?.hostNetwork === true ? { hostNetwork: true } : {}),
  };
  let proxy: ProxyFacts | undefined;
  for (const [list, containers] of lists) {
    for (const c of containers) {
      if (c.name !== PROXY_CONTAINER) continue;
      // A pod with an istio-proxy in both lists: later values overwrite earlier ones, as Istio's loop does.
      proxy ??= { lists: [], env: {} };
      if (!proxy.lists.includes(list)) proxy.lists.push(list);
      for (const e of c.env ?? []) if (typeof e.name === 'string') proxy.env[e.name] = typeof e.value === 'string' ? e.value : '';
      const args = Array.isArray(c.args) ? c.args : [];
      if (args.length >= 2 && args[0] === 'proxy' && typeof args[1] === 'string') proxy.proxyType = args[1];
      if (c.securityContext) {
        const { runAsUser, runAsGroup } = c.securityContext;
        if (typeof runAsUser === 'number') proxy.runAsUser = runAsUser;
        else delete proxy.runAsUser;
        if (typeof runAsGroup === 'number') proxy.runAsGroup = runAsGroup;
        else delete proxy.runAsGroup;
      }
    }
  }
  if (proxy) info.proxy = proxy;
  return info;
}

/** The labels of a v1 Namespace object. */
export function namespaceLabelsFromNamespace(ns: unknown): Record<string, string> {
  return stringMap((ns as { metadata?: { labels?: unknown } } | null)?.metadata?.labels);
}
