/**
 * One GET of a pod from the API server with node's http/https, and the conversion of the pod object to
 * PodInfo. Retries live in pod-source.ts; this module only classifies each failure as retryable or not.
 */
import type https from 'node:https';
import { CniCode, CniError } from './errors';
import type { PodInfo } from './decision';
import { PROXY_CONTAINER } from './decision';
import type { KubeEndpoint } from './kubeconfig';

/** A failure worth retrying (not found yet, network, 5xx, 429); anything else is final. */
export class RetryableLookupError extends Error {
  override readonly name = 'RetryableLookupError';
}

const MAX_POD_BYTES = 4 * 1024 * 1024;

export function getPodJson(endpoint: KubeEndpoint, namespace: string, name: string, timeoutMs: number): Promise<unknown> {
  const base = endpoint.server.pathname.replace(/\/+$/, '');
  const path = `${base}/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`;
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
        if (size > MAX_POD_BYTES) req.destroy(new Error('pod object larger than 4 MiB'));
        else chunks.push(chunk);
      });
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        const where = `GET pod ${namespace}/${name}`;
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
    req.on('error', (err) => reject(err instanceof CniError ? err : new RetryableLookupError(`GET pod ${namespace}/${name}: ${err.message}`)));
    req.end();
  });
}

interface K8sContainer {
  name?: string;
  env?: { name?: string; value?: string }[];
  securityContext?: { runAsUser?: number; runAsGroup?: number };
}

function stringMap(v: unknown): Record<string, string> {
  if (typeof v !== 'object' || v === null) return {};
  return Object.fromEntries(Object.entries(v).filter((e): e is [string, string] => typeof e[1] === 'string'));
}

/** PodInfo from a v1 Pod object; proxy identity and DNS capture come from the istio-proxy container. */
export function podInfoFromPod(pod: unknown): PodInfo & { uid?: string } {
  const p = (pod ?? {}) as {
    metadata?: { name?: string; namespace?: string; uid?: string; labels?: unknown; annotations?: unknown };
    spec?: { containers?: K8sContainer[]; initContainers?: K8sContainer[]; securityContext?: { runAsUser?: number; runAsGroup?: number } };
  };
  const containers = p.spec?.containers ?? [];
  const proxy = containers.find((c) => c.name === PROXY_CONTAINER);
  const info: PodInfo & { uid?: string } = {
    name: p.metadata?.name ?? '',
    namespace: p.metadata?.namespace ?? '',
    uid: p.metadata?.uid,
    labels: stringMap(p.metadata?.labels),
    annotations: stringMap(p.metadata?.annotations),
    containers: containers.map((c) => c.name ?? ''),
    initContainers: (p.spec?.initContainers ?? []).map((c) => c.name ?? ''),
  };
  const uid = proxy?.securityContext?.runAsUser ?? p.spec?.securityContext?.runAsUser;
  const gid = proxy?.securityContext?.runAsGroup ?? p.spec?.securityContext?.runAsGroup;
  if (proxy && typeof uid === 'number') info.proxyUid = uid;
  if (proxy && typeof gid === 'number') info.proxyGid = gid;
  const dns = proxy?.env?.find((e) => e.name === 'ISTIO_META_DNS_CAPTURE');
  if (dns?.value !== undefined) info.dnsCapture = dns.value === 'true';
  return info;
}
