/**
 * Benchmark 2, burst: 100 ADDs at once (100 fresh netns) through the warm agent, each shim started as a
 * runtime starts it (posix_spawn) and timed from spawn to exit. All must succeed; p50 and p99 of the 100.
 * Repeated, the figures are medians over the rounds.
 *
 * How close to ideal: the CPU the burst used (the agent and the programs it ran, the 100 shims), divided by
 * the cores, is the shortest the whole burst could take; the last ADD cannot answer before that, so the p99 is
 * set beside it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { meshedNetconf, runShim, startAgentProcess } from './agent-process';
import { freshNetnsBatch, median, quantile, removeNetns, table, tempDir, writeResult, type Summary } from './lib';

const PODS = 100;
const ROUNDS = Number(process.env.BENCH_BURST_ROUNDS ?? 3);
const TARGETS: Record<string, number> = { iptables: 250, nftables: 150 };
const TICK_MS = 1000 / 100;

/** CPU ms of a process and of its waited-for children (utime, stime, cutime, cstime of /proc/PID/stat). */
function cpuMs(pid: number | 'self'): { own: number; children: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
  // Fields 14-17 of stat(5), counted from the state (field 3) at index 0.
  return { own: (f[11]! + f[12]!) * TICK_MS, children: (f[13]! + f[14]!) * TICK_MS };
}

interface Round {
  backend: string;
  p50: number;
  p99: number;
  max: number;
  failed: number;
  wallMs: number;
  cpuMs: number;
  /** of cpuMs: the agent itself, the programs it ran (restores, nft), the shims */
  agentMs: number;
  programsMs: number;
  shimsMs: number;
  idealMs: number;
}

export async function benchBurst(): Promise<Summary[]> {
  const dir = tempDir('burst');
  const agent = await startAgentProcess(dir);
  const cores = os.cpus().length;
  const rounds: Round[] = [];
  try {
    for (const backend of ['iptables', 'nftables']) {
      for (let round = 0; round < ROUNDS; round++) {
        const netns = freshNetnsBatch(PODS);
        try {
          const agentBefore = cpuMs(agent.pid);
          const shimsBefore = cpuMs('self').children;
          const started = Date.now();
          const results = await Promise.all(
            netns.map((ns, i) => runShim({ command: 'ADD', netns: ns, containerId: `burst-${backend}-${round}-${i}`, netconf: meshedNetconf(dir, backend), socket: agent.socket, spawn: 'posix' })),
          );
          const wallMs = Date.now() - started;
          const agentAfter = cpuMs(agent.pid);
          const agentMs = agentAfter.own - agentBefore.own;
          const programsMs = agentAfter.children - agentBefore.children;
          const shimsMs = cpuMs('self').children - shimsBefore;
          const used = agentMs + programsMs + shimsMs;
          const times = results.map((r) => r.ms);
          const failed = results.filter((r) => r.code !== 0);
          if (failed.length > 0) console.log(`burst ${backend}: ${failed.length} failed, first: ${failed[0]!.stdout}`);
          rounds.push({ backend, p50: quantile(times, 0.5), p99: quantile(times, 0.99), max: Math.max(...times), failed: failed.length, wallMs, cpuMs: used, agentMs, programsMs, shimsMs, idealMs: used / cores });
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
  console.log(`   cpu: what the burst used (the agent, the programs it ran, the shims; 10 ms ticks); ideal = cpu / ${cores} cores,`);
  console.log('   the shortest the whole burst could take. wall: first shim started to last one done (this process starts');
  console.log('   the 100 shims one after another, so a shim\'s own p99 can be under the ideal). wall/ideal says how close.');
  console.log(
    table(
      ['backend', 'round', 'p50', 'p99', 'max', 'wall', 'cpu', 'agent', 'programs', 'shims', 'ideal', 'p99/ideal', 'wall/ideal', 'failed'],
      rounds.map((r, i) => [r.backend, i % ROUNDS, r.p50, r.p99, r.max, r.wallMs, r.cpuMs, r.agentMs, r.programsMs, r.shimsMs, r.idealMs, r.p99 / r.idealMs, r.wallMs / r.idealMs, r.failed]),
    ),
  );
  writeResult('burst', { pods: PODS, cores, rounds });
  const failed = rounds.reduce((s, r) => s + r.failed, 0);
  const out: Summary[] = [];
  for (const backend of ['iptables', 'nftables']) {
    const mine = rounds.filter((r) => r.backend === backend);
    const ideal = median(mine.map((r) => r.idealMs));
    out.push({
      name: `burst-p99-${backend}`,
      value: median(mine.map((r) => r.p99)),
      unit: 'ms',
      target: TARGETS[backend]!,
      atMost: true,
      note: `p50 ${median(mine.map((r) => r.p50)).toFixed(0)} ms; ideal ${ideal.toFixed(0)} ms (CPU ${median(mine.map((r) => r.cpuMs)).toFixed(0)} ms / ${cores} cores), p99 ${(median(mine.map((r) => r.p99)) / ideal).toFixed(2)}x it, wall ${(median(mine.map((r) => r.wallMs)) / ideal).toFixed(2)}x`,
    });
  }
  out.push({ name: 'burst-failures', value: failed, unit: 'ADDs', target: 0, atMost: true });
  return out;
}
