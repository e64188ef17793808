/**
 * Benchmark 2, burst: 100 ADDs at once (100 fresh netns) through the warm agent, each shim timed from spawn
 * to exit. All must succeed; p50 and p99 of the 100. Repeated, the figures are medians over the rounds.
 */
import * as fs from 'node:fs';
import { meshedNetconf, runShim, startAgentProcess } from './agent';
import { freshNetnsBatch, median, quantile, removeNetns, table, tempDir, writeResult, type Summary } from './lib';

const PODS = 100;
const ROUNDS = Number(process.env.BENCH_BURST_ROUNDS ?? 3);

export async function benchBurst(): Promise<Summary[]> {
  const dir = tempDir('burst');
  const agent = await startAgentProcess(dir);
  const rounds: Array<{ backend: string; p50: number; p99: number; max: number; failed: number; wallMs: number }> = [];
  try {
    for (const backend of ['iptables', 'nftables']) {
      for (let round = 0; round < ROUNDS; round++) {
        const netns = freshNetnsBatch(PODS);
        try {
          const started = Date.now();
          const results = await Promise.all(
            netns.map((ns, i) => runShim({ command: 'ADD', netns: ns, containerId: `burst-${backend}-${round}-${i}`, netconf: meshedNetconf(dir, backend), socket: agent.socket })),
          );
          const wallMs = Date.now() - started;
          const times = results.map((r) => r.ms);
          const failed = results.filter((r) => r.code !== 0);
          if (failed.length > 0) console.log(`burst ${backend}: ${failed.length} failed, first: ${failed[0]!.stdout}`);
          rounds.push({ backend, p50: quantile(times, 0.5), p99: quantile(times, 0.99), max: Math.max(...times), failed: failed.length, wallMs });
        } finally {
          for (const ns of netns) removeNetns(ns);
        }
      }
    }
  } finally {
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(`\n== 2. Burst: ${PODS} ADDs at once through the agent, ${ROUNDS} rounds per backend (ms)`);
  console.log(table(['backend', 'round', 'p50', 'p99', 'max', 'wall', 'failed'], rounds.map((r, i) => [r.backend, i % ROUNDS, r.p50, r.p99, r.max, r.wallMs, r.failed])));
  writeResult('burst', { pods: PODS, rounds });
  const failed = rounds.reduce((s, r) => s + r.failed, 0);
  const out: Summary[] = [];
  for (const backend of ['iptables', 'nftables']) {
    const mine = rounds.filter((r) => r.backend === backend);
    out.push({ name: `burst-p99-${backend}`, value: median(mine.map((r) => r.p99)), unit: 'ms', target: 300, atMost: true, note: `p50 ${median(mine.map((r) => r.p50)).toFixed(0)} ms` });
  }
  out.push({ name: 'burst-failures', value: failed, unit: 'ADDs', target: 0, atMost: true });
  return out;
}
