/**
 * What a network-namespace path names: whether it is a namespace file at all, and whether it is the
 * namespace this thread runs in. The CNI path check (before anything else runs) and the engine's
 * host-netns refusal both ask here, so they cannot disagree.
 *
 * statfs of an nsfs file reports NSFS_MAGIC, both for bind mounts under /var/run/netns and for
 * /proc/PID/ns/net.
 */
import * as fs from 'node:fs';

const NSFS_MAGIC = 0x6e736673;

/**
 * The calling thread's own namespace. /proc/thread-self, not /proc/self: setns(2) moves one thread, and
 * /proc/self names the thread-group leader, so on any thread other than the leader (or on the leader while
 * another thread has switched) /proc/self can name a namespace the caller is not in.
 */
const OWN_NETNS = '/proc/thread-self/ns/net';

export type NetnsPathKind = 'netns' | 'missing' | 'not-netns' | 'own-netns';

/** True when `path` is a file on nsfs (throws what statfs throws). */
export function isNsfs(path: string): boolean {
  return fs.statfsSync(path).type === NSFS_MAGIC;
}

/**
 * A namespace is identified by the device and inode of its nsfs file together (namespaces(7)): the inode
 * alone is unique only within one nsfs device, so comparing inodes only could take a pod's namespace for
 * our own.
 */
function sameNamespace(a: { dev: number; ino: number }, b: { dev: number; ino: number }): boolean {
  return a.ino === b.ino && a.dev === b.dev;
}

/**
 * How deep this thread is in `withNetns` (src/netns/index.ts), which with `openScratchNetns` beside it is the
 * only place that changes the thread's netns (setns(2), unshare(2)), and which always comes back: at depth 0 the thread is in the namespace it started in, so that one's identity is read
 * once (the stat of a /proc path is the dearest part of an ADD's path check), and inside `withNetns` every time.
 */
let entered = 0;
let home: { dev: number; ino: number } | undefined;

/** withNetns: this thread is now in another namespace (`true`) or back from one (`false`). */
export function noteNetnsSwitch(into: boolean): void {
  entered += into ? 1 : -1;
}

/** Whether this thread is in the namespace it started in (no `withNetns` under way on it). */
export function atHome(): boolean {
  return entered === 0;
}

/**
 * Whether the file open at `fd` (opened from `path`) is a namespace file: one on the device of our own
 * namespace file is on nsfs (one device, one filesystem), so a pod's netns costs an fstat; anything else is
 * asked with statfs.
 */
export function isNsfsFd(fd: number, path: string): boolean {
  const own = ownNetnsStat();
  return (own !== undefined && fs.fstatSync(fd).dev === own.dev) || isNsfs(path);
}

/** The device and inode of the namespace this thread runs in (throws what stat throws). */
function ownNetns(): { dev: number; ino: number } {
  if (entered > 0) return fs.statSync(OWN_NETNS);
  if (!home) {
    const st = fs.statSync(OWN_NETNS);
    home = { dev: st.dev, ino: st.ino };
  }
  return home;
}

/** True when the namespace file at `path` is the calling thread's own network namespace (throws what stat throws). */
export function isOwnNetns(path: string): boolean {
  return sameNamespace(fs.statSync(path), ownNetns());
}

/**
 * A cheap look at a CNI_NETNS before anything else runs: missing, not a network namespace, our own
 * namespace (programming it would redirect the node's traffic, which skel refuses too), or a pod's netns.
 */
export function classifyNetnsPath(path: string): NetnsPathKind {
  try {
    const target = fs.statSync(path);
    const own = ownNetnsStat();
    // A file on the device of our own namespace file is on nsfs (one device is one filesystem): an ADD's
    // check costs two stats. Only a file elsewhere is asked with statfs, which names its filesystem.
    if (own?.dev !== target.dev && !isNsfs(path)) return 'not-netns';
    return sameNamespace(target, own ?? ownNetns()) ? 'own-netns' : 'netns';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? 'missing' : 'not-netns';
  }
}

/** Our own namespace's identity, or undefined when it cannot be read (no /proc): then asked again where needed, to throw. */
function ownNetnsStat(): { dev: number; ino: number } | undefined {
  try {
    return ownNetns();
  } catch {
    return undefined;
  }
}

/**
 * A namespace file's identity as a key (its nsfs device and inode: every path to one namespace, and every
 * descriptor of it, has the same), for maps and locks kept per namespace.
 */
export function netnsKey(st: { dev: number; ino: number }): string {
  return `${st.dev}:${st.ino}`;
}

/** The identity of the namespace file at `path`, or undefined when it cannot be stat'ed (gone, no access). */
export function netnsIdentity(path: string): string | undefined {
  try {
    return netnsKey(fs.statSync(path));
  } catch {
    return undefined;
  }
}
