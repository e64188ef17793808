/**
 * A cheap look at CNI_NETNS before anything else runs: missing (code 3 on ADD/CHECK, success on DEL), not a
 * network namespace (code 4: CNI_NETNS is invalid), our own namespace (code 4: programming it would redirect
 * the node's traffic, which skel refuses too), or a pod's netns. statfs of an nsfs file reports NSFS_MAGIC,
 * both for bind mounts under /var/run/netns and for /proc/PID/ns/net.
 */
import { statfsSync, statSync } from 'node:fs';

const NSFS_MAGIC = 0x6e736673;

export type NetnsPathKind = 'netns' | 'missing' | 'not-netns' | 'own-netns';

export function classifyNetnsPath(path: string): NetnsPathKind {
  try {
    if (statfsSync(path).type !== NSFS_MAGIC) return 'not-netns';
    const target = statSync(path);
    const own = statSync('/proc/thread-self/ns/net');
    return target.ino === own.ino && target.dev === own.dev ? 'own-netns' : 'netns';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? 'missing' : 'not-netns';
  }
}
