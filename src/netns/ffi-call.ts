/**
 * C functions bound without ffi-napi's per-call cost. A function made by ffi-napi's `Library` allocates, on
 * every call, a Buffer for the result, one for the argument list and one per argument, each registered with
 * ref-napi's finalizers: about 27 µs of CPU for a trivial fcntl here, against about 1 µs for libffi's call
 * itself, and garbage for the GC besides. An ADD through the agent makes some twenty such calls (setns,
 * flock, the libnftables context, its socket), which came to about half a millisecond of the agent's CPU
 * per pod. A prepared function keeps its libffi call interface, its argument slots and its result slot for
 * its whole life and only writes the values into them: nothing is allocated per call (only a string
 * argument's bytes).
 *
 * It uses ffi-napi's own `ffi_call` binding (lib/bindings.js of the locked version); where that is not
 * there, or a type is not one of those below, the function is ffi-napi's as before, so nothing changes
 * but the cost. Not reentrant per function, which is fine: none of the C functions bound calls back into
 * JavaScript, so one call always ends before the next begins.
 *
 * Types, as ffi-napi spells them: `void` (result only); `int`, `uint`, `int32`, `uint32`, `short`,
 * `ushort`, `long`, `ulong`, `size_t`, `int64`, `uint64` (numbers); `pointer` (argument only: a Buffer,
 * passed as its address, or null); `string` (argument: a JS string passed as a NUL-terminated UTF-8 copy,
 * or null; result: a copy of the C string, or null); and `address`, a pointer as a plain number, for
 * handles that JavaScript only passes back (a library's context), so no Buffer is ever made for them.
 */
import type * as FfiNapi from '@2060.io/ffi-napi';
import type * as RefNapi from '@2060.io/ref-napi';

export type CType = 'void' | 'int' | 'uint' | 'int32' | 'uint32' | 'short' | 'ushort' | 'long' | 'ulong' | 'size_t' | 'int64' | 'uint64' | 'pointer' | 'string' | 'address';
export type FunctionSpec = readonly [CType, readonly CType[]];
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFunction = (...args: any[]) => any;

interface FfiBindings {
  ffi_call(cif: Buffer, fn: Buffer, result: Buffer, args: Buffer): void;
  StaticFunctions?: { _errno?: Buffer };
}

interface Loaded {
  ffi: typeof FfiNapi;
  ref: typeof RefNapi;
  bindings?: FfiBindings;
}

let loaded: Loaded | undefined;

function load(): Loaded {
  if (loaded) return loaded;
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const ffi = require('@2060.io/ffi-napi') as typeof FfiNapi;
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const ref = require('@2060.io/ref-napi') as typeof RefNapi;
  let bindings: FfiBindings | undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const b = require('@2060.io/ffi-napi/lib/bindings') as FfiBindings;
    if (typeof b.ffi_call === 'function' && typeof (ref as unknown as { address?: unknown }).address === 'function') bindings = b;
  } catch {
    bindings = undefined;
  }
  return (loaded = { ffi, ref, bindings });
}

/** Whether functions are prepared (false: ffi-napi's own are used). For tests and the status report. */
export function preparedCallsAvailable(): boolean {
  return load().bindings !== undefined;
}

const SLOT = 8;

/** ffi-napi's name for a type (ours differ only in `address`, a pointer-sized unsigned number). */
const ffiName = (t: CType): string => (t === 'address' ? 'size_t' : t);

type Writer = (slot: Buffer, offset: number, value: unknown, keep: unknown[]) => void;

function writerFor(t: CType, ref: typeof RefNapi): Writer | undefined {
  switch (t) {
    case 'int':
    case 'int32':
      return (s, o, v) => s.writeInt32LE(v as number, o);
    case 'uint':
    case 'uint32':
      return (s, o, v) => s.writeUInt32LE(v as number, o);
    case 'short':
      return (s, o, v) => s.writeInt16LE(v as number, o);
    case 'ushort':
      return (s, o, v) => s.writeUInt16LE(v as number, o);
    case 'long':
    case 'int64':
      return (s, o, v) => s.writeBigInt64LE(BigInt(v as number), o);
    case 'ulong':
    case 'size_t':
    case 'uint64':
    case 'address':
      return (s, o, v) => s.writeBigUInt64LE(BigInt(v as number), o);
    case 'pointer':
      return (s, o, v) => {
        if (v === null || v === undefined) return s.writeBigUInt64LE(0n, o);
        if (!Buffer.isBuffer(v)) throw new TypeError('a pointer argument must be a Buffer or null');
        s.writeBigUInt64LE(BigInt(ref.address(v)), o);
      };
    case 'string':
      return (s, o, v, keep) => {
        if (v === null || v === undefined) return s.writeBigUInt64LE(0n, o);
        if (typeof v !== 'string') throw new TypeError('a string argument must be a string or null');
        const bytes = Buffer.from(`${v}\0`, 'utf8');
        keep.push(bytes);
        s.writeBigUInt64LE(BigInt(ref.address(bytes)), o);
      };
    default:
      return undefined;
  }
}

type Reader = (result: Buffer) => unknown;

function readerFor(t: CType, readCString: (address: number) => string): Reader | undefined {
  switch (t) {
    case 'void':
      return () => undefined;
    // libffi widens a result narrower than a register to a whole ffi_arg; the low bytes hold the value.
    case 'int':
    case 'int32':
      return (r) => r.readInt32LE(0);
    case 'uint':
    case 'uint32':
      return (r) => r.readUInt32LE(0);
    case 'short':
      return (r) => r.readInt16LE(0);
    case 'ushort':
      return (r) => r.readUInt16LE(0);
    case 'long':
    case 'int64':
      return (r) => Number(r.readBigInt64LE(0));
    case 'ulong':
    case 'size_t':
    case 'uint64':
    case 'address':
      return (r) => Number(r.readBigUInt64LE(0));
    case 'string':
      return (r) => {
        const address = Number(r.readBigUInt64LE(0));
        return address === 0 ? null : readCString(address);
      };
    default:
      return undefined;
  }
}

/** A function that writes its arguments into fixed slots and calls `fn` through libffi; undefined if a type is not ours. */
function prepare(l: Loaded, fn: Buffer, [result, args]: FunctionSpec, readCString: (address: number) => string): AnyFunction | undefined {
  const bindings = l.bindings;
  if (!bindings) return undefined;
  const writers = args.map((t) => writerFor(t, l.ref));
  const reader = readerFor(result, readCString);
  if (!reader || writers.some((w) => !w)) return undefined;
  const cif = l.ffi.CIF(l.ref.coerceType(ffiName(result)), args.map((t) => l.ref.coerceType(ffiName(t))));
  const slots = Buffer.alloc(Math.max(1, args.length) * SLOT);
  const argv = Buffer.alloc(Math.max(1, args.length) * SLOT);
  for (let i = 0; i < args.length; i++) argv.writeBigUInt64LE(BigInt(l.ref.address(slots) + i * SLOT), i * SLOT);
  const out = Buffer.alloc(SLOT);
  const count = args.length;
  return function prepared(...values: unknown[]): unknown {
    if (values.length !== count) throw new TypeError(`expected ${count} arguments, got ${values.length}`);
    const keep: unknown[] = [];
    for (let i = 0; i < count; i++) writers[i]!(slots, i * SLOT, values[i], keep);
    bindings.ffi_call(cif, fn, out, argv);
    const value = reader(out);
    keep.length = 0;
    return value;
  };
}

/** strlen and memcpy, prepared, to copy a C string out by its address without making a Buffer for it. */
let stringReader: ((address: number) => string) | undefined;

function cStringReader(l: Loaded): (address: number) => string {
  if (stringReader) return stringReader;
  const libc = l.ffi.DynamicLibrary(null as unknown as string, l.ffi.DynamicLibrary.FLAGS.RTLD_NOW);
  const unused = () => {
    throw new Error('internal error: a C string was read before strlen was bound');
  };
  const strlen = prepare(l, libc.get('strlen'), ['size_t', ['address']], unused);
  const memcpy = prepare(l, libc.get('memcpy'), ['address', ['pointer', 'address', 'size_t']], unused);
  if (!strlen || !memcpy) throw new Error('internal error: strlen and memcpy could not be prepared');
  stringReader = (address) => {
    const length = strlen(address) as number;
    const bytes = Buffer.allocUnsafe(length);
    if (length > 0) memcpy(bytes, address, length);
    return bytes.toString('utf8');
  };
  return stringReader;
}

/**
 * Binds `functions` of the shared library `file` (null: the process itself, libc and all), as
 * `ffi.Library(file, functions)` would, each one prepared where it can be. Throws what ffi-napi throws for a
 * library or symbol that cannot be found.
 */
export function bindLibrary<T>(file: string | null, functions: Record<string, FunctionSpec>): T {
  const l = load();
  const lib: Record<string, AnyFunction> = {};
  const pending: Record<string, [string, string[]]> = {};
  // As ffi.Library: a name without `.so` gets it appended.
  const path = file && !file.includes('.so') ? `${file}.so` : file;
  let dl: FfiNapi.DynamicLibrary | undefined;
  for (const [name, spec] of Object.entries(functions)) {
    let fn: AnyFunction | undefined;
    if (l.bindings) {
      dl ??= l.ffi.DynamicLibrary((path ?? null) as string, l.ffi.DynamicLibrary.FLAGS.RTLD_NOW);
      const pointer = dl.get(name);
      if (l.ref.isNull(pointer)) throw new Error(`Library: "${file ?? 'the process'}" returned NULL function pointer for "${name}"`);
      fn = prepare(l, pointer, spec, cStringReader(l));
    }
    if (fn) lib[name] = fn;
    else pending[name] = [ffiName(spec[0]), spec[1].map(ffiName)];
  }
  if (Object.keys(pending).length > 0) Object.assign(lib, l.ffi.Library(file as string, pending as never));
  return lib as T;
}

let errnoFn: (() => number) | undefined;

/** errno as the last C call on this thread left it; prepared, so no allocation of ours runs in between. */
export function lastErrno(): number {
  if (!errnoFn) {
    const l = load();
    const pointer = l.bindings?.StaticFunctions?._errno;
    errnoFn = (pointer && (prepare(l, pointer, ['int', []], cStringReader(l)) as () => number)) || l.ffi.errno;
  }
  return errnoFn();
}
