#!/usr/bin/env node
/**
 * `npm run bench` (root; not part of npm test): runs the benchmarks, each printing its table and writing
 * bench/results/<name>.json, and ends with one summary line per figure, `NAME: VALUE UNIT (target T) ok|MISSED`.
 * `npm run bench -- add burst` runs only those. BENCH_RUNS sets the repetitions of the latency loops.
 */
import { benchAddLatency } from './add-latency';
import { benchApiLoad } from './api-load';
import { benchBurst } from './burst';
import { benchCri } from './cri';
import { benchMemory } from './memory';
import { benchOwnedConfig } from './owned-config';
import { benchReinsertion } from './reinsertion';
import { benchRepairScan } from './repair-scan';
import { benchRuleCount } from './rule-count';
import { benchZds } from './zds';
import { bounded, removeAllNetns, summaryLine, sweepDeadNetns, type Summary } from './lib';

const BENCHMARKS: Record<string, { run: () => Promise<Summary[]>; limitMs: number; summaries: string[] }> = {
  add: { run: benchAddLatency, limitMs: 10 * 60_000, summaries: ['add-vs-floor-iptables', 'add-vs-floor-nftables', 'add-auto-vs-floor-iptables', 'agent-work-per-add', 'standalone-version-vs-node', 'standalone-add-vs-node', 'add-ambient-vs-sidecar'] },
  burst: { run: benchBurst, limitMs: 5 * 60_000, summaries: ['burst-p99'] },
  cri: { run: benchCri, limitMs: 10 * 60_000, summaries: ['cri-run-pod-sandbox-iptables', 'cri-run-pod-sandbox-nftables'] },
  repair: { run: benchRepairScan, limitMs: 10 * 60_000, summaries: ['repair-scan-iptables', 'repair-scan-cold-iptables', 'repair-scan-nftables', 'repair-scan-cold-nftables'] },
  memory: { run: benchMemory, limitMs: 10 * 60_000, summaries: ['agent-rss-idle', 'agent-rss-500-pods'] },
  'api-load': { run: benchApiLoad, limitMs: 10 * 60_000, summaries: ['api-per-pod-gets'] },
  rules: { run: benchRuleCount, limitMs: 5 * 60_000, summaries: ['nft-rules-growth'] },
  reinsertion: { run: benchReinsertion, limitMs: 5 * 60_000, summaries: ['reinsertion-p50', 'reinsertion-p99'] },
  owned: { run: benchOwnedConfig, limitMs: 5 * 60_000, summaries: ['owned-config-p50', 'owned-config-p99', 'owned-config-max', 'owned-config-primary-written'] },
  zds: { run: benchZds, limitMs: 2 * 60_000, summaries: ['zds-round-trip-uv-poll', 'zds-round-trip-timer'] },
};

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the benchmarks need root (network namespaces, iptables, containerd)');
  const wanted = process.argv.slice(2);
  const names = wanted.length > 0 ? wanted : Object.keys(BENCHMARKS);
  for (const n of names) if (!BENCHMARKS[n]) throw new Error(`unknown benchmark ${n}; one of ${Object.keys(BENCHMARKS).join(', ')}`);
  sweepDeadNetns();
  const lines: string[] = [];
  let missed = 0;
  for (const name of names) {
    const b = BENCHMARKS[name]!;
    try {
      const summaries = await bounded(`benchmark ${name}`, b.limitMs, b.run());
      for (const s of summaries) lines.push(summaryLine(s));
      missed += lines.filter((l) => l.includes(' MISSED')).length;
    } catch (err) {
      console.error(`\nbenchmark ${name} failed: ${(err as Error).stack ?? err}`);
      for (const s of b.summaries) lines.push(`${s}: n/a (benchmark failed: ${(err as Error).message.split('\n')[0]}) MISSED`);
    } finally {
      removeAllNetns();
    }
  }
  console.log('\n== summary');
  for (const l of lines) console.log(l);
  process.exitCode = 0;
  void missed;
}

main().catch((err) => {
  console.error(err);
  removeAllNetns();
  process.exitCode = 1;
});
