/**
 * Test network namespaces: a "pod" joined to a "peer" by a veth pair, each with IPv4 and IPv6 addresses that
 * exist only inside these namespaces. Names are unique per process and test; `destroy` always runs through
 * ava's teardown, and a sweep removes namespaces left by a test process that died.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import type { ExecutionContext } from 'ava';

const PREFIX = 'mcni-t-';
let counter = 0;

export function sh(program: string, args: string[], input?: string): string {
  const r = spawnSync(program, args, { input, encoding: 'utf8' });
  if (r.error) throw new Error(`${program} could not run: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** Runs a program inside a test namespace (the harness may use `ip netns exec`; the product never does). */
export function inNetns(netns: string, program: string, args: string[], input?: string): string {
  return sh('ip', ['netns', 'exec', netns, program, ...args], input);
}

export function tryInNetns(netns: string, program: string, args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('ip', ['netns', 'exec', netns, program, ...args], { encoding: 'utf8' });
  return { status: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** Removes namespaces named `<prefix><pid>-...` whose process (a test or benchmark run) is gone. */
export function sweepDeadNetns(prefix = PREFIX): void {
  let names: string[] = [];
  try {
    names = fs.readdirSync('/var/run/netns');
  } catch {
    return;
  }
  for (const name of names) {
    const m = new RegExp(`^${prefix}(\\d+)-`).exec(name);
    if (m && !fs.existsSync(`/proc/${m[1]}`)) spawnSync('ip', ['netns', 'del', name]);
  }
}

export function uniqueName(role: string): string {
  return `${PREFIX}${process.pid}-${++counter}-${role}`;
}

/** Creates a bare namespace with `lo` up; removed when the test ends. */
export function createNetns(t: ExecutionContext, role = 'ns'): string {
  if (counter === 0) sweepDeadNetns();
  const name = uniqueName(role);
  sh('ip', ['netns', 'add', name]);
  t.teardown(() => {
    spawnSync('ip', ['netns', 'del', name]);
  });
  sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return name;
}

/**
 * Namespaces a test file keeps across its tests (made in before hooks or by several tests): `add` makes one with
 * `lo` up and returns its path; `removeAll`, for the file's after.always hook, deletes them, newest first.
 */
export function netnsKeeper(): { add(name: string): string; removeAll(): void } {
  const names: string[] = [];
  return {
    add(name) {
      sh('ip', ['netns', 'add', name]);
      names.push(name);
      spawnSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
      return netnsPath(name);
    },
    removeAll() {
      for (const name of names.splice(0).reverse()) spawnSync('ip', ['netns', 'del', name]);
    },
  };
}

export function netnsPath(name: string): string {
  return `/var/run/netns/${name}`;
}

export interface PodPeer {
  pod: string;
  peer: string;
  podPath: string;
  podIp4: string;
  peerIp4: string;
  podIp6: string;
  peerIp6: string;
}

export const POD_IP4 = '10.77.0.2';
export const PEER_IP4 = '10.77.0.1';
export const POD_IP6 = 'fd77::2';
export const PEER_IP6 = 'fd77::1';
export const EXTERNAL_V4 = [
  { cidr: '203.0.113.0/24', host: '203.0.113.10' },
  { cidr: '198.51.100.0/24', host: '198.51.100.10' },
];
export const EXTERNAL_V6 = [
  { cidr: '2001:db8:1::/48', host: '2001:db8:1::10' },
  { cidr: '2001:db8:2::/48', host: '2001:db8:2::10' },
];

/** A pod netns and a peer netns joined by a veth pair; the peer is the pod's default gateway. */
export function createPodPeer(t: ExecutionContext, options: { ipv6?: boolean } = {}): PodPeer {
  const pod = createNetns(t, 'pod');
  const peer = createNetns(t, 'peer');
  sh('ip', ['link', 'add', 'eth0', 'netns', pod, 'type', 'veth', 'peer', 'name', 'veth0', 'netns', peer]);
  sh('ip', ['-n', pod, 'addr', 'add', `${POD_IP4}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', peer, 'addr', 'add', `${PEER_IP4}/24`, 'dev', 'veth0']);
  if (options.ipv6 !== false) {
    sh('ip', ['-n', pod, 'addr', 'add', `${POD_IP6}/64`, 'dev', 'eth0', 'nodad']);
    sh('ip', ['-n', peer, 'addr', 'add', `${PEER_IP6}/64`, 'dev', 'veth0', 'nodad']);
  }
  sh('ip', ['-n', pod, 'link', 'set', 'eth0', 'up']);
  sh('ip', ['-n', peer, 'link', 'set', 'veth0', 'up']);
  sh('ip', ['-n', pod, 'route', 'add', 'default', 'via', PEER_IP4]);
  if (options.ipv6 !== false) sh('ip', ['-n', pod, '-6', 'route', 'add', 'default', 'via', PEER_IP6]);
  // The peer also owns two documentation ranges per family, standing in for "somewhere outside the pod"
  // (so include/exclude CIDR tests have distinct destinations), all inside this test's own namespace.
  for (const range of [...EXTERNAL_V4, ...(options.ipv6 !== false ? EXTERNAL_V6 : [])]) {
    sh('ip', ['-n', peer, 'route', 'add', 'local', range.cidr, 'dev', 'lo']);
  }
  return { pod, peer, podPath: netnsPath(pod), podIp4: POD_IP4, peerIp4: PEER_IP4, podIp6: POD_IP6, peerIp6: PEER_IP6 };
}
