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

async function appendInBackground(file: string, text: string): Promise<void> {
  await fsp.mkdir(dirname(file), { recursive: true, mode: 0o755 });
  const handle = await fsp.open(file, fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_NONBLOCK, 0o640);
  try {
    await handle.write(text);
  } finally {
    await handle.close();
  }
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
