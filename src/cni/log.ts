/**
 * One JSON line per request, to the netconf's log file and to stderr. The line names the pod, command,
 * decision, duration and error — never tokens, kubeconfig contents or the netconf itself. Failing to write
 * the file is not fatal: logging must never fail a pod.
 *
 * Nor may it stall one. The file is written in the background, never on the event loop: a FIFO, a full disk
 * or a hung NFS mount as `log_file` used to block the agent's whole process in appendFileSync (every ADD
 * then timed out with 11, /healthz stopped answering). Now each file has one write in flight at most,
 * opened O_NONBLOCK (a FIFO without a reader fails at once instead of waiting), at most two files are
 * written at a time (a hung mount can hold only those two of libuv's threads), and a file that does not
 * keep up has its queue capped, the excess dropped: the stderr copy still reaches the runtime's log.
 *
 * A file stays open between writes (a few per file, at most MAX_OPEN_FILES files, closed after IDLE_CLOSE_MS
 * without lines): opening, creating the directory and closing for every batch tripled the work of each write.
 * Before each write the path is looked at again: when it names another file (logrotate moved ours away and
 * created a new one) or none (someone removed it), ours is closed and the path opened afresh, created if
 * need be, so lines never go on into a file nobody reads. A failed write closes the file; the next batch
 * opens it again.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import { dirname } from 'node:path';
import type { LogLevel } from './netconf';

export interface RequestLogLine {
  time: string;
  level: 'info' | 'warn' | 'error';
  command: string;
  containerId?: string;
  pod?: string;
  netns?: string;
  /** 'meshed', 'skipped', 'removed', 'checked', ... */
  decision?: string;
  /** `ambient` when the pod was meshed for ztunnel (absent: a sidecar pod) */
  dataplane?: 'ambient';
  reason?: string;
  source?: string;
  backend?: string;
  /** How the backend reached the kernel (nftables: libnftables in-process, or the nft program). */
  via?: string;
  rules?: number;
  durationMs: number;
  notes?: string[];
  error?: { code: number; msg: string };
}

const SEVERITY: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export function shouldLog(line: RequestLogLine, threshold: LogLevel): boolean {
  return SEVERITY[line.level] >= SEVERITY[threshold];
}

const MAX_WRITERS = 2;
const MAX_QUEUED_BYTES = 1024 * 1024;

interface FileQueue {
  chunks: string[];
  bytes: number;
  writing: boolean;
}

const queues = new Map<string, FileQueue>();
let writers = 0;
let droppedLines = 0;
const idleWaiters: Array<() => void> = [];

/** Lines dropped because their file did not keep up (or could not be written at all). */
export function droppedLogLines(): number {
  return droppedLines;
}

/** Log files kept open, and how long one stays open without lines. */
const MAX_OPEN_FILES = 8;
const IDLE_CLOSE_MS = 30_000;

interface OpenLog {
  handle: fsp.FileHandle;
  dev: number;
  ino: number;
  idle?: NodeJS.Timeout;
}

/** Open log files by path; only the pump (one write per file at a time) opens, uses and closes them. */
const openLogs = new Map<string, OpenLog>();

function closeLog(file: string): void {
  const open = openLogs.get(file);
  if (!open) return;
  openLogs.delete(file);
  clearTimeout(open.idle);
  void open.handle.close().catch(() => undefined);
}

async function openLog(file: string): Promise<OpenLog> {
  const flags = fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_NONBLOCK;
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(file, flags, 0o640);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await fsp.mkdir(dirname(file), { recursive: true, mode: 0o755 });
    handle = await fsp.open(file, flags, 0o640);
  }
  try {
    const st = await handle.stat();
    return { handle, dev: st.dev, ino: st.ino };
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
}

/** The open file for `file`, unless the path now names another file or none: then the path, opened again. */
async function currentLog(file: string): Promise<OpenLog> {
  const open = openLogs.get(file);
  if (open) {
    const now = await fsp.stat(file).catch(() => undefined);
    if (now && now.dev === open.dev && now.ino === open.ino) {
      // Most recently used last: the first one not being written is the one to close when too many are open.
      openLogs.delete(file);
      openLogs.set(file, open);
      return open;
    }
    closeLog(file);
  }
  if (openLogs.size >= MAX_OPEN_FILES) {
    const idle = [...openLogs.keys()].find((f) => !queues.get(f)?.writing);
    if (idle) closeLog(idle);
  }
  const fresh = await openLog(file);
  openLogs.set(file, fresh);
  return fresh;
}

async function appendInBackground(file: string, text: string): Promise<void> {
  const open = await currentLog(file);
  try {
    await open.handle.write(text);
  } catch (err) {
    closeLog(file);
    throw err;
  }
  clearTimeout(open.idle);
  open.idle = setTimeout(() => closeLog(file), IDLE_CLOSE_MS);
  open.idle.unref();
}

function pump(): void {
  for (const [file, q] of queues) {
    if (writers >= MAX_WRITERS) return;
    if (q.writing || q.chunks.length === 0) continue;
    const text = q.chunks.join('');
    q.chunks = [];
    q.bytes = 0;
    q.writing = true;
    writers++;
    appendInBackground(file, text)
      .catch(() => {
        // the stderr copy still reaches the runtime's log
        droppedLines += text.split('\n').length - 1;
      })
      .finally(() => {
        q.writing = false;
        writers--;
        if (q.chunks.length === 0) queues.delete(file);
        pump();
        if (writers === 0 && queues.size === 0) for (const wake of idleWaiters.splice(0)) wake();
      });
  }
}

/** Resolves once every queued line is written (or failed), or after `timeoutMs`: a process about to exit waits here. */
export function flushRequestLogs(timeoutMs: number): Promise<void> {
  if (writers === 0 && queues.size === 0) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    timer.unref();
    idleWaiters.push(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

let pumpScheduled = false;

/** Starts the writes once the current request has been answered (after this turn of the event loop). */
function schedulePump(): void {
  if (pumpScheduled) return;
  pumpScheduled = true;
  setImmediate(() => {
    pumpScheduled = false;
    pump();
  });
}

/** Queues the line for the file (best effort, in the background) and returns the text for stderr, or '' when filtered out. */
export function writeRequestLog(line: RequestLogLine, options: { logFile?: string; logLevel?: LogLevel }): string {
  if (!shouldLog(line, options.logLevel ?? 'info')) return '';
  const text = `${JSON.stringify(line)}\n`;
  if (options.logFile) {
    let q = queues.get(options.logFile);
    if (!q) queues.set(options.logFile, (q = { chunks: [], bytes: 0, writing: false }));
    if (q.bytes + text.length > MAX_QUEUED_BYTES) {
      droppedLines++;
    } else {
      q.chunks.push(text);
      q.bytes += text.length;
      schedulePump();
    }
  }
  return text;
}
