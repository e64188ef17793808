/**
 * Prepared C calls (ffi-call.ts) give what ffi-napi's own functions give, for every type the native seam
 * uses, against the real libc: numbers of each width, strings both ways (UTF-8, NULL), Buffers as pointers
 * the kernel writes into, addresses as numbers, errno after a failed call; and a type they do not prepare
 * still works, through ffi-napi.
 */
import * as fs from 'node:fs';
import test from 'ava';
import { bindLibrary, lastErrno, preparedCallsAvailable, type FunctionSpec } from '../../src/netns/ffi-call';
import { AF_NETLINK, NETLINK_NETFILTER, SOCK_CLOEXEC, SOCK_RAW, SOL_SOCKET } from '../../src/netns/native';

interface Calls {
  fcntl(fd: number, cmd: number, arg: number): number;
  strlen(s: string | null): number;
  labs(v: number): number;
  strerror(code: number): string | null;
  getenv(name: string): string | null;
  socket(domain: number, type: number, protocol: number): number;
  getsockopt(fd: number, level: number, name: number, value: Buffer | null, length: Buffer | null): number;
  memcpy(target: Buffer, source: number, length: number): number;
  strdup(s: string): number;
  free(address: number): void;
  close(fd: number): number;
}

const SPEC: Record<keyof Calls, FunctionSpec> = {
  fcntl: ['int', ['int', 'int', 'int']],
  strlen: ['size_t', ['string']],
  labs: ['long', ['long']],
  strerror: ['string', ['int']],
  getenv: ['string', ['string']],
  socket: ['int', ['int', 'int', 'int']],
  getsockopt: ['int', ['int', 'int', 'int', 'pointer', 'pointer']],
  memcpy: ['address', ['pointer', 'address', 'size_t']],
  strdup: ['address', ['string']],
  free: ['void', ['address']],
  close: ['int', ['int']],
};

const F_GETFD = 1;
const FD_CLOEXEC = 1;
const SO_TYPE = 3;
const SO_PROTOCOL = 38;
const EBADF = 9;

/** An int socket option, or undefined when getsockopt fails. */
function intOption(c: Calls, fd: number, name: number): number | undefined {
  const value = Buffer.alloc(4);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(4);
  return c.getsockopt(fd, SOL_SOCKET, name, value, length) === 0 ? value.readInt32LE(0) : undefined;
}

test('prepared calls answer as ffi-napi does, for every type the native seam uses', (t) => {
  t.true(preparedCallsAvailable(), 'ffi-napi no longer exposes ffi_call: every call pays its full cost again');
  const fast = bindLibrary<Calls>(null, SPEC);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const ffi = require('@2060.io/ffi-napi') as typeof import('@2060.io/ffi-napi');
  const slow = ffi.Library(null, Object.fromEntries(Object.entries(SPEC).map(([k, [r, a]]) => [k, [r === 'address' ? 'size_t' : r, a.map((x) => (x === 'address' ? 'size_t' : x))]])) as never) as unknown as Calls;

  const fd = fast.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  t.true(fd >= 0, `socket failed with errno ${lastErrno()}`);
  t.teardown(() => fs.closeSync(fd));
  for (const c of [fast, slow]) {
    t.is(c.fcntl(fd, F_GETFD, 0), FD_CLOEXEC);
    // The kernel writes into the Buffers passed as pointers.
    t.is(intOption(c, fd, SO_TYPE), SOCK_RAW);
    t.is(intOption(c, fd, SO_PROTOCOL), NETLINK_NETFILTER);
  }
  for (const s of ['', 'mesh-cni', 'héllo wörld ✓', 'x'.repeat(10_000)]) t.is(fast.strlen(s), slow.strlen(s), s.slice(0, 20));
  t.is(fast.strlen('héllo'), Buffer.byteLength('héllo'));
  for (const v of [0, -1, 5, -5_000_000_000_000, 2 ** 52]) t.is(fast.labs(v), slow.labs(v));
  t.is(fast.strerror(2), slow.strerror(2));
  t.is(fast.getenv('PATH'), process.env.PATH ?? null);
  t.is(fast.getenv('MESH_CNI_SURELY_UNSET_VARIABLE'), null);
  t.is(slow.getenv('MESH_CNI_SURELY_UNSET_VARIABLE'), null);

  // An address is a plain number that C can be handed back: strdup's copy, read back by memcpy, then freed.
  const address = fast.strdup('rules ✓');
  t.true(address > 0);
  const copy = Buffer.alloc(Buffer.byteLength('rules ✓'));
  t.is(fast.memcpy(copy, address, copy.length), ffiAddress(copy), 'memcpy returns its target');
  t.is(copy.toString('utf8'), 'rules ✓');
  fast.free(address);
});

/** The address of a Buffer's bytes, as ref-napi reports it. */
function ffiAddress(b: Buffer): number {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return (require('@2060.io/ref-napi') as typeof import('@2060.io/ref-napi')).address(b);
}

test('errno is what the failed call left, and wrong arguments are refused before any call', (t) => {
  const fast = bindLibrary<Calls>(null, SPEC);
  t.is(fast.close(-1), -1);
  t.is(lastErrno(), EBADF);
  t.is(fast.fcntl(-1, F_GETFD, 0), -1);
  t.is(lastErrno(), EBADF);
  t.throws(() => (fast.fcntl as (...a: number[]) => number)(1, 2), { instanceOf: TypeError, message: /expected 3 arguments, got 2/ });
  t.throws(() => fast.getsockopt(0, SOL_SOCKET, SO_TYPE, 'not a buffer' as unknown as Buffer, null), { instanceOf: TypeError, message: /Buffer or null/ });
  t.throws(() => fast.strlen(42 as unknown as string), { instanceOf: TypeError, message: /string or null/ });
});

test('a type that is not prepared is bound by ffi-napi, and a missing symbol is an error', (t) => {
  const lib = bindLibrary<{ fabs(v: number): number; strlen(s: string): number }>(null, { fabs: ['double', ['double']] as unknown as FunctionSpec, strlen: ['size_t', ['string']] });
  t.is(lib.fabs(-2.5), 2.5);
  t.is(lib.strlen('abc'), 3);
  t.throws(() => bindLibrary(null, { mesh_cni_no_such_symbol: ['int', []] }), { message: /mesh_cni_no_such_symbol/ });
});
