/** What a runtime hands CNI plugins on a test node: the conflist, the bin dir, CNI_ARGS. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CNI_PLUGIN_DIR, SHIM } from './node-deps';

export const POD_SUBNET = '10.99.0.0/24';
export const POD_GATEWAY = '10.99.0.1';

export interface ConflistOptions {
  networkName: string;
  cniVersion?: string;
  bridge: string;
  hostLocalDataDir: string;
  /** Our plugin's entry, merged over {type: 'mesh-cni'}; null: the primary CNI alone (the agent inserts us). */
  meshCni: Record<string, unknown> | null;
  subnet?: string;
  gateway?: string;
}

/** bridge (own name, gateway, no masquerade) + host-local + mesh-cni last, as the installer chains it. */
export function conflist(options: ConflistOptions): Record<string, unknown> {
  return {
    cniVersion: options.cniVersion ?? '1.0.0',
    name: options.networkName,
    plugins: [
      {
        type: 'bridge',
        bridge: options.bridge,
        isGateway: true,
        ipMasq: false,
        ipam: {
          type: 'host-local',
          dataDir: options.hostLocalDataDir,
          ranges: [[{ subnet: options.subnet ?? POD_SUBNET, gateway: options.gateway ?? POD_GATEWAY }]],
          routes: [{ dst: '0.0.0.0/0' }],
        },
      },
      ...(options.meshCni ? [{ type: 'mesh-cni', ...options.meshCni }] : []),
    ],
  };
}

/** A CNI bin dir holding the distribution's plugins and our shim (a symlink: the shim finds its engine
 * from its real path, build/../dist/src/standalone/main.js). */
export function makeCniBinDir(dir: string, withShim = true): string {
  fs.mkdirSync(dir, { recursive: true });
  for (const plugin of fs.readdirSync(CNI_PLUGIN_DIR)) fs.symlinkSync(path.join(CNI_PLUGIN_DIR, plugin), path.join(dir, plugin));
  if (withShim) fs.symlinkSync(SHIM, path.join(dir, 'mesh-cni'));
  return dir;
}

/** CNI_ARGS as containerd 1.6 builds them for a pod. */
export function podCniArgs(namespace: string, name: string, sandboxId: string, uid: string): string {
  return `IgnoreUnknown=1;K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=${sandboxId};K8S_POD_UID=${uid}`;
}
