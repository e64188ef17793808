/**
 * The one native seam: the few libc calls Node does not expose, bound through koffi and loaded on first use
 * (the CLI's pure commands never load native code). koffi's calls cost well under a microsecond; the agent
 * makes a dozen per ADD on its one main thread (setns twice, flock, a netlink exchange), so that matters in a
 * burst. Buffers are passed as pointers to their bytes.
 */
import { koffi, O_CLOEXEC } from './ffi';

export interface Libc {
  setns(fd: number, nstype: number): number;
  unshare(flags: number): number;
  getsockopt(fd: number, level: number, name: number, value: Buffer, length: Buffer): number;
  flock(fd: number, operation: number): number;
  renameat2(olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number): number;
  /** Only in its three-int form (F_DUPFD_CLOEXEC, F_GETFD, ...). */
  fcntl(fd: number, cmd: number, arg: number): number;
  socket(domain: number, type: number, protocol: number): number;
  memfd_create(name: string, flags: number): number;
  send(fd: number, buf: Buffer, len: number, flags: number): number;
  recv(fd: number, buf: Buffer, len: number, flags: number): number;
  close(fd: number): number;
}

/** Linux's numbers for the calls above, shared by everything that uses them. */
export const AF_NETLINK = 16;
export const SOCK_RAW = 3;
/** SOCK_CLOEXEC is O_CLOEXEC's bit */
export const SOCK_CLOEXEC = O_CLOEXEC;
export const NETLINK_NETFILTER = 12;
export const SOL_SOCKET = 1;
export const MFD_CLOEXEC = 1;

let libc: Libc | undefined;

export function loadLibc(): Libc {
  if (!libc) {
    const lib = koffi().load('libc.so.6');
    libc = {
      setns: lib.func('int setns(int fd, int nstype)'),
      unshare: lib.func('int unshare(int flags)'),
      getsockopt: lib.func('int getsockopt(int fd, int level, int name, void *value, void *length)'),
      flock: lib.func('int flock(int fd, int operation)'),
      renameat2: lib.func('int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)'),
      fcntl: lib.func('int fcntl(int fd, int cmd, int arg)'),
      socket: lib.func('int socket(int domain, int type, int protocol)'),
      memfd_create: lib.func('int memfd_create(const char *name, unsigned int flags)'),
      send: lib.func('long send(int fd, const void *buf, size_t len, int flags)'),
      recv: lib.func('long recv(int fd, void *buf, size_t len, int flags)'),
      close: lib.func('int close(int fd)'),
    } as Libc;
  }
  return libc;
}

/** errno of the last failed call made through `loadLibc()`. */
export function errno(): number {
  return koffi().errno();
}

const SO_PEERCRED = 17;

/** The pid, uid and gid of the process at the other end of a connected UNIX socket (SO_PEERCRED). */
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } {
  const cred = Buffer.alloc(12);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(12);
  if (loadLibc().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, len) !== 0) {
    throw new Error(`getsockopt(SO_PEERCRED) failed with errno ${errno()}`);
  }
  return { pid: cred.readInt32LE(0), uid: cred.readUInt32LE(4), gid: cred.readUInt32LE(8) };
}

const AT_FDCWD = -100;
const RENAME_EXCHANGE = 2;

/**
 * Swaps two paths in one step (renameat2 RENAME_EXCHANGE): afterwards `a` names what `b` held and `b`
 * what `a` held. Returns false where the kernel or filesystem cannot (EINVAL, ENOSYS), so callers can fall
 * back to a plain rename; throws on any other failure.
 */
export function renameExchange(a: string, b: string): boolean {
  if (loadLibc().renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) === 0) return true;
  const code = errno();
  if (code === 22 || code === 38) return false;
  throw new Error(`renameat2(${a}, ${b}, RENAME_EXCHANGE) failed with errno ${code}`);
}
