#!/usr/bin/env node
/**
 * The standalone plugin process: what the shim runs with node when the agent's socket is not there. Reads
 * stdin (bounded), takes the environment, runs one command, prints the answer and exits with its code.
 * It loads no Kubernetes client: pod lookups use the minimal kubeconfig reader and node's https.
 */
import { runCni } from './dispatch';
import { MAX_STDIN_BYTES } from './request';

async function readStdinBounded(limit: number): Promise<Buffer> {
  if (process.stdin.isTTY) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    // One byte past the limit is enough for parseRequest to report it; reading further would waste memory.
    if (size > limit) break;
  }
  return Buffer.concat(chunks).subarray(0, limit + 1);
}

function lookupTimeoutFromEnv(): number | undefined {
  const raw = process.env.MESH_CNI_POD_LOOKUP_TIMEOUT_MS;
  const n = raw === undefined ? NaN : Number(raw);
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}

async function main(): Promise<void> {
  let stdin: Buffer;
  try {
    stdin = await readStdinBounded(MAX_STDIN_BYTES);
  } catch (err) {
    process.stdout.write(JSON.stringify({ cniVersion: '1.1.0', code: 5, msg: `error reading from stdin: ${(err as Error).message}` }));
    process.exitCode = 1;
    return;
  }
  // Until the netconf (and its log_file) is parsed, lines go to MESH_CNI_LOG_FILE or the default log file.
  const response = await runCni({ env: process.env, stdin }, { podLookupTimeoutMs: lookupTimeoutFromEnv(), defaultLogFile: process.env.MESH_CNI_LOG_FILE || undefined });
  if (response.stderr) process.stderr.write(response.stderr);
  process.stdout.write(response.stdout, () => {
    process.exit(response.exitCode);
  });
}

void main();
