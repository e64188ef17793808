/**
 * Waiting for a descriptor Node did not open to become readable or writable, without blocking the event loop.
 *
 * Node's `net` cannot carry what ztunnel's socket needs (SOCK_SEQPACKET, descriptors by SCM_RIGHTS), so those
 * sockets are ours (./seqpacket.ts) and so is knowing when they are ready. The running node binary exports its
 * libuv (`uv_poll_init`, `uv_poll_start`, ...), so a `uv_poll_t` on our descriptor joins Node's own loop: the
 * callback runs on the main thread in the loop turn the kernel reports the event, and an idle socket costs
 * nothing. Measured on this project's machine (bench/zds.ts, 500 round trips of a 2-byte record): 0.09 ms
 * median with uv_poll against 5.4 ms for a timer polling every 5 ms, and 2 ms of CPU against 60 ms over two
 * idle seconds. The timer is kept only for a runtime whose libuv symbols cannot be found, and says so.
 *
 * koffi's async calls were the other candidate: a blocking accept/recvmsg on libuv's thread pool would hold
 * one of its four threads for as long as the socket is idle (forever, for a listener), and the pool also
 * closes libnftables' sockets (../redirect/nftables/libnftables.ts): four idle ztunnel connections would
 * stall every nftables ADD.
 */
import { koffi } from './ffi';

export type Readiness = 'readable' | 'writable';

/** libuv's event bits (uv.h). */
const UV_READABLE = 1;
const UV_WRITABLE = 2;
/** UV_POLL in `uv_handle_type` (uv.h), to size the handle. */
const UV_POLL = 8;

interface Waiter {
  events: number;
  resolve(): void;
  reject(err: Error): void;
}

/** One descriptor's readiness; one per descriptor at most (libuv allows one poll handle per socket). */
export interface FdWatch {
  /** Resolves once the descriptor is ready for `what` (at once if it already is); rejects when the watch closes. */
  wait(what: Readiness): Promise<void>;
  /** Stops watching; pending waits reject. The descriptor itself is the caller's to close, after this. */
  close(): void;
}

interface UvPoll {
  loop: unknown;
  handleSize: number;
  init(loop: unknown, handle: Buffer, fd: number): number;
  start(handle: Buffer, events: number, cb: unknown): number;
  stop(handle: Buffer): number;
  close(handle: Buffer, cb: unknown): void;
  onEvent: unknown;
  onClose: unknown;
}

/** The watches by their handle's address: one registered koffi callback serves them all. */
const byHandle = new Map<bigint, UvWatch>();
/** Handles being closed, kept alive until libuv says it is done with their memory. */
const closing = new Map<bigint, Buffer>();

let uv: UvPoll | null | undefined;
let uvMissing: string | undefined;

function loadUv(): UvPoll | null {
  if (uv !== undefined) return uv;
  try {
    const k = koffi();
    const self = k.load(null as unknown as string);
    const pollCb = k.proto('void mesh_cni_uv_poll_cb(void *handle, int status, int events)');
    const closeCb = k.proto('void mesh_cni_uv_close_cb(void *handle)');
    const handleSize = Number(self.func('size_t uv_handle_size(int)')(UV_POLL));
    const onEvent = k.register((handle: unknown, status: number, events: number) => {
      byHandle.get(BigInt(k.address(handle)))?.fire(status, events);
    }, k.pointer(pollCb));
    const onClose = k.register((handle: unknown) => {
      closing.delete(BigInt(k.address(handle)));
    }, k.pointer(closeCb));
    uv = {
      loop: self.func('void *uv_default_loop(void)')(),
      handleSize,
      init: self.func('int uv_poll_init(void *loop, void *handle, int fd)'),
      start: self.func('int uv_poll_start(void *handle, int events, mesh_cni_uv_poll_cb *cb)'),
      stop: self.func('int uv_poll_stop(void *handle)'),
      close: self.func('void uv_close(void *handle, mesh_cni_uv_close_cb *cb)'),
      onEvent,
      onClose,
    };
  } catch (err) {
    uvMissing = (err as Error).message;
    uv = null;
  }
  return uv;
}

/** How readiness is learned in this process, and why (for logs and the bench). */
export function readinessVia(): string {
  return loadUv() ? 'uv_poll on the event loop' : `a 5 ms polling timer (node's libuv symbols not found: ${uvMissing})`;
}

const bit = (what: Readiness) => (what === 'readable' ? UV_READABLE : UV_WRITABLE);

class UvWatch implements FdWatch {
  private readonly handle: Buffer;
  private readonly key: bigint;
  private waiters: Waiter[] = [];
  private started = 0;
  private closed = false;

  constructor(
    private readonly u: UvPoll,
    fd: number,
  ) {
    this.handle = Buffer.alloc(u.handleSize);
    const rc = u.init(u.loop, this.handle, fd);
    if (rc !== 0) throw new Error(`uv_poll_init(${fd}) failed (${rc})`);
    this.key = BigInt(koffi().address(this.handle));
    byHandle.set(this.key, this);
  }

  wait(what: Readiness): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the descriptor is no longer watched'));
    return new Promise((resolve, reject) => {
      this.waiters.push({ events: bit(what), resolve, reject });
      this.rearm();
    });
  }

  /** Polls for exactly what is waited for; level-triggered, so nothing is lost between a wake-up and a re-arm. */
  private rearm(): void {
    const events = this.waiters.reduce((m, w) => m | w.events, 0);
    if (events === this.started) return;
    if (events === 0) this.u.stop(this.handle);
    else {
      const rc = this.u.start(this.handle, events, this.u.onEvent);
      if (rc !== 0) return this.fail(new Error(`uv_poll_start failed (${rc})`));
    }
    this.started = events;
  }

  fire(status: number, events: number): void {
    if (status < 0) return this.fail(new Error(`polling the descriptor failed (libuv status ${status})`));
    const ready = this.waiters.filter((w) => (w.events & events) !== 0);
    this.waiters = this.waiters.filter((w) => (w.events & events) === 0);
    this.rearm();
    for (const w of ready) w.resolve();
  }

  private fail(err: Error): void {
    const waiters = this.waiters;
    this.waiters = [];
    this.rearm();
    for (const w of waiters) w.reject(err);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.fail(new Error('the descriptor is no longer watched'));
    byHandle.delete(this.key);
    closing.set(this.key, this.handle);
    this.u.close(this.handle, this.u.onClose);
  }
}

interface PollLibc {
  poll(fds: Buffer, nfds: number, timeout: number): number;
}
let pollLibc: PollLibc | undefined;
const POLLIN = 1;
const POLLOUT = 4;
const POLL_INTERVAL_MS = 5;

/** The fallback: asks poll(2) with a zero timeout every few milliseconds while someone waits. */
class TimerWatch implements FdWatch {
  private closed = false;
  private timers = new Set<NodeJS.Timeout>();
  private pending = new Set<(err: Error) => void>();

  constructor(private readonly fd: number) {
    pollLibc ??= { poll: koffi().load('libc.so.6').func('int poll(void *fds, unsigned long nfds, int timeout)') };
  }

  wait(what: Readiness): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the descriptor is no longer watched'));
    const pfd = Buffer.alloc(8);
    pfd.writeInt32LE(this.fd, 0);
    pfd.writeInt16LE(what === 'readable' ? POLLIN : POLLOUT, 4);
    return new Promise((resolve, reject) => {
      this.pending.add(reject);
      const check = () => {
        if (this.closed) return;
        pfd.writeInt16LE(0, 6);
        if (pollLibc!.poll(pfd, 1, 0) > 0) {
          this.pending.delete(reject);
          return resolve();
        }
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          check();
        }, POLL_INTERVAL_MS);
        this.timers.add(timer);
      };
      check();
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const reject of this.pending) reject(new Error('the descriptor is no longer watched'));
    this.pending.clear();
  }
}

export type WatchVia = 'auto' | 'timer';

/** Watches `fd`; `via: 'timer'` forces the fallback (the bench compares both). */
export function watchFd(fd: number, via: WatchVia = 'auto'): FdWatch {
  const u = via === 'auto' ? loadUv() : null;
  return u ? new UvWatch(u, fd) : new TimerWatch(fd);
}
