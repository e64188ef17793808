/**
 * Reads the few kubeconfig fields a pod GET needs, without @kubernetes/client-node (too heavy for the
 * standalone ADD path). Errors never quote file contents: a kubeconfig holds credentials.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { CniCode, CniError } from '../errors';
import { isObject } from '../json';
import type { ApiTarget } from './https';

export interface KubeEndpoint extends ApiTarget {
  token?: string;
}

function invalid(path: string, why: string): CniError {
  return new CniError(CniCode.KubeconfigInvalid, `kubeconfig ${path}: ${why}`, 'check kubernetes.kubeconfig in the netconf; the agent writes this file at install');
}


function named(list: unknown, name: string, field: string): Record<string, unknown> | undefined {
  if (!Array.isArray(list)) return undefined;
  const entry = list.find((e) => isObject(e) && e.name === name) as Record<string, unknown> | undefined;
  return entry && isObject(entry[field]) ? (entry[field] as Record<string, unknown>) : undefined;
}

/** A credential given inline (base64 `-data`) or as a file path relative to the kubeconfig's directory. */
function material(section: Record<string, unknown>, key: string, baseDir: string, path: string): Buffer | undefined {
  const data = section[`${key}-data`];
  if (typeof data === 'string' && data !== '') return Buffer.from(data, 'base64');
  const file = section[key];
  if (typeof file === 'string' && file !== '') {
    const full = isAbsolute(file) ? file : resolve(baseDir, file);
    try {
      return readFileSync(full);
    } catch (err) {
      throw invalid(path, `cannot read ${key} file ${full}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  return undefined;
}

export function parseKubeconfig(text: string, path: string): KubeEndpoint {
  let doc: unknown;
  try {
    // Loaded here, not at the top: only a pod GET needs it, and the standalone engine's start must stay light.
    // The JSON schema: kubeconfig values are strings, numbers, booleans and nulls, never YAML 1.1 surprises.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const yaml = require('js-yaml') as typeof import('js-yaml');
    doc = yaml.load(text, { schema: yaml.JSON_SCHEMA, filename: path });
  } catch (err) {
    throw invalid(path, `cannot parse: ${(err as Error).message.split('\n')[0]}`);
  }
  if (!isObject(doc)) throw invalid(path, 'not a mapping');
  const contexts = doc.contexts;
  const contextName = typeof doc['current-context'] === 'string' ? doc['current-context'] : undefined;
  const onlyContext = Array.isArray(contexts) && contexts.length === 1 && isObject(contexts[0]) ? String(contexts[0].name) : undefined;
  const name = contextName || onlyContext;
  if (!name) throw invalid(path, 'no current-context');
  const context = named(contexts, name, 'context');
  if (!context) throw invalid(path, `context "${name}" not found`);
  const cluster = named(doc.clusters, String(context.cluster), 'cluster');
  if (!cluster) throw invalid(path, `cluster "${String(context.cluster)}" not found`);
  const user = context.user === undefined ? {} : named(doc.users, String(context.user), 'user');
  if (!user) throw invalid(path, `user "${String(context.user)}" not found`);

  if (typeof cluster.server !== 'string') throw invalid(path, 'cluster has no server');
  let server: URL;
  try {
    server = new URL(cluster.server);
  } catch {
    throw invalid(path, 'cluster server is not a URL');
  }
  if (server.protocol !== 'https:' && server.protocol !== 'http:') throw invalid(path, `unsupported server scheme ${server.protocol}`);
  for (const unsupported of ['exec', 'auth-provider', 'username', 'password']) {
    if (user[unsupported] !== undefined) throw invalid(path, `user "${unsupported}" authentication is not supported by the standalone plugin; use a token or client certificate`);
  }

  const baseDir = dirname(path);
  let token = typeof user.token === 'string' && user.token !== '' ? user.token : undefined;
  if (!token && typeof user.tokenFile === 'string' && user.tokenFile !== '') {
    token = material({ tokenFile: user.tokenFile }, 'tokenFile', baseDir, path)?.toString('utf8').trim();
  }
  // The token goes into an Authorization header: a CR, LF or other control character would be refused
  // there (a TypeError, once 999) or, worse, split the header. Never quote the token itself.
  if (token !== undefined && /[\x00-\x1f\x7f]/.test(token)) throw invalid(path, 'the user token holds a control character (CR, LF, ...); it cannot be sent as a bearer token');
  const insecure = cluster['insecure-skip-tls-verify'];
  return {
    server,
    ca: material(cluster, 'certificate-authority', baseDir, path),
    insecureSkipTlsVerify: insecure === true || insecure === 'true',
    token,
    clientCert: material(user, 'client-certificate', baseDir, path),
    clientKey: material(user, 'client-key', baseDir, path),
  };
}

export function readKubeconfig(path: string): KubeEndpoint {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw invalid(path, `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseKubeconfig(text, path);
}
