#!/usr/bin/env node
/**
 * The standalone plugin process: what the shim runs with node when the agent's socket is not there. Reads
 * stdin (bounded), takes the environment, runs one command, prints the answer and exits with its code.
 * It loads no Kubernetes client: pod lookups use the minimal kubeconfig reader and node's https.
 */
import { fstatSync, readSync, writeSync } from 'node:fs';
import { runCni } from '../cni/dispatch';
import { CniCode, CniError } from '../errors';
import { flushRequestLogs } from '../cni/log';
import { MAX_STDIN_BYTES } from '../cni/request';
import { setCollectMode } from '../netns';

/**
 * A terminal (or another character device, such as /dev/null, which reads as empty anyway) on stdin means no
 * netconf is coming. fstat rather than node:tty's isatty: requiring node:tty loads net and the stream modules,
 * several milliseconds of a VERSION whose whole start is counted. A closed stdin is left to readSync to report.
 */
function isTerminalLike(fd: number): boolean {
  try {
    return fstatSync(fd).isCharacterDevice();
  } catch {
    return false;
  }
}

/**
 * stdin and stdout through plain file descriptor calls: the process.stdin/stdout streams cost several
 * milliseconds to set up, on a path where the whole start is counted.
 */
function readStdinBounded(limit: number): Buffer {
  if (isTerminalLike(0)) return Buffer.alloc(0);
  // One byte past the limit is enough for parseRequest to report it; reading further would waste memory.
  const buffer = Buffer.alloc(limit + 1);
  let size = 0;
  for (;;) {
    let n: number;
    try {
      n = readSync(0, buffer, size, buffer.length - size, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        // A non-blocking pipe with nothing in it yet: wait a moment rather than spin.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
        continue;
      }
      if (code === 'EOF' || (code === 'EISDIR' && size === 0)) break;
      throw err;
    }
    if (n === 0) break;
    size += n;
    if (size > limit) break;
  }
  return buffer.subarray(0, size);
}

function writeAll(fd: number, text: string): void {
  const data = Buffer.from(text);
  for (let off = 0; off < data.length; ) off += writeSync(fd, data, off);
}

function lookupTimeoutFromEnv(): number | undefined {
  const raw = process.env.MESH_CNI_POD_LOOKUP_TIMEOUT_MS;
  const n = raw === undefined ? NaN : Number(raw);
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}

async function main(): Promise<void> {
  // One request, nothing else to run meanwhile: programs are waited for in poll(2), not on the event loop (netns/spawn.ts).
  setCollectMode('blocking');
  let stdin: Buffer;
  try {
    stdin = readStdinBounded(MAX_STDIN_BYTES);
  } catch (err) {
    writeAll(1, JSON.stringify(new CniError(CniCode.IoFailure, `error reading from stdin: ${(err as Error).message}`).toJson('1.1.0')));
    process.exit(1);
  }
  // Until the netconf (and its log_file) is parsed, lines go to MESH_CNI_LOG_FILE or the default log file.
  const response = await runCni({ env: process.env, stdin }, { podLookupTimeoutMs: lookupTimeoutFromEnv(), defaultLogFile: process.env.MESH_CNI_LOG_FILE || undefined, keepAutoDetection: true });
  if (response.stderr) writeAll(2, response.stderr);
  writeAll(1, response.stdout);
  // The log line is written in the background; a log file that hangs may cost a second, never the pod.
  await flushRequestLogs(1000);
  process.exit(response.exitCode);
}

export { warmUpForCodeCache } from './warm-up';

// Run as a program (the shim runs it, the bundle's loader passes its own module); the build loads the bundle
// as a library instead, to train its code cache (scripts/build-engine.js), and must not start a request.
if (require.main === module) void main();
