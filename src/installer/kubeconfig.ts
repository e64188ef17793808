/**
 * The kubeconfig the plugin uses for pod GETs when it runs standalone: the agent's service-account token and
 * CA, and the API server address the kubelet gave the pod (KUBERNETES_SERVICE_HOST/PORT). The token is
 * inlined, so the file is mode 0600 and rewritten whenever the projected token rotates.
 */
import { readFile } from 'node:fs/promises';
import { InstallerError } from '../errors';

export interface KubeconfigSource {
  tokenPath: string;
  caPath: string;
  host: string;
  port: string;
  /** where the file is written (inside the mounted host conf dir, e.g. /host/etc/cni/net.d/mesh-cni-kubeconfig) */
  outPath: string;
}

export const KUBECONFIG_MODE = 0o600;

export function serverUrl(host: string, port: string): string {
  const bracketed = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `https://${bracketed}:${port}`;
}

/** YAML double-quoted scalars accept JSON strings, which keeps escaping in one well-known place. */
export function renderKubeconfig(server: string, caPem: Buffer, token: string): string {
  return [
    '# Written by the mesh-cni agent for its CNI plugin; rewritten when the service-account token rotates.',
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '- name: local',
    '  cluster:',
    `    server: ${JSON.stringify(server)}`,
    `    certificate-authority-data: ${JSON.stringify(caPem.toString('base64'))}`,
    'users:',
    '- name: mesh-cni',
    '  user:',
    `    token: ${JSON.stringify(token)}`,
    'contexts:',
    '- name: mesh-cni',
    '  context:',
    '    cluster: local',
    '    user: mesh-cni',
    'current-context: mesh-cni',
    '',
  ].join('\n');
}

export async function buildKubeconfig(source: KubeconfigSource): Promise<string> {
  if (!source.host || !source.port) {
    throw new InstallerError('the API server address is unknown', {
      hint: 'KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are set by the kubelet in every pod; outside a pod pass them explicitly',
    });
  }
  let token: string;
  let ca: Buffer;
  try {
    token = (await readFile(source.tokenPath, 'utf8')).trim();
    ca = await readFile(source.caPath);
  } catch (err) {
    throw new InstallerError(`cannot read the service-account credentials: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      cause: err,
      hint: `check that ${source.tokenPath} and ${source.caPath} are mounted (automountServiceAccountToken)`,
    });
  }
  if (token === '') throw new InstallerError(`the service-account token ${source.tokenPath} is empty`);
  return renderKubeconfig(serverUrl(source.host, source.port), ca, token);
}
