/**
 * One request to the API server over node's own http/https: the options both the plugin's pod GET
 * (./pod-api.ts) and the agent's list+watch (./lean-watch.ts) build, written once. node's http and tls are
 * loaded on the first request, not at import: they cost the standalone plugin ~8 ms of start on every VERSION,
 * DEL and annotated ADD, which never reach the API server.
 */
import type { ClientRequest } from 'node:http';
import type * as https from 'node:https';

/** Where the API server is and how to trust and authenticate to it (a kubeconfig's or the service account's). */
export interface ApiTarget {
  server: URL;
  ca?: Buffer;
  clientCert?: Buffer;
  clientKey?: Buffer;
  insecureSkipTlsVerify: boolean;
}

/**
 * A GET of `pathAndQuery` under the server's path, not yet ended (the caller listens for its response first). A
 * request with no answer within `timeoutMs` is destroyed with an error naming the bound.
 */
export function apiGet(target: ApiTarget, pathAndQuery: string, o: { token?: string; timeoutMs?: number; userAgent: string }): ClientRequest {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const transport: typeof https = target.server.protocol === 'https:' ? require('node:https') : require('node:http');
  const headers: Record<string, string> = { Accept: 'application/json', 'User-Agent': o.userAgent };
  if (o.token) headers.Authorization = `Bearer ${o.token}`;
  const req = transport.request({
    protocol: target.server.protocol,
    hostname: target.server.hostname.replace(/^\[|\]$/g, ''),
    port: target.server.port || undefined,
    path: `${target.server.pathname.replace(/\/+$/, '')}${pathAndQuery}`,
    method: 'GET',
    headers,
    ca: target.ca,
    cert: target.clientCert,
    key: target.clientKey,
    rejectUnauthorized: !target.insecureSkipTlsVerify,
    agent: false,
    timeout: o.timeoutMs,
  });
  req.on('timeout', () => req.destroy(new Error(`no answer within ${o.timeoutMs} ms`)));
  return req;
}
