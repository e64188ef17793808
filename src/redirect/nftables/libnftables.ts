/**
 * nftables in-process: libnftables, the library `nft` itself is a thin wrapper of, bound through
 * koffi and loaded on first use (only when the nftables backend runs, so nothing else pays for
 * it). Commands are nft script text, the same the process path feeds `nft -f -`, and the answers are nft's own
 * output and error text.
 *
 * Where a call's time goes (measured against libnftables 1.0.6 in fresh netns): `nft_ctx_new` is ~0.1 ms
 * (it opens one netfilter netlink socket, in the netns current at that moment, and reads the small
 * /etc/iproute2 tables), the transaction ~1.3 ms, a JSON listing ~0.8 ms, and `nft_ctx_free` 9–14 ms. That
 * last one is the kernel, not the library: closing an nfnetlink socket runs nf_tables' release notifier,
 * which waits for the pending transaction-destroy work, an RCU grace period, whenever any transaction
 * deleted something (the replacing script does: it first deletes our tables; the fresh sandbox's script
 * does not, but the list is global, so another netns's deletes make our close wait too). An `nft -f`
 * process pays the same wait when it exits. So a context is made inside the pod's netns for each call (a reused one would
 * stay in the netns it was made in), and its socket is closed off the main thread: a second descriptor for
 * the socket is taken before `nft_ctx_free`, whose own close then only drops a reference, and that
 * descriptor is closed on libuv's thread pool (one at a time), where the wait blocks nobody.
 */
import * as fs from 'node:fs';
import { CommandFailedError } from '../../errors';
import { withNetns } from '../../netns';
import { koffi } from '../../netns/ffi';
import { tablesOf } from '../../netns/nfnetlink';
import { AF_NETLINK, loadLibc, MFD_CLOEXEC, NETLINK_NETFILTER, SOCK_CLOEXEC, SOCK_RAW, SOL_SOCKET } from '../../netns/native';

/** An opaque C pointer as koffi hands it over (null for NULL): the context is only ever passed back to the library. */
type Pointer = unknown;

interface Libnftables {
  nft_ctx_new(flags: number): Pointer;
  nft_ctx_free(ctx: Pointer): void;
  nft_run_cmd_from_buffer(ctx: Pointer, buf: string): number;
  nft_run_cmd_from_filename(ctx: Pointer, filename: string): number;
  nft_ctx_buffer_output(ctx: Pointer): number;
  nft_ctx_buffer_error(ctx: Pointer): number;
  nft_ctx_get_output_buffer(ctx: Pointer): string | null;
  nft_ctx_get_error_buffer(ctx: Pointer): string | null;
  nft_ctx_output_set_flags(ctx: Pointer, flags: number): void;
}

interface Libmnl {
  mnl_socket_get_fd(sock: Pointer): number;
}

interface Signals {
  sigfillset(set: Buffer): number;
  sigdelset(set: Buffer, signal: number): number;
  pthread_sigmask(how: number, set: Buffer | null, old: Buffer | null): number;
}

interface Loaded {
  nft: Libnftables;
  mnl: Libmnl;
  /** The pointer stored at `ptr` (its first pointer-sized field); null for NULL. */
  readPointer(ptr: Pointer): Pointer;
  signals: Signals;
  /** Every signal a process can block, less the ones a fault raises synchronously. */
  blocked: Buffer;
}

export const LIBNFTABLES = 'libnftables.so.1';
/** Where the library is, when not where the dynamic linker looks (`MESH_CNI_LIBNFTABLES=/opt/lib/libnftables.so.1`). */
export const LIBNFTABLES_ENV = 'MESH_CNI_LIBNFTABLES';

/** `MESH_CNI_NFTABLES=process` makes the nftables backend spawn `nft` even where the library loads; `library` refuses the fallback. */
export const NFTABLES_MODE_ENV = 'MESH_CNI_NFTABLES';
export type NftablesMode = 'auto' | 'library' | 'process';

export function nftablesModeFromEnv(env: NodeJS.ProcessEnv = process.env): NftablesMode {
  const v = env[NFTABLES_MODE_ENV];
  return v === 'process' || v === 'library' ? v : 'auto';
}

const NFT_CTX_DEFAULT = 0;
const NFT_CTX_OUTPUT_JSON = 1 << 4;

let loaded: Loaded | undefined;
let loadError: string | undefined;

/** The library, loaded once; undefined (with `libnftablesUnavailable()` saying why) when it cannot be. */
function load(): Loaded | undefined {
  if (loaded || loadError !== undefined) return loaded;
  try {
    const k = koffi();
    const lib = k.load(process.env[LIBNFTABLES_ENV] || LIBNFTABLES);
    const nft: Libnftables = {
      nft_ctx_new: lib.func('void *nft_ctx_new(uint32_t flags)'),
      nft_ctx_free: lib.func('void nft_ctx_free(void *ctx)'),
      nft_run_cmd_from_buffer: lib.func('int nft_run_cmd_from_buffer(void *ctx, const char *buf)'),
      nft_run_cmd_from_filename: lib.func('int nft_run_cmd_from_filename(void *ctx, const char *filename)'),
      nft_ctx_buffer_output: lib.func('int nft_ctx_buffer_output(void *ctx)'),
      nft_ctx_buffer_error: lib.func('int nft_ctx_buffer_error(void *ctx)'),
      nft_ctx_get_output_buffer: lib.func('const char *nft_ctx_get_output_buffer(void *ctx)'),
      nft_ctx_get_error_buffer: lib.func('const char *nft_ctx_get_error_buffer(void *ctx)'),
      nft_ctx_output_set_flags: lib.func('void nft_ctx_output_set_flags(void *ctx, unsigned int flags)'),
    };
    // libnftables links libmnl, so it is there whenever libnftables is.
    const mnl: Libmnl = { mnl_socket_get_fd: k.load('libmnl.so.0').func('int mnl_socket_get_fd(void *sock)') };
    const libc = k.load('libc.so.6');
    const signals: Signals = {
      sigfillset: libc.func('int sigfillset(void *set)'),
      sigdelset: libc.func('int sigdelset(void *set, int signum)'),
      pthread_sigmask: libc.func('int pthread_sigmask(int how, const void *set, void *oldset)'),
    };
    const blocked = Buffer.alloc(SIGSET_BYTES);
    signals.sigfillset(blocked);
    for (const fault of FAULT_SIGNALS) signals.sigdelset(blocked, fault);
    loaded = { nft, mnl, readPointer: (ptr) => k.decode(ptr, 'void *') as Pointer, signals, blocked };
  } catch (err) {
    loadError = `${process.env[LIBNFTABLES_ENV] || LIBNFTABLES} could not be loaded: ${(err as Error).message.split('\n')[0]}`;
  }
  return loaded;
}

/** Why the library cannot be used (undefined: it loads). Loads it to find out. */
export function libnftablesUnavailable(): string | undefined {
  load();
  return loadError;
}

export function libnftablesAvailable(): boolean {
  return load() !== undefined;
}

export interface NftCommand {
  /** nft script text: one or more commands, run as one transaction. */
  script: string;
  /** Output as nft's JSON (`nft -j`). */
  json?: boolean;
}

export interface NftCommandResult {
  ok: boolean;
  /** What `nft` would print on stdout. */
  output: string;
  /** What `nft` would print on stderr (the error text, with the offending line marked). */
  error: string;
}

/** Larger than glibc's sigset_t (128 bytes). */
const SIGSET_BYTES = 256;
const SIG_BLOCK = 0;
const SIG_SETMASK = 2;
/** SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV: raised by a fault in the calling thread, never blocked. */
const FAULT_SIGNALS = [4, 5, 7, 8, 11];
const savedMask = Buffer.alloc(SIGSET_BYTES);

const SO_PROTOCOL = 38;
const SO_DOMAIN = 39;
const F_DUPFD_CLOEXEC = 1030;

/** What stands for the script's file in nft's error locations (`<rules>:37:1-52: Error: ...`). */
export const SCRIPT_LABEL = '<rules>';

/**
 * Runs a multi-line script from a memfd rather than a buffer: libnftables 1.0.6 prints, for an error in a
 * buffer, the buffer's first line and no line number (erec.c treats a buffer as one command line), while for
 * a file it names the line and column and prints the offending line, as `nft -f -` does. Single-line
 * commands (the listings) go as a buffer. Where memfd_create is missing, the buffer is used.
 */
function runScript(l: Loaded, ctx: Pointer, script: string): { rc: number; label?: string } {
  if (!script.trimEnd().includes('\n')) return { rc: l.nft.nft_run_cmd_from_buffer(ctx, script) };
  const fd = loadLibc().memfd_create('mesh-cni-rules', MFD_CLOEXEC);
  if (fd < 0) return { rc: l.nft.nft_run_cmd_from_buffer(ctx, script) };
  try {
    fs.writeSync(fd, script);
    const path = `/proc/self/fd/${fd}`;
    return { rc: l.nft.nft_run_cmd_from_filename(ctx, path), label: path };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * libnftables ends the process (exit(), not an error) when it cannot open its netlink socket. The agent must
 * not die of that, so the same socket is opened first: if that fails, so would the library's. The socket then
 * serves the session's table listing (`NftTables`) and is closed with the session; one that never ran a
 * transaction closes at once.
 */
function netlinkOpens(): number | string {
  const fd = loadLibc().socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  return fd < 0 ? 'a netfilter netlink socket could not be opened in this network namespace' : fd;
}

function intSockopt(fd: number, name: number): number | undefined {
  const value = Buffer.alloc(4);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(4);
  return loadLibc().getsockopt(fd, SOL_SOCKET, name, value, length) === 0 ? value.readInt32LE(0) : undefined;
}

/**
 * A second descriptor for the context's netlink socket, so `nft_ctx_free` does not wait for the kernel (see
 * the module comment). The socket is `struct nft_ctx`'s first member (`struct mnl_socket *nf_sock`, the same
 * from 0.9 to 1.1); the descriptor found there is used only when the kernel confirms it is a netfilter
 * netlink socket. Anything else: undefined, and the context is freed the slow way.
 */
function secondDescriptor(l: Loaded, ctx: Pointer): number | undefined {
  const sock = l.readPointer(ctx);
  if (sock === null) return undefined;
  const fd = l.mnl.mnl_socket_get_fd(sock);
  if (fd < 0 || intSockopt(fd, SO_DOMAIN) !== AF_NETLINK || intSockopt(fd, SO_PROTOCOL) !== NETLINK_NETFILTER) return undefined;
  const dup = loadLibc().fcntl(fd, F_DUPFD_CLOEXEC, 0);
  return dup >= 0 ? dup : undefined;
}

/**
 * Descriptors waiting for their last close. They are closed one at a time, so the kernel's wait holds at most
 * one of libuv's four pool threads (the agent's file I/O needs the others); in a burst they queue up here
 * and, holding only a reference to a netns that is in use anyway, cost nothing.
 */
const toClose: number[] = [];
let closingNow = false;
const idleWaiters: Array<() => void> = [];

/** Resolves once every socket handed over for closing is closed. */
export function socketsClosed(): Promise<void> {
  return !closingNow && toClose.length === 0 ? Promise.resolve() : new Promise((resolve) => idleWaiters.push(resolve));
}

function closeNext(): void {
  const fd = toClose.shift();
  if (fd === undefined) {
    closingNow = false;
    for (const w of idleWaiters.splice(0)) w();
    return;
  }
  closingNow = true;
  fs.close(fd, closeNext);
}

function closeLater(fd: number): void {
  toClose.push(fd);
  if (!closingNow) closeNext();
}

/** Runs one nft command in the session's context; what `nftSession` hands its callback. */
export type NftRun = (command: NftCommand) => NftCommandResult;
/** The netns's nf_tables tables as `family:name`, read over netlink in the session (no nft cache, no parse). */
export type NftTables = () => Set<string>;

function runCommand(l: Loaded, ctx: Pointer, command: NftCommand): NftCommandResult {
  if (typeof command.script !== 'string') throw new TypeError('an nft command must be script text');
  l.nft.nft_ctx_output_set_flags(ctx, command.json ? NFT_CTX_OUTPUT_JSON : 0);
  const { rc, label } = runScript(l, ctx, command.script);
  // Each get_*_buffer call hands back what was written since the last one, so results never mix.
  const error = l.nft.nft_ctx_get_error_buffer(ctx) ?? '';
  return { ok: rc === 0, output: l.nft.nft_ctx_get_output_buffer(ctx) ?? '', error: label ? error.split(label).join(SCRIPT_LABEL) : error };
}

/**
 * Calls `session` inside the netns at `netns` (undefined: the current one) with one context, through which
 * it runs as many commands as it likes, each choosing the next by what the last one answered; returns what
 * `session` returns. Synchronous from entering the netns to leaving it (`session` must not be async), so
 * nothing else runs on the main thread meanwhile and no context outlives the call. Where no context can
 * be made there, every command answers with the reason.
 */
export function nftSession<T>(netns: string | undefined, session: (run: NftRun, tables: NftTables) => T): T {
  const l = load();
  if (!l) throw new CommandFailedError(LIBNFTABLES, null, loadError ?? 'not loaded', 'install the libnftables1 package');
  let second: number | undefined;
  // libnftables waits for the kernel's answers in select(), which a signal handler interrupts whatever
  // SA_RESTART says: nft then reports the transaction failed with EINTR ("Could not process rule:
  // Interrupted system call"), though the kernel may well have committed it. The agent gets signals at any
  // moment (SIGCHLD of the programs it runs, a profiler's SIGPROF): a burst of ADDs under one saw 5 in 400
  // fail so. So they wait, blocked on this thread, until the session is over, and are handled then.
  if (l.signals.pthread_sigmask(SIG_BLOCK, l.blocked, savedMask) !== 0) throw new Error('pthread_sigmask(SIG_BLOCK) failed');
  const work = (): T => {
    const probe = netlinkOpens();
    if (typeof probe === 'string') return session(() => ({ ok: false, output: '', error: probe }), () => {
      throw new Error(probe);
    });
    const tables = () => tablesOf(loadLibc(), probe, 1);
    try {
      const ctx = l.nft.nft_ctx_new(NFT_CTX_DEFAULT);
      if (ctx === null) return session(() => ({ ok: false, output: '', error: 'nft_ctx_new failed' }), tables);
      try {
        l.nft.nft_ctx_buffer_output(ctx);
        l.nft.nft_ctx_buffer_error(ctx);
        return session((command) => runCommand(l, ctx, command), tables);
      } finally {
        second = secondDescriptor(l, ctx);
        l.nft.nft_ctx_free(ctx);
      }
    } finally {
      fs.closeSync(probe);
    }
  };
  try {
    return netns === undefined ? work() : withNetns(netns, work);
  } finally {
    l.signals.pthread_sigmask(SIG_SETMASK, savedMask, null);
    if (second !== undefined) closeLater(second);
  }
}

/**
 * Runs `commands` in order in one session (`nftSession`), stopping at the first that fails; returns the
 * results of those that ran.
 */
export function runNft(netns: string | undefined, commands: readonly NftCommand[]): NftCommandResult[] {
  return nftSession(netns, (run) => {
    const results: NftCommandResult[] = [];
    for (const command of commands) {
      const result = run(command);
      results.push(result);
      if (!result.ok) break;
    }
    return results;
  });
}
