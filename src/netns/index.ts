/**
 * The one native seam: enter a network namespace with setns(2), do something there, and come back.
 *
 * A namespace switch belongs to one thread. Node runs our JavaScript on the main thread, and libuv forks a
 * child synchronously inside `spawn()`, so a child spawned between the two setns calls starts in the pod's
 * namespace while the process as a whole stays in the host's. That is why `withNetns` takes a synchronous
 * function: an `await` inside it would let other work run on the main thread while it is in the pod's netns.
 */
import * as fs from 'node:fs';
import type * as ChildProcess from 'node:child_process';
import { CommandFailedError, MeshCniError, NetnsBusyError, NetnsNotFoundError, NotANetnsError, OwnNetnsError, RequestAbandonedError, SpawnError } from '../errors';
export { NetnsBusyError };
import { errno, loadLibc } from './native';
import { atHome, isNsfsFd, isOwnNetnsFd, netnsKey, noteNetnsSwitch } from './identity';
import { collectSpawn, startSpawn } from './spawn';
import { EINTR } from './ffi';
export { setCollectMode, type CollectMode } from './spawn';
export { classifyNetnsPath, netnsIdentity, type NetnsPathKind } from './identity';

const CLONE_NEWNET = 0x40000000;
const EINVAL = 22;
const ENOENT = 'ENOENT';

function netnsAccessError(path: string, err: unknown): MeshCniError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === ENOENT) return new NetnsNotFoundError(path, err);
  if (code === 'EACCES' || code === 'EPERM') {
    return new MeshCniError(`permission denied opening network namespace ${path}`, {
      cause: err,
      hint: 'run as root (the agent needs CAP_SYS_ADMIN and access to the host PID namespace for /proc paths)',
    });
  }
  return new NotANetnsError(path, err);
}

/**
 * Opens a namespace file, with typed errors for "does not exist" and "is not a namespace file". Everything
 * after the open asks the descriptor, never the path again: a path (a symlink in it) can name another
 * namespace by the time it is looked at a second time.
 */
function openNetns(path: string): number {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (err) {
    throw netnsAccessError(path, err);
  }
  try {
    if (!isNsfsFd(fd)) throw new NotANetnsError(path);
  } catch (err) {
    fs.closeSync(fd);
    throw err instanceof MeshCniError ? err : new NotANetnsError(path, err);
  }
  return fd;
}

/** True when `path` names the namespace this thread itself runs in (the host's, for the agent). */
export function isHostNetns(path: string): boolean {
  const fd = openNetns(path);
  try {
    return isOwnNetnsFd(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Namespaces held open by `withNetnsLock` while its function runs, by the name it hands that function
 * (/proc/self/fd/N): `withNetns` enters the held descriptor itself, so every step of one request lands in
 * the namespace that was checked and locked.
 */
const held = new Map<string, { fd: number; path: string }>();

/** Back to the thread's own netns: staying in a pod's would make every later action land in the wrong place. */
function returnHome(homeFd: number): void {
  if (loadLibc().setns(homeFd, CLONE_NEWNET) !== 0) {
    process.stderr.write(`mesh-cni: fatal: could not return to the original network namespace (errno ${errno()})\n`);
    process.abort();
  }
}

/**
 * Runs `fn` inside the network namespace at `path` and always returns to the original namespace.
 * `fn` must be synchronous (see the module comment).
 */
export function withNetns<T>(path: string, fn: () => T): T {
  const c = loadLibc();
  const known = held.get(path);
  // Errors name the path the request gave, not /proc/self/fd/N.
  const named = known?.path ?? path;
  const targetFd = known?.fd ?? openNetns(path);
  let homeFd: number | undefined;
  // From home, the way back is the one descriptor kept for it; from inside another withNetns, the
  // namespace the thread is in now.
  const fromHome = atHome();
  try {
    homeFd = fromHome ? homeDescriptor() : fs.openSync('/proc/thread-self/ns/net', 'r');
    if (c.setns(targetFd, CLONE_NEWNET) !== 0) {
      const code = errno();
      if (code === EINVAL) throw new NotANetnsError(named);
      throw new MeshCniError(`setns(${named}) failed with errno ${code}`, {
        hint: 'entering a network namespace needs CAP_SYS_ADMIN (run as root)',
      });
    }
    // Every netns switch of this thread is counted (identity.ts relies on it to know when the thread is at home).
    noteNetnsSwitch(true);
    try {
      const result = fn();
      if (result && typeof (result as { then?: unknown }).then === 'function') {
        throw new MeshCniError('internal error: withNetns was given an async function');
      }
      return result;
    } finally {
      returnHome(homeFd);
      noteNetnsSwitch(false);
    }
  } finally {
    if (!known) fs.closeSync(targetFd);
    if (homeFd !== undefined && !fromHome) fs.closeSync(homeFd);
  }
}

let home: number | undefined;
/** This thread's own netns, opened once (close-on-exec, so no program inherits it): every ADD enters a netns twice. */
function homeDescriptor(): number {
  return (home ??= fs.openSync('/proc/thread-self/ns/net', 'r'));
}

/**
 * A new, empty network namespace held only by a descriptor of this process: no name under /var/run/netns and
 * no mount, so nothing is left behind if the process dies; the kernel frees it once the descriptor is closed
 * and no process runs in it. `path` opens it like any netns file (`withNetns`, `run`). Made by unshare(2) on
 * this thread, which then goes straight back home, as `withNetns` does.
 */
export function openScratchNetns(): { path: string; close(): void } {
  const c = loadLibc();
  const homeFd = fs.openSync('/proc/thread-self/ns/net', 'r');
  let scratchFd: number;
  try {
    noteNetnsSwitch(true);
    try {
      if (c.unshare(CLONE_NEWNET) !== 0) {
        throw new MeshCniError(`unshare(CLONE_NEWNET) failed with errno ${errno()}`, { hint: 'making a network namespace needs CAP_SYS_ADMIN (run as root)' });
      }
      scratchFd = fs.openSync('/proc/thread-self/ns/net', 'r');
    } finally {
      returnHome(homeFd);
      noteNetnsSwitch(false);
    }
  } finally {
    fs.closeSync(homeFd);
  }
  let open = true;
  return {
    path: `/proc/${process.pid}/fd/${scratchFd}`,
    close: () => {
      if (open) fs.closeSync(scratchFd);
      open = false;
    },
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Fed to the program on stdin (rules go this way, never on the command line). */
  input?: string;
  timeoutMs?: number;
  /** Which Debian package provides the program, for the error message when it is missing. */
  packageHint?: string;
}

/**
 * Runs `program args...` with its network namespace set to `netns` (or the current one when `netns` is
 * undefined), never through a shell. Resolves with the exit code and output; rejects only when the
 * program could not be started or timed out.
 */
export function run(netns: string | undefined, program: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  // posix_spawn first (spawn.ts: no copy of this process, whatever its size); child_process where it is unavailable.
  const lean = () => startSpawn(program, args, options.input ?? '');
  let started;
  try {
    started = netns === undefined ? lean() : withNetns(netns, lean);
  } catch (err) {
    if (!(err instanceof SpawnError)) throw err;
    const hint = options.packageHint ? `install the ${options.packageHint} package` : undefined;
    return Promise.reject(new CommandFailedError(program, null, err.message, err.notFound ? hint : undefined));
  }
  if (started) {
    let timedOut = false;
    const result = collectSpawn(started, options.timeoutMs, () => (timedOut = true));
    return result.then((r) => {
      if (timedOut) throw new CommandFailedError(program, null, `timed out after ${options.timeoutMs} ms`);
      return r;
    });
  }
  return runForked(netns, program, args, options);
}

function runForked(netns: string | undefined, program: string, args: readonly string[], options: RunOptions): Promise<RunResult> {
  // node:child_process is required here, not at the top: it loads net and the stream modules, which a
  // standalone VERSION (this module is on its path for the netns checks) would otherwise pay for.
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { spawn } = require('node:child_process') as typeof ChildProcess;
  const start = () => spawn(program, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const child = netns === undefined ? start() : withNetns(netns, start);
  return new Promise((resolve, reject) => {
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    if (options.timeoutMs) {
      timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new CommandFailedError(program, null, `timed out after ${options.timeoutMs} ms`));
      }, options.timeoutMs);
    }
    child.stdout.on('data', (d: Buffer) => stdout.push(d));
    child.stderr.on('data', (d: Buffer) => stderr.push(d));
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      const hint = options.packageHint ? `install the ${options.packageHint} package` : undefined;
      const why = err.code === ENOENT ? `${program} not found in PATH` : err.message;
      reject(new CommandFailedError(program, null, why, hint));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(stdout).toString(),
        stderr: Buffer.concat(stderr).toString(),
      });
    });
    // A program that exits before reading its input makes the write fail with EPIPE; its exit code says why.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

/** Work on one netns queued in this process, by the namespace's identity (dev:inode), not its path. */
const queues = new Map<string, Promise<unknown>>();

/** Takes an exclusive flock on the open namespace file, polling (a blocking flock would stop the event loop). */
async function lockNetnsFd(fd: number, path: string, deadline: number, started: number, signal: AbortSignal | undefined): Promise<void> {
  const c = loadLibc();
  let wait = 2;
  for (;;) {
    if (signal?.aborted) throw new RequestAbandonedError(path, signal.reason);
    if (c.flock(fd, LOCK_EX | LOCK_NB) === 0) {
      // Abandoned while we waited: give the netns back untouched.
      if (signal?.aborted) throw new RequestAbandonedError(path, signal.reason);
      return;
    }
    // On an open nsfs fd, flock(LOCK_NB) fails only for "held" (EWOULDBLOCK), EINTR or a transient ENOLCK;
    // none is worth failing an ADD for, so every failure waits and retries until the deadline, which names
    // the last errno if it was not "held".
    const code = errno();
    if (Date.now() >= deadline) {
      if (code !== EWOULDBLOCK && code !== EINTR) throw new MeshCniError(`flock(${path}) kept failing with errno ${code} for ${Date.now() - started} ms`);
      throw new NetnsBusyError(path, Date.now() - started);
    }
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 50);
  }
}

export interface NetnsLockOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Let `path` be this process's own netns (refused otherwise: for the agent it is the node's). */
  allowOwn?: boolean;
}

/**
 * Runs `fn` with the netns to itself: queued behind other work on the same namespace in this process, and
 * holding an exclusive flock on the namespace file against other processes (standalone plugins, the CLI,
 * another agent). The lock lives with the namespace itself: every path to it (/var/run/netns/NAME,
 * /proc/PID/ns/net) opens the one nsfs inode, and flock conflicts per inode, so two requests naming the same
 * netns by different paths still exclude each other. The kernel drops the lock when the fd closes or the
 * process dies, so nothing stale is ever left, and no state directory is needed.
 *
 * `path` is opened once, here. That one descriptor is checked (a namespace file, and not our own unless
 * `allowOwn`), keys the queue, takes the flock, and is what `fn` works in: `fn` gets a name for it
 * (/proc/self/fd/N) to hand to `withNetns`, `run` and the rest, which enter that descriptor and never resolve
 * `path` again. A path that is resolved twice can name two namespaces (a symlink flipped in between), and the
 * second could be the node's.
 *
 * `signal`: a request abandoned before it holds the lock never runs `fn` (RequestAbandonedError); once
 * `fn` has started it runs to its end (see docs/cancellation.md for why finishing, not undoing).
 */
export async function withNetnsLock<T>(path: string, fn: (netns: string) => Promise<T>, options: NetnsLockOptions = {}): Promise<T> {
  const fd = openNetns(path);
  let key: string;
  try {
    if (!options.allowOwn && isOwnNetnsFd(fd)) throw new OwnNetnsError(path);
    key = netnsKey(fs.fstatSync(fd));
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  const started = Date.now();
  const deadline = started + (options.timeoutMs ?? 60_000);
  const before = queues.get(key) ?? Promise.resolve();
  const mine = before.then(async () => {
    await lockNetnsFd(fd, path, deadline, started, options.signal);
    const name = `/proc/self/fd/${fd}`;
    held.set(name, { fd, path });
    try {
      return await fn(name);
    } finally {
      held.delete(name);
    }
  });
  // Closed once this request is done, whichever way: the flock goes with it.
  const tail = mine.then(
    () => fs.closeSync(fd),
    () => fs.closeSync(fd),
  );
  queues.set(key, tail);
  void tail.then(() => {
    if (queues.get(key) === tail) queues.delete(key);
  });
  return mine;
}
