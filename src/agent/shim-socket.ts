/**
 * The framing between the native shim and the agent over a UNIX socket. Binary and length-prefixed so the C
 * side needs no JSON encoder; all integers are unsigned 32-bit big-endian.
 *
 *   request:  "MCQ1" u32 bodyLen | u32 envCount { u32 len, "NAME=VALUE" }* u32 stdinLen, stdin
 *   response: "MCR1" u32 bodyLen | u32 exitCode, u32 stdoutLen, stdout, u32 stderrLen, stderr
 *
 * One request and one response per connection. Sizes are bounded on both sides; only CNI_* variables are
 * carried (and the server drops anything else, whatever a client sends).
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import { CniCode, CniError, toCniError, FrameError } from '../errors';
import { MAX_ENV_BYTES, MAX_ENV_ENTRIES, MAX_STDIN_BYTES } from '../cni/request';
import type { CniInvocation, CniResponse } from '../cni/types';

export const REQUEST_MAGIC = 'MCQ1';
export const RESPONSE_MAGIC = 'MCR1';
export { MAX_ENV_BYTES, MAX_ENV_ENTRIES };
/** stdin may be one byte over the limit so the handler, not the framing, reports oversized stdin */
export const MAX_REQUEST_BODY = MAX_STDIN_BYTES + 1 + MAX_ENV_BYTES + 4 * (MAX_ENV_ENTRIES + 2);
export const MAX_RESPONSE_BODY = 4 * 1024 * 1024;
const HEADER = 8;

/** Answers that carry a CNI error: exit 1, the error JSON on stdout. */
function errorResponse(err: CniError): CniResponse {
  return { exitCode: 1, stdout: JSON.stringify(err.toJson('1.1.0')), stderr: '' };
}

export function isForwardedEnvName(name: string): boolean {
  return /^CNI_[A-Z0-9_]+$/.test(name);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function frame(magic: string, parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from(magic, 'latin1'), u32(body.length), body]);
}

export function encodeRequest(invocation: CniInvocation): Buffer {
  const entries = Object.entries(invocation.env).filter((e): e is [string, string] => e[1] !== undefined && isForwardedEnvName(e[0]));
  const parts: Buffer[] = [u32(entries.length)];
  for (const [name, value] of entries) {
    const text = Buffer.from(`${name}=${value}`, 'utf8');
    parts.push(u32(text.length), text);
  }
  parts.push(u32(invocation.stdin.length), invocation.stdin);
  return frame(REQUEST_MAGIC, parts);
}

export function encodeResponse(response: CniResponse): Buffer {
  const stdout = Buffer.from(response.stdout, 'utf8');
  const stderr = Buffer.from(response.stderr, 'utf8');
  return frame(RESPONSE_MAGIC, [u32(response.exitCode & 0xff), u32(stdout.length), stdout, u32(stderr.length), stderr]);
}

class Reader {
  private offset = 0;
  constructor(private readonly body: Buffer) {}
  u32(): number {
    if (this.offset + 4 > this.body.length) throw new FrameError('frame truncated');
    const n = this.body.readUInt32BE(this.offset);
    this.offset += 4;
    return n;
  }
  bytes(n: number): Buffer {
    if (this.offset + n > this.body.length) throw new FrameError('frame truncated');
    const b = this.body.subarray(this.offset, this.offset + n);
    this.offset += n;
    return b;
  }
  end(): void {
    if (this.offset !== this.body.length) throw new FrameError('trailing bytes after frame');
  }
}

export function decodeRequestBody(body: Buffer): CniInvocation {
  const r = new Reader(body);
  const count = r.u32();
  if (count > MAX_ENV_ENTRIES) throw new FrameError(`too many environment entries (${count})`);
  const env: Record<string, string> = {};
  let envBytes = 0;
  for (let i = 0; i < count; i++) {
    const len = r.u32();
    envBytes += len;
    if (envBytes > MAX_ENV_BYTES) throw new FrameError('environment too large');
    const text = r.bytes(len).toString('utf8');
    const eq = text.indexOf('=');
    if (eq <= 0) throw new FrameError('environment entry without NAME=');
    const name = text.slice(0, eq);
    if (isForwardedEnvName(name)) env[name] = text.slice(eq + 1);
  }
  const stdinLen = r.u32();
  if (stdinLen > MAX_STDIN_BYTES + 1) throw new FrameError('stdin too large');
  const stdin = Buffer.from(r.bytes(stdinLen));
  r.end();
  return { env, stdin };
}

export function decodeResponseBody(body: Buffer): CniResponse {
  const r = new Reader(body);
  const exitCode = r.u32();
  const stdout = r.bytes(r.u32()).toString('utf8');
  const stderr = r.bytes(r.u32()).toString('utf8');
  r.end();
  return { exitCode, stdout, stderr };
}

/** Reads exactly one frame from a socket: checks magic and bound before buffering the body. */
export function readFrame(socket: net.Socket, magic: string, maxBody: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    let expected: number | undefined;
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
    };
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (expected === undefined && buffered.length >= HEADER) {
        if (buffered.subarray(0, 4).toString('latin1') !== magic) return fail(new FrameError('bad frame magic'));
        expected = buffered.readUInt32BE(4);
        if (expected > maxBody) return fail(new FrameError(`frame of ${expected} bytes exceeds ${maxBody}`));
      }
      if (expected !== undefined && buffered.length >= HEADER + expected) {
        if (buffered.length > HEADER + expected) return fail(new FrameError('trailing bytes after frame'));
        cleanup();
        resolve(buffered.subarray(HEADER));
      }
    };
    const onEnd = () => fail(new FrameError('connection closed before a whole frame arrived'));
    const onError = (err: Error) => fail(err);
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
  });
}

/**
 * `signal` aborts when the request is abandoned: the shim went away (it timed out or was killed) or the
 * agent's own bound on the request passed. The handler must then not start on the netns (see dispatch).
 */
export type CniHandler = (invocation: CniInvocation, signal: AbortSignal) => Promise<CniResponse>;

export interface CniServer {
  server: net.Server;
  close(): Promise<void>;
}

/** A whole request frame must arrive within this (not per byte: a 1-byte drip must not hold a connection). */
export const FRAME_DEADLINE_MS = 10_000;
/** Connections served at once; more are closed at accept (the shim then runs standalone). */
export const MAX_CONNECTIONS = 128;

function removeStaleSocket(socketPath: string): Promise<void> {
  let isSocket = false;
  try {
    isSocket = lstatSync(socketPath).isSocket();
  } catch {
    return Promise.resolve();
  }
  if (!isSocket) return Promise.reject(new Error(`${socketPath} exists and is not a socket; refusing to replace it`));
  return new Promise((resolve, reject) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      reject(new Error(`${socketPath} is already served by another process`));
    });
    probe.once('error', () => {
      unlinkSync(socketPath);
      resolve();
    });
  });
}

export interface ServeOptions {
  /** Refuses a connection before reading it (e.g. a peer that is not root); returns the reason or undefined. */
  authorize?: (socket: net.Socket) => string | undefined;
  /** Called for every refused connection or malformed frame, with the reason. */
  onReject?: (reason: string) => void;
  /** Bound on one request's handling; past it the shim is answered with code 11 (try again). */
  handlerTimeoutMs?: number;
  /** Time for a whole request frame to arrive (default FRAME_DEADLINE_MS). */
  frameDeadlineMs?: number;
  /** Open connections at most (default MAX_CONNECTIONS). */
  maxConnections?: number;
}

/** Resolves after the event loop has polled for I/O once more (two check phases from now). */
function nextLoopTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
}

/** The answer when handling took longer than allowed: kubelet retries the sandbox. */
function timeoutResponse(ms: number): CniResponse {
  return errorResponse(new CniError(CniCode.TryAgainLater, `the agent did not finish within ${ms} ms; try again`));
}

async function handleBounded(handler: CniHandler, invocation: CniInvocation, timeoutMs: number | undefined, abandon: AbortController): Promise<CniResponse> {
  // The handler answers every failure itself; one that escapes it is a bug (999), unless it is a CniError.
  const work = handler(invocation, abandon.signal).catch((err: unknown): CniResponse => errorResponse(toCniError(err)));
  if (!timeoutMs) return work;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<CniResponse>((resolve) => {
    timer = setTimeout(() => {
      // The shim is told to try again, so this request's work must not go on to program the netns.
      abandon.abort(new Error(`not finished within ${timeoutMs} ms`));
      resolve(timeoutResponse(timeoutMs));
    }, timeoutMs);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The socket's directory must be ours alone: whoever can write it can unlink our socket and put their own
 * in its place, and then answer the shim. So it must be a real directory (not a symlink), owned by this
 * process's user, and writable by nobody else.
 */
export function checkSocketDir(dir: string): void {
  const st = lstatSync(dir);
  const uid = process.geteuid?.() ?? 0;
  if (!st.isDirectory()) throw new Error(`socket directory ${dir} is not a directory (a symlink?); refusing to serve there`);
  if (st.uid !== uid) throw new Error(`socket directory ${dir} is owned by uid ${st.uid}, not by us (uid ${uid}); refusing to serve there`);
  if ((st.mode & 0o022) !== 0) {
    throw new Error(`socket directory ${dir} is writable by others (mode ${(st.mode & 0o777).toString(8)}); refusing to serve there: chmod go-w it`);
  }
}

/**
 * Serves CNI requests on a UNIX socket only root can use (mode 0600; the umask closes the window between
 * bind and chmod). Requests are handled concurrently, each bounded in size (the framing) and time: the whole
 * frame within `frameDeadlineMs`, the handling within `handlerTimeoutMs`, and at most `maxConnections` open.
 */
export async function serveCni(socketPath: string, handler: CniHandler, options: ServeOptions = {}): Promise<CniServer> {
  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o755 });
  checkSocketDir(dirname(socketPath));
  await removeStaleSocket(socketPath);
  const frameDeadlineMs = options.frameDeadlineMs ?? FRAME_DEADLINE_MS;
  const server = net.createServer((socket) => {
    // A shim that went away must not take the agent with it (EPIPE/ECONNRESET on a late answer).
    socket.on('error', () => undefined);
    const refused = options.authorize?.(socket);
    if (refused) {
      options.onReject?.(refused);
      socket.destroy();
      return;
    }
    const abandon = new AbortController();
    // The shim never half-closes: end or close before our answer means it gave up on this request.
    const gone = () => abandon.abort(new Error('the shim closed the connection before the answer'));
    socket.once('end', gone);
    socket.once('close', gone);
    const frameTimer = setTimeout(() => {
      options.onReject?.('frame-deadline');
      socket.destroy();
    }, frameDeadlineMs);
    readFrame(socket, REQUEST_MAGIC, MAX_REQUEST_BODY)
      .then(async (body) => {
        clearTimeout(frameTimer);
        // A shim that gave up before we read its frame (the agent was stopped, or busy) closed the connection
        // already; libuv reports that EOF one loop turn after the data. Look once more before starting, so
        // such a request is abandoned before it begins rather than somewhere in the middle.
        await nextLoopTurn();
        const response = await handleBounded(handler, decodeRequestBody(body), options.handlerTimeoutMs, abandon);
        socket.off('end', gone);
        socket.end(encodeResponse(response));
      })
      .catch((err: Error) => {
        clearTimeout(frameTimer);
        options.onReject?.(err instanceof FrameError ? 'bad-frame' : 'io-error');
        socket.destroy();
      });
  });
  // Past this the kernel's accept is followed by an immediate close: bounded memory and fds, whatever connects.
  server.maxConnections = options.maxConnections ?? MAX_CONNECTIONS;
  const previousUmask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(previousUmask);
  }
  chmodSync(socketPath, 0o600);
  return {
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
      }),
  };
}

/** The shim's side, in TypeScript: for tests and for the CLI's status probe. */
export function callCniSocket(socketPath: string, invocation: CniInvocation, timeoutMs: number): Promise<CniResponse> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    socket.once('connect', () => {
      readFrame(socket, RESPONSE_MAGIC, MAX_RESPONSE_BODY)
        .then((body) => {
          socket.destroy();
          resolve(decodeResponseBody(body));
        })
        .catch((err: Error) => {
          socket.destroy();
          reject(err);
        });
      socket.write(encodeRequest(invocation));
    });
    socket.once('error', reject);
  });
}
