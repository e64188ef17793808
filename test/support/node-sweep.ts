/**
 * Cleanup of test nodes (support/cri.ts) that must also work for a test process that died: everything is
 * found from names and files (the node's dir and netns carry the PID, node.json and sandboxes.list say what
 * else was made).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Node dirs (under the temp dir) and node netns are named `<NODE_PREFIX><pid>-<n>`. */
export const NODE_PREFIX = 'mcni-node-';

function pidAlive(pid: number): boolean {
  return fs.existsSync(`/proc/${pid}`);
}

function mountsUnder(dir: string): string[] {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
  const points = mounts.map((l) => l.split(' ')[4]).filter((p): p is string => !!p && (p === dir || p.startsWith(`${dir}/`)));
  // deepest first
  return points.sort((a, b) => b.length - a.length);
}

function removeNetnsPath(p: string): void {
  if (!fs.existsSync(p)) return;
  spawnSync('umount', ['-l', p]);
  try {
    fs.unlinkSync(p);
  } catch {
    // already gone
  }
}

/** Removes a cgroup dir and its children in every v1 hierarchy (a dir still holding a process is left). */
export function removeCgroupTree(parent: string): void {
  let controllers: string[] = [];
  try {
    controllers = fs.readdirSync('/sys/fs/cgroup');
  } catch {
    return;
  }
  for (const c of controllers) {
    const dir = path.join('/sys/fs/cgroup', c, parent);
    if (!fs.existsSync(dir)) continue;
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(path.join(d, e.name));
      try {
        fs.rmdirSync(d);
      } catch {
        // a process is still in it; the reaper kills it, and the next sweep removes the dir
      }
    };
    walk(dir);
  }
}

/** What a node directory records so that anyone can clean it up later. */
export interface NodeRecord {
  netns: string;
  networkName: string;
  cgroupParent: string;
  grpcAddress: string;
}

/** Removes everything a node directory's records name, then the directory. */
export function cleanupNodeDir(dir: string): void {
  let record: NodeRecord | undefined;
  try {
    record = JSON.parse(fs.readFileSync(path.join(dir, 'node.json'), 'utf8')) as NodeRecord;
  } catch {
    record = undefined;
  }
  let sandboxes: Array<{ id: string; netns: string }> = [];
  try {
    sandboxes = fs
      .readFileSync(path.join(dir, 'sandboxes.list'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { id: string; netns: string });
  } catch {
    sandboxes = [];
  }
  for (const s of sandboxes) {
    if (s.netns) removeNetnsPath(s.netns);
    // containerd also attaches `lo` through a network of its own, cached like ours
    fs.rmSync(path.join('/var/lib/cni/results', `cni-loopback-${s.id}-lo`), { force: true });
    if (record) {
      // containerd 1.6 names a shim's socket after sha256(<grpc address>/<namespace>/<id>)
      const hash = createHash('sha256').update(path.join(record.grpcAddress, 'k8s.io', s.id)).digest('hex');
      fs.rmSync(path.join('/run/containerd/s', hash), { force: true });
    }
  }
  for (const m of mountsUnder(dir)) spawnSync('umount', ['-l', m]);
  if (record) {
    spawnSync('ip', ['netns', 'del', record.netns]);
    for (const f of fs.existsSync('/var/lib/cni/results') ? fs.readdirSync('/var/lib/cni/results') : []) {
      if (f.startsWith(`${record.networkName}-`)) fs.rmSync(path.join('/var/lib/cni/results', f), { force: true });
    }
    removeCgroupTree(record.cgroupParent);
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Removes what node instances of test processes that no longer exist left behind. */
export function sweepDeadNodes(): void {
  for (const entry of fs.readdirSync(os.tmpdir())) {
    const m = new RegExp(`^${NODE_PREFIX}(\\d+)-`).exec(entry);
    if (m && !pidAlive(Number(m[1]))) cleanupNodeDir(path.join(os.tmpdir(), entry));
  }
  for (const name of fs.existsSync('/var/run/netns') ? fs.readdirSync('/var/run/netns') : []) {
    const m = new RegExp(`^${NODE_PREFIX}(\\d+)-`).exec(name);
    if (m && !pidAlive(Number(m[1]))) spawnSync('ip', ['netns', 'del', name]);
  }
}
