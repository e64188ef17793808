/**
 * Starting a program without copying this process: posix_spawn(3) through the ffi seam.
 *
 * libuv starts every child with fork(), which copies the parent's page tables and then faults on every page
 * the parent writes before the child has exec'd: the cost grows with the parent's memory. Measured on a
 * loaded 2-core node, an iptables-restore forked from the agent (~170 MiB) took 16 ms where the same restore
 * forked from a 50 MiB process took 5 ms. glibc's posix_spawn clones with CLONE_VM | CLONE_VFORK: nothing is
 * copied, whatever the parent's size. The child still starts in the calling thread's network namespace, so
 * `withNetns(path, () => startSpawn(...))` places it in the pod's netns exactly as libuv's spawn does.
 *
 * stdin is an unnamed file holding the whole input (never a pipe the program may not read), stdout another
 * read once the program is gone, stderr a pipe: its end of file says the program exited, then waitpid collects it (libuv
 * only ever waits for the pids it started, so nobody else reaps ours). Signals are reset to their defaults
 * and unblocked in the child, as libuv does (Node ignores SIGPIPE; a child must not inherit that).
 *
 * When the library cannot be bound (no koffi), `startSpawn` returns undefined and callers use child_process.
 *
 * Waiting for the program has two forms (`setCollectMode`). The agent serves many requests at once, so it
 * watches stderr's end on the event loop, through node:net. The standalone plugin serves one request and has
 * nothing else to run meanwhile, so it waits in poll(2), through the same library: node:net would load node's
 * whole stream stack, several milliseconds of a process whose whole start is counted.
 */
import * as fs from 'node:fs';
import type * as Net from 'node:net';
import { MFD_CLOEXEC } from './native';
import { SpawnError } from '../errors';
import { EINTR, koffi, O_CLOEXEC } from './ffi';

interface SpawnLib {
  memfd_create(name: string, flags: number): number;
  pipe2(fds: Buffer, flags: number): number;
  posix_spawn_file_actions_init(actions: Buffer): number;
  posix_spawn_file_actions_adddup2(actions: Buffer, fd: number, newfd: number): number;
  posix_spawn_file_actions_destroy(actions: Buffer): number;
  posix_spawnattr_init(attr: Buffer): number;
  posix_spawnattr_setflags(attr: Buffer, flags: number): number;
  posix_spawnattr_setsigmask(attr: Buffer, set: Buffer): number;
  posix_spawnattr_setsigdefault(attr: Buffer, set: Buffer): number;
  sigemptyset(set: Buffer): number;
  sigfillset(set: Buffer): number;
  /** argv and envp: arrays of strings ending in null. */
  posix_spawnp(pid: Buffer, file: string, actions: Buffer, attr: Buffer, argv: Array<string | null>, envp: Array<string | null>): number;
  waitpid(pid: number, status: Buffer, options: number): number;
  poll(fds: Buffer, nfds: number, timeoutMs: number): number;
  close(fd: number): number;
}

interface Bound {
  lib: SpawnLib;
  attr: Buffer;
  errno: () => number;
}

const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const WNOHANG = 1;
/** Larger than glibc's posix_spawnattr_t (336 bytes), posix_spawn_file_actions_t (80) and sigset_t (128). */
const OPAQUE_BYTES = 1024;

let bound: Bound | null | undefined;

function bind(): Bound | null {
  if (bound !== undefined) return bound;
  if (process.env.MESH_CNI_SPAWN === 'fork') return (bound = null);
  try {
    const k = koffi();
    const libc = k.load('libc.so.6');
    const lib: SpawnLib = {
      memfd_create: libc.func('int memfd_create(const char *name, unsigned int flags)'),
      pipe2: libc.func('int pipe2(void *fds, int flags)'),
      posix_spawn_file_actions_init: libc.func('int posix_spawn_file_actions_init(void *actions)'),
      posix_spawn_file_actions_adddup2: libc.func('int posix_spawn_file_actions_adddup2(void *actions, int fd, int newfd)'),
      posix_spawn_file_actions_destroy: libc.func('int posix_spawn_file_actions_destroy(void *actions)'),
      posix_spawnattr_init: libc.func('int posix_spawnattr_init(void *attr)'),
      posix_spawnattr_setflags: libc.func('int posix_spawnattr_setflags(void *attr, short flags)'),
      posix_spawnattr_setsigmask: libc.func('int posix_spawnattr_setsigmask(void *attr, const void *set)'),
      posix_spawnattr_setsigdefault: libc.func('int posix_spawnattr_setsigdefault(void *attr, const void *set)'),
      sigemptyset: libc.func('int sigemptyset(void *set)'),
      sigfillset: libc.func('int sigfillset(void *set)'),
      posix_spawnp: libc.func('int posix_spawnp(void *pid, const char *file, const void *actions, const void *attr, const char **argv, const char **envp)'),
      waitpid: libc.func('int waitpid(int pid, void *status, int options)'),
      poll: libc.func('int poll(void *fds, unsigned long nfds, int timeout)'),
      close: libc.func('int close(int fd)'),
    };
    // One attribute object for every spawn: default dispositions for every signal, nothing blocked.
    const attr = Buffer.alloc(OPAQUE_BYTES);
    const none = Buffer.alloc(OPAQUE_BYTES);
    const all = Buffer.alloc(OPAQUE_BYTES);
    if (lib.posix_spawnattr_init(attr) !== 0 || lib.sigemptyset(none) !== 0 || lib.sigfillset(all) !== 0) return (bound = null);
    lib.posix_spawnattr_setsigmask(attr, none);
    lib.posix_spawnattr_setsigdefault(attr, all);
    lib.posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    bound = { lib, attr, errno: () => k.errno() };
  } catch {
    bound = null;
  }
  return bound;
}

/** A program started by `startSpawn`, not yet collected. */
export interface SpawnedProgram {
  pid: number;
  program: string;
  stdoutFd: number;
  stderrFd: number;
}

/**
 * O_TMPFILE | O_DIRECTORY, by architecture (O_DIRECTORY differs): an unnamed file opened by Node itself, with
 * memfd_create as the fallback where no directory takes O_TMPFILE.
 */
const O_TMPFILE = process.arch === 'x64' ? 0o20200000 : process.arch === 'arm64' ? 0o20040000 : undefined;
let tmpfileDir: string | null | undefined = O_TMPFILE === undefined ? null : undefined;

function unnamedFile(b: Bound, name: string): number {
  if (tmpfileDir !== null) {
    for (const dir of tmpfileDir ? [tmpfileDir] : ['/dev/shm', '/tmp']) {
      try {
        const fd = fs.openSync(dir, O_TMPFILE! | fs.constants.O_RDWR, 0o600);
        tmpfileDir = dir;
        return fd;
      } catch {
        // no such directory, or a filesystem without O_TMPFILE: the next, then memfd
      }
    }
    tmpfileDir = null;
  }
  const fd = b.lib.memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) throw new Error(`memfd_create failed with errno ${b.errno()}`);
  return fd;
}

function fileWith(b: Bound, name: string, content: string): number {
  const fd = unnamedFile(b, name);
  // Written at offset 0 with pwrite, so the shared file offset the child reads from stays at the start.
  if (content !== '') fs.writeSync(fd, content, 0, 'utf8');
  return fd;
}

/**
 * Starts `program args...` (looked up in PATH) in the calling thread's namespaces, `input` on its stdin.
 * Synchronous, so it can run inside withNetns. `env` replaces this process's environment (PATH is still
 * searched in ours, as execvp does). Returns undefined when posix_spawn is not available here;
 * throws SpawnError when the program cannot be started.
 */
export function startSpawn(program: string, args: readonly string[], input: string, env?: Readonly<Record<string, string>>): SpawnedProgram | undefined {
  const b = bind();
  if (!b) return undefined;
  const { lib } = b;
  const stdinFd = fileWith(b, 'mesh-cni-stdin', input);
  let stdoutFd = -1;
  let pipeRead = -1;
  let pipeWrite = -1;
  const actions = Buffer.alloc(OPAQUE_BYTES);
  let actionsReady = false;
  try {
    stdoutFd = fileWith(b, 'mesh-cni-stdout', '');
    const fds = Buffer.alloc(8);
    if (lib.pipe2(fds, O_CLOEXEC) !== 0) throw new Error(`pipe2 failed with errno ${b.errno()}`);
    pipeRead = fds.readInt32LE(0);
    pipeWrite = fds.readInt32LE(4);
    if (lib.posix_spawn_file_actions_init(actions) !== 0) throw new Error('posix_spawn_file_actions_init failed');
    actionsReady = true;
    // dup2 onto 0, 1, 2 clears close-on-exec there; every other descriptor of ours is close-on-exec.
    for (const [fd, target] of [
      [stdinFd, 0],
      [stdoutFd, 1],
      [pipeWrite, 2],
    ] as const) {
      if (lib.posix_spawn_file_actions_adddup2(actions, fd, target) !== 0) throw new Error('posix_spawn_file_actions_adddup2 failed');
    }
    // process.env is the environment as setenv(3) left it, which is what `environ` would hold.
    const envp = [...Object.entries(env ?? process.env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`])), null];
    const pid = Buffer.alloc(4);
    const rc = lib.posix_spawnp(pid, program, actions, b.attr, [program, ...args, null], envp);
    if (rc !== 0) throw new SpawnError(program, rc);
    const started: SpawnedProgram = { pid: pid.readInt32LE(0), program, stdoutFd, stderrFd: pipeRead };
    stdoutFd = -1;
    pipeRead = -1;
    return started;
  } finally {
    if (actionsReady) lib.posix_spawn_file_actions_destroy(actions);
    for (const fd of [stdinFd, stdoutFd, pipeRead, pipeWrite]) if (fd >= 0) fs.closeSync(fd);
  }
}

export interface SpawnResult {
  /** the exit code, or 128 when a signal ended the program (as `run` has always reported it) */
  code: number;
  stdout: string;
  stderr: string;
}

/** The exit status of `pid` once it is a zombie; undefined while it still runs. */
function reap(b: Bound, pid: number): number | undefined {
  const status = Buffer.alloc(4);
  for (;;) {
    const r = b.lib.waitpid(pid, status, WNOHANG);
    if (r === pid) {
      const s = status.readInt32LE(0);
      return (s & 0x7f) === 0 ? (s >> 8) & 0xff : 128;
    }
    if (r === 0) return undefined;
    if (b.errno() === EINTR) continue;
    // ECHILD: not ours to wait for (cannot happen for a pid we started); report a failure, not success.
    return 1;
  }
}

function readMemfd(fd: number): string {
  const size = fs.fstatSync(fd).size;
  const buffer = Buffer.alloc(size);
  let read = 0;
  while (read < size) read += fs.readSync(fd, buffer, read, size - read, read);
  return buffer.toString();
}

export type CollectMode = 'event-loop' | 'blocking';
let collectMode: CollectMode = 'event-loop';

/**
 * How `collectSpawn` waits (see the module comment). `blocking` holds the main thread until the program ends
 * or its timeout: only for a process that serves one request, never for the agent.
 */
export function setCollectMode(mode: CollectMode): void {
  collectMode = mode;
}

const POLLIN = 0x001;

function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** One millisecond's sleep of the main thread (nothing else runs in it while a program is collected this way). */
function sleepOneMs(): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
}

/**
 * `collectSpawn` for the blocking mode: stderr read as poll(2) says it is readable, until its end of file
 * (the program exited) or the deadline; then the program is reaped, SIGKILLed first if it ran past the deadline.
 */
function collectBlocking(b: Bound, child: SpawnedProgram, timeoutMs: number | undefined, onTimeout: () => void): SpawnResult {
  const deadline = timeoutMs ? Date.now() + timeoutMs : Infinity;
  const stderr: Buffer[] = [];
  const chunk = Buffer.alloc(64 * 1024);
  const pollfd = Buffer.alloc(8);
  let timedOut = false;
  const expire = () => {
    timedOut = true;
    kill(child.pid);
    onTimeout();
  };
  try {
    for (;;) {
      const left = deadline === Infinity ? -1 : Math.max(0, Math.min(deadline - Date.now(), 0x7fffffff));
      pollfd.writeInt32LE(child.stderrFd, 0);
      pollfd.writeInt16LE(POLLIN, 4);
      pollfd.writeInt16LE(0, 6);
      if (b.lib.poll(pollfd, 1, left) === 0) {
        expire();
        break;
      }
      // Readable, hung up, or poll itself failed (EINTR or worse): a read tells, blocking until there is
      // something to read (0 is the end of file).
      let n: number;
      try {
        n = fs.readSync(child.stderrFd, chunk, 0, chunk.length, null);
      } catch {
        n = 0;
      }
      if (n === 0) break;
      stderr.push(Buffer.from(chunk.subarray(0, n)));
    }
  } finally {
    fs.closeSync(child.stderrFd);
  }
  // End of file comes as the program exits; the zombie follows within moments.
  let code = reap(b, child.pid);
  while (code === undefined) {
    if (!timedOut && Date.now() >= deadline) expire();
    sleepOneMs();
    code = reap(b, child.pid);
  }
  let stdout = '';
  try {
    stdout = readMemfd(child.stdoutFd);
  } finally {
    fs.closeSync(child.stdoutFd);
  }
  return { code, stdout, stderr: Buffer.concat(stderr).toString() };
}

/**
 * Waits for a program from `startSpawn` to end and collects its output. `onTimeout` is called (and the
 * program SIGKILLed) when it runs past `timeoutMs`; the program is still collected afterwards.
 */
export function collectSpawn(child: SpawnedProgram, timeoutMs: number | undefined, onTimeout: () => void): Promise<SpawnResult> {
  const b = bind()!;
  if (collectMode === 'blocking') return Promise.resolve(collectBlocking(b, child, timeoutMs, onTimeout));
  return new Promise((resolve) => {
    const stderr: Buffer[] = [];
    // node:net is required here, not at the top: it loads the stream modules, which a standalone VERSION
    // (this module is on its path) would otherwise pay for.
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const net = require('node:net') as typeof Net;
    const pipe = new net.Socket({ fd: child.stderrFd, readable: true, writable: false });
    let timer: NodeJS.Timeout | undefined;
    let finished = false;
    const finish = (code: number) => {
      finished = true;
      if (timer) clearTimeout(timer);
      pipe.destroy();
      let stdout = '';
      try {
        stdout = readMemfd(child.stdoutFd);
      } finally {
        fs.closeSync(child.stdoutFd);
      }
      resolve({ code, stdout, stderr: Buffer.concat(stderr).toString() });
    };
    // End of file on stderr comes as the program exits; the zombie follows within moments.
    let waits = 0;
    const collect = () => {
      if (finished) return;
      const code = reap(b, child.pid);
      if (code !== undefined) return finish(code);
      waits++;
      if (waits < 20) setImmediate(collect);
      else setTimeout(collect, Math.min(waits - 19, 20));
    };
    if (timeoutMs) {
      timer = setTimeout(() => {
        timer = undefined;
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
        onTimeout();
        // A grandchild may hold stderr open: collect the program whether or not the pipe ends.
        collect();
      }, timeoutMs);
    }
    pipe.on('data', (d: Buffer) => stderr.push(d));
    pipe.on('error', () => undefined);
    pipe.on('close', collect);
  });
}
