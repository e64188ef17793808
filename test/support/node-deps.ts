/**
 * Where the real-node suites find what scripts/setup-node-deps.sh installs and builds, and the check that
 * fails a suite (never skips it) when something is missing.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from './paths';

export const NODE_CACHE = process.env.MESH_CNI_CACHE ?? '/var/cache/mesh-cni';
export const CRI_PROTO = path.join(NODE_CACHE, 'cri/api.proto');
export const CNITOOL = path.join(NODE_CACHE, 'bin/cnitool');
export const KUBE_APISERVER = path.join(NODE_CACHE, 'bin/kube-apiserver');
export const CNI_PLUGIN_DIR = '/usr/lib/cni';
export const SHIM = path.join(REPO_ROOT, 'build/mesh-cni');
export const ENGINE = path.join(REPO_ROOT, 'dist/src/standalone/main.js');
export const SETUP_HINT = 'run scripts/setup-node-deps.sh as root (CI does this before npm test)';

function onPath(program: string): boolean {
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', program], { encoding: 'utf8' });
  return r.status === 0;
}

/** Throws one message listing everything missing, naming the script that provides it. */
export function requireNodeDeps(needs: { containerd?: boolean; cnitool?: boolean; kube?: boolean }): void {
  if (process.getuid?.() !== 0) throw new Error('real-node tests need root (network namespaces, containerd)');
  const missing: string[] = [];
  const file = (p: string) => {
    if (!fs.existsSync(p)) missing.push(p);
  };
  const program = (p: string) => {
    if (!onPath(p)) missing.push(`${p} (not on PATH)`);
  };
  file(SHIM);
  file(ENGINE);
  file(path.join(CNI_PLUGIN_DIR, 'bridge'));
  file(path.join(CNI_PLUGIN_DIR, 'host-local'));
  for (const p of ['ip', 'nsenter', 'iptables-save', 'python3', 'openssl']) program(p);
  if (needs.containerd) {
    file(CRI_PROTO);
    file('/bin/busybox');
    for (const p of ['containerd', 'containerd-shim-runc-v2', 'runc', 'ctr', 'tar']) program(p);
  }
  if (needs.cnitool) file(CNITOOL);
  if (needs.kube) {
    file(KUBE_APISERVER);
    program('etcd');
  }
  if (missing.length > 0) throw new Error(`missing for the real-node tests: ${missing.join(', ')}; ${SETUP_HINT}`);
}
