/**
 * Primary CNI configs as the real CNIs write them (shapes taken from calico's and flannel's install
 * manifests and the bridge plugin's README), and a temp node layout to install into.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import type { InstallOptions, InstallWatcher } from '../../src/installer';
import { pluginEntry, watchAndRepair } from '../../src/installer';
import { renameExchange } from '../../src/netns/native';

export const CALICO_CONFLIST = `{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "log_file_path": "/var/log/calico/cni/cni.log",
      "datastore_type": "kubernetes",
      "nodename": "node-1",
      "mtu": 0,
      "ipam": {
          "type": "calico-ipam"
      },
      "policy": {
          "type": "k8s"
      },
      "kubernetes": {
          "kubeconfig": "/etc/cni/net.d/calico-kubeconfig"
      }
    },
    {
      "type": "bandwidth",
      "capabilities": {"bandwidth": true}
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    }
  ]
}
`;

export const FLANNEL_CONFLIST = `{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
`;

export const BRIDGE_CONF = `{
\t"cniVersion": "0.4.0",
\t"name": "mynet",
\t"type": "bridge",
\t"bridge": "cni0",
\t"isGateway": true,
\t"ipMasq": true,
\t"ipam": {
\t\t"type": "host-local",
\t\t"subnet": "10.22.0.0/16",
\t\t"routes": [
\t\t\t{ "dst": "0.0.0.0/0" }
\t\t]
\t}
}
`;

/** Sorts first and is not valid JSON (a half-written file, as a CNI mid-install leaves it). */
export const INVALID_FIRST = '{"cniVersion": "0.3.1", "name": "half-written", "plugins": [{"type": "cal';

export interface Node {
  root: string;
  options: InstallOptions;
  confDir: string;
  binDir: string;
  tokenPath: string;
  kubeconfigPath: string;
  cleanup(): void;
}

/** A fake node: bin and conf dirs, a state dir, a shim and engine to install, service-account files. */
export function makeNode(files: Record<string, string> = {}, extra: Partial<InstallOptions> = {}): Node {
  const root = mkdtempSync(join(tmpdir(), 'mesh-cni-installer-'));
  const confDir = join(root, 'host/etc/cni/net.d');
  const binDir = join(root, 'host/opt/cni/bin');
  const src = join(root, 'image');
  const sa = join(root, 'sa');
  for (const dir of [confDir, binDir, src, sa]) mkdirSync(dir, { recursive: true });
  writeFileSync(join(src, 'mesh-cni'), '#!/bin/sh\necho shim v1\n', { mode: 0o755 });
  mkdirSync(join(src, 'engine', 'src'), { recursive: true });
  writeFileSync(join(src, 'engine', 'mesh-cni.js'), "require('./src/main.js');\n");
  writeFileSync(join(src, 'engine', 'src', 'main.js'), '// engine v1\n');
  writeFileSync(join(sa, 'token'), 'eyJhbGciOiJSUzI1NiJ9.first-token.sig\n');
  writeFileSync(join(sa, 'ca.crt'), '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n');
  for (const [name, text] of Object.entries(files)) writeFileSync(join(confDir, name), text, { mode: 0o644 });
  const kubeconfigPath = join(confDir, 'mesh-cni-kubeconfig');
  const options: InstallOptions = {
    cniBinDir: binDir,
    cniConfDir: confDir,
    shimPath: join(src, 'mesh-cni'),
    enginePath: join(src, 'engine'),
    pluginConfig: pluginEntry({ kubeconfig: '/etc/cni/net.d/mesh-cni-kubeconfig', logLevel: 'info', backend: 'auto' }),
    kubeconfig: { tokenPath: join(sa, 'token'), caPath: join(sa, 'ca.crt'), host: '10.96.0.1', port: '443', outPath: kubeconfigPath },
    stateDir: join(root, 'var/run/mesh-cni'),
    renameExchange,
    ...extra,
  };
  return {
    root,
    options,
    confDir,
    binDir,
    tokenPath: join(sa, 'token'),
    kubeconfigPath,
    cleanup: () => rmSync(root, { recursive: true, force: true }),
  };
}

/**
 * A temp node whose primary CNI is Calico's conflist, watched by the installer as the agent runs it; our
 * entry carries the node's own log and state paths, so an ADD writes nothing outside it. Both are removed
 * when the test ends. For the fault suites that race the primary's writes against ours.
 */
export function watchedCalicoNode(t: ExecutionContext): { node: Node; watcher: InstallWatcher; file: string } {
  const node = makeNode({ '10-calico.conflist': CALICO_CONFLIST });
  t.teardown(node.cleanup);
  node.options.pluginConfig = { ...node.options.pluginConfig, kubernetes: undefined, log_file: join(node.root, 'cni.log'), state_dir: node.root };
  const watcher = watchAndRepair(node.options);
  t.teardown(() => watcher.close());
  return { node, watcher, file: join(node.confDir, '10-calico.conflist') };
}

export const REAL_WORLD: Array<{ title: string; file: string; text: string }> = [
  { title: 'calico conflist (calico + bandwidth + portmap)', file: '10-calico.conflist', text: CALICO_CONFLIST },
  { title: 'flannel conflist (flannel with delegate + portmap)', file: '10-flannel.conflist', text: FLANNEL_CONFLIST },
];
