/**
 * SOCK_SEQPACKET UNIX sockets that carry descriptors (SCM_RIGHTS): ztunnel's ZDS socket, which Node's `net`
 * cannot serve (it knows stream sockets only, and passes no descriptors). Every descriptor is non-blocking
 * (SOCK_NONBLOCK) and close-on-exec; a call that would block waits for readiness on the event loop
 * (./readiness.ts) and is tried again, so nothing here ever blocks the main thread.
 *
 * One record per send and per receive: a SEQPACKET socket keeps message boundaries, which is what ZDS relies
 * on (one protobuf message per record, no length prefix). The structures passed to the kernel (sockaddr_un,
 * msghdr, iovec, cmsghdr) are laid out by hand in Buffers for 64-bit Linux, whose layout they follow.
 */
import * as fs from 'node:fs';
import { MeshCniError, SocketClosedError, SocketTimeoutError } from '../errors';
import { koffi } from './ffi';
import { watchFd, type FdWatch, type WatchVia } from './readiness';

interface SocketLibc {
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  listen(fd: number, backlog: number): number;
  accept4(fd: number, addr: null, len: null, flags: number): number;
  connect(fd: number, addr: Buffer, len: number): number;
  sendmsg(fd: number, msg: Buffer, flags: number): number;
  recvmsg(fd: number, msg: Buffer, flags: number): number;
  close(fd: number): number;
}

const AF_UNIX = 1;
const SOCK_SEQPACKET = 5;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_TRUNC = 0x20;
const MSG_CTRUNC = 0x8;
const MSG_CMSG_CLOEXEC = 0x40000000;
const EINTR = 4;
const EAGAIN = 11;

export { SocketClosedError, SocketTimeoutError };

let libc: SocketLibc | undefined;
function sys(): SocketLibc {
  if (!libc) {
    if (process.platform !== 'linux' || !['x64', 'arm64'].includes(process.arch)) {
      throw new MeshCniError(`SOCK_SEQPACKET sockets are laid out for 64-bit Linux, not ${process.platform}/${process.arch}`);
    }
    const lib = koffi().load('libc.so.6');
    libc = {
      socket: lib.func('int socket(int domain, int type, int protocol)'),
      bind: lib.func('int bind(int fd, const void *addr, unsigned int len)'),
      listen: lib.func('int listen(int fd, int backlog)'),
      accept4: lib.func('int accept4(int fd, void *addr, void *len, int flags)'),
      connect: lib.func('int connect(int fd, const void *addr, unsigned int len)'),
      sendmsg: lib.func('long sendmsg(int fd, const void *msg, int flags)'),
      recvmsg: lib.func('long recvmsg(int fd, void *msg, int flags)'),
      close: lib.func('int close(int fd)'),
    } as SocketLibc;
  }
  return libc;
}

const errno = () => koffi().errno();

function fail(what: string, code: number, path?: string): MeshCniError {
  const where = path ? ` (${path})` : '';
  if (code === 32 || code === 104 || code === 107) return new SocketClosedError(`${what}${where}: the peer closed the connection (errno ${code})`);
  return new MeshCniError(`${what}${where} failed with errno ${code}`, { hint: code === 13 || code === 1 ? 'the socket is root only: run as root' : undefined });
}

/** sockaddr_un for a filesystem path (sun_path holds 107 bytes and a terminating NUL). */
function unixAddress(path: string): Buffer {
  const bytes = Buffer.from(path);
  if (bytes.length > 107) throw new MeshCniError(`socket path ${path} is longer than the 107 bytes a UNIX socket address holds`);
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  return addr;
}

function newSocket(): number {
  const fd = sys().socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw fail('socket(AF_UNIX, SOCK_SEQPACKET)', errno());
  return fd;
}

const address = (b: Buffer) => BigInt(koffi().address(b));
const CMSG_HEADER = 16;
const align8 = (n: number) => (n + 7) & ~7;

/** A msghdr with one iovec over `data` and, when given, a control buffer; the Buffers it points into are returned with it so they outlive the call. */
function messageHeader(data: Buffer, control: Buffer | undefined): { msg: Buffer; keep: Buffer[] } {
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(address(data), 0);
  iov.writeBigUInt64LE(BigInt(data.length), 8);
  const msg = Buffer.alloc(56);
  msg.writeBigUInt64LE(address(iov), 16);
  msg.writeBigUInt64LE(1n, 24);
  if (control) {
    msg.writeBigUInt64LE(address(control), 32);
    msg.writeBigUInt64LE(BigInt(control.length), 40);
  }
  return { msg, keep: [iov, data, ...(control ? [control] : [])] };
}

/** An SCM_RIGHTS control message carrying `fds`. */
function rightsMessage(fds: readonly number[]): Buffer {
  const control = Buffer.alloc(CMSG_HEADER + align8(fds.length * 4));
  control.writeBigUInt64LE(BigInt(CMSG_HEADER + fds.length * 4), 0);
  control.writeInt32LE(SOL_SOCKET, 8);
  control.writeInt32LE(SCM_RIGHTS, 12);
  fds.forEach((fd, i) => control.writeInt32LE(fd, CMSG_HEADER + 4 * i));
  return control;
}

/** The descriptors of every SCM_RIGHTS message in a received control buffer. */
function receivedRights(control: Buffer, length: number): number[] {
  const fds: number[] = [];
  let offset = 0;
  while (offset + CMSG_HEADER <= length) {
    const len = Number(control.readBigUInt64LE(offset));
    if (len < CMSG_HEADER) break;
    if (control.readInt32LE(offset + 8) === SOL_SOCKET && control.readInt32LE(offset + 12) === SCM_RIGHTS) {
      for (let p = offset + CMSG_HEADER; p + 4 <= offset + len; p += 4) fds.push(control.readInt32LE(p));
    }
    offset += align8(len);
  }
  return fds;
}

export interface Packet {
  data: Buffer;
  /** Descriptors that came with it (close-on-exec, now this process's to close). */
  fds: number[];
}

/** Waits on `watch` for `what`, rejecting with SocketTimeoutError once `deadline` (ms since epoch) passes. */
function waitUntil(watch: FdWatch, what: 'readable' | 'writable', deadline: number | undefined, doing: string): Promise<void> {
  if (deadline === undefined) return watch.wait(what);
  const left = deadline - Date.now();
  if (left <= 0) return Promise.reject(new SocketTimeoutError(`${doing}: nothing within the time allowed`));
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    watch.wait(what),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new SocketTimeoutError(`${doing}: nothing within ${Math.round(left)} ms`)), left);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** One connected SEQPACKET socket. */
export class SeqpacketSocket {
  private readonly watch: FdWatch;
  private closedHere = false;

  /** `via`: how readiness is learned (the bench compares the fallback timer with uv_poll). */
  constructor(
    readonly fd: number,
    via: WatchVia = 'auto',
  ) {
    this.watch = watchFd(fd, via);
  }

  get closed(): boolean {
    return this.closedHere;
  }

  /** Sends one record, with `fds` attached by SCM_RIGHTS (the kernel duplicates them; ours stay open). */
  async send(data: Uint8Array, fds: readonly number[] = [], timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const payload = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (;;) {
      if (this.closedHere) throw new SocketClosedError('send: the socket is closed');
      const { msg, keep } = messageHeader(payload, fds.length > 0 ? rightsMessage(fds) : undefined);
      const n = sys().sendmsg(this.fd, msg, MSG_DONTWAIT | MSG_NOSIGNAL);
      void keep;
      if (n >= 0) return;
      const code = errno();
      if (code === EINTR) continue;
      if (code !== EAGAIN) throw fail('sendmsg', code);
      await waitUntil(this.watch, 'writable', deadline, 'send');
    }
  }

  /**
   * Receives one record (up to `maxBytes`; a longer one is an error, never silently cut). Rejects with
   * SocketClosedError on EOF: a zero-length read is the peer's close (ZDS sends no empty record), and with
   * SocketTimeoutError when `timeoutMs` passes first.
   */
  async receive(options: { timeoutMs?: number; maxBytes?: number; maxFds?: number } = {}): Promise<Packet> {
    const deadline = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
    const data = Buffer.alloc(options.maxBytes ?? 16 * 1024);
    const control = Buffer.alloc(CMSG_HEADER + align8(4 * (options.maxFds ?? 4)));
    for (;;) {
      if (this.closedHere) throw new SocketClosedError('receive: the socket is closed');
      const { msg, keep } = messageHeader(data, control);
      const n = Number(sys().recvmsg(this.fd, msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
      void keep;
      if (n >= 0) {
        const fds = receivedRights(control, Number(msg.readBigUInt64LE(40)));
        const flags = msg.readInt32LE(48);
        if (n === 0 && fds.length === 0) throw new SocketClosedError('receive: the peer closed the connection');
        if (flags & (MSG_TRUNC | MSG_CTRUNC)) {
          for (const fd of fds) sys().close(fd);
          throw new MeshCniError(`receive: a record ${flags & MSG_TRUNC ? `longer than ${data.length} bytes` : 'with more descriptors than expected'} was cut`);
        }
        return { data: Buffer.from(data.subarray(0, n)), fds };
      }
      const code = errno();
      if (code === EINTR) continue;
      if (code !== EAGAIN) throw fail('recvmsg', code);
      await waitUntil(this.watch, 'readable', deadline, 'receive');
    }
  }

  /** Resolves when a record or the peer's close is waiting to be read (the agent's idle check on ztunnel). */
  readable(): Promise<void> {
    return this.watch.wait('readable');
  }

  close(): void {
    if (this.closedHere) return;
    this.closedHere = true;
    this.watch.close();
    sys().close(this.fd);
  }
}

/** A listening SEQPACKET socket at a filesystem path. */
export class SeqpacketListener {
  private readonly watch: FdWatch;
  private closedHere = false;
  private readonly inode: number;

  private constructor(
    readonly path: string,
    private readonly fd: number,
  ) {
    this.watch = watchFd(fd);
    this.inode = fs.statSync(path).ino;
  }

  /**
   * Listens at `path` with file mode `mode` (root only by default). A socket file left at the path by an
   * earlier process is replaced, as any UNIX socket server must (its listener died with that process).
   */
  static listen(path: string, options: { mode?: number; backlog?: number } = {}): SeqpacketListener {
    const addr = unixAddress(path);
    try {
      if (fs.lstatSync(path).isSocket()) fs.unlinkSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const fd = newSocket();
    try {
      if (sys().bind(fd, addr, addr.length) !== 0) throw fail('bind', errno(), path);
      fs.chmodSync(path, options.mode ?? 0o600);
      if (sys().listen(fd, options.backlog ?? 16) !== 0) throw fail('listen', errno(), path);
      return new SeqpacketListener(path, fd);
    } catch (err) {
      sys().close(fd);
      throw err;
    }
  }

  /** The next connection; rejects with SocketClosedError once the listener is closed. */
  async accept(): Promise<SeqpacketSocket> {
    for (;;) {
      if (this.closedHere) throw new SocketClosedError(`accept: ${this.path} is no longer listened on`);
      const fd = sys().accept4(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) return new SeqpacketSocket(fd);
      const code = errno();
      // EINTR; and ECONNABORTED/EPROTO: a client that gave up while queued, nothing wrong with the listener.
      if (code === EINTR || code === 103 || code === 71) continue;
      if (code !== EAGAIN) throw fail('accept4', code, this.path);
      try {
        await this.watch.wait('readable');
      } catch (err) {
        if (this.closedHere) throw new SocketClosedError(`accept: ${this.path} is no longer listened on`);
        throw err;
      }
    }
  }

  /** Stops listening and removes the socket file, unless another process has put its own there since. */
  close(): void {
    if (this.closedHere) return;
    this.closedHere = true;
    this.watch.close();
    sys().close(this.fd);
    try {
      if (fs.statSync(this.path).ino === this.inode) fs.unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

/** Connects to a SEQPACKET listener at `path` (the ztunnel side: tests and the stand-in). */
export function connectSeqpacket(path: string, via: WatchVia = 'auto'): SeqpacketSocket {
  const addr = unixAddress(path);
  const fd = newSocket();
  // A UNIX socket connect completes at once or fails (EAGAIN: the listener's backlog is full).
  if (sys().connect(fd, addr, addr.length) !== 0) {
    const code = errno();
    sys().close(fd);
    if (code === 2 || code === 111) throw new SocketClosedError(`connect(${path}): nobody listens there (errno ${code})`);
    throw fail('connect', code, path);
  }
  return new SeqpacketSocket(fd, via);
}
