/**
 * Benchmark 1, pod ADD latency. In one loop, so every ratio compares figures from the same minutes:
 *   - the shim executed as the runtime does (env + stdin, started with posix_spawn as containerd's Go runtime
 *     starts a plugin), agent warm, into a fresh netns, per backend (iptables, nftables, and auto: what a
 *     default install writes into the netconf);
 *   - the floor: one bare iptables-restore (or nft -f) of the same rules into a fresh netns, as a process
 *     (spawned from inside the netns, as the engine spawns it: posix_spawn, src/netns/spawn.ts);
 *   - the standalone path (no agent): the installed shim -> node -> installed engine, for VERSION and ADD,
 *     against a bare `node -e 0`;
 *   - the parts of an iptables ADD: the shim's exec and socket round trip (a VERSION through the agent: the
 *     agent answers it without work), the agent's own work by phase (its /metrics histogram, every phase but
 *     apply), its apply (the restore started from the agent), and the same restore started from a small process
 *     and from this large one, with posix_spawn and with libuv's fork (what the engine used before);
 *   - an ambient pod's ADD beside a sidecar pod's, both in-process (the engine as the agent runs it; ambient's
 *     decision needs the API, which this loop has none of): the sidecar's rules, against ambient's rules plus
 *     the handover to ztunnel (AddWorkload with the netns descriptor, acked by the stand-in ztunnel).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run, withNetns } from '../src/netns';
import { redirectConfigFromAnnotations } from '../src/redirect/config';
import { buildPlan } from '../src/redirect/plan';
import { renderRestore } from '../src/redirect/iptables/render';
import { renderNftScript } from '../src/redirect/nftables/render';
import { nftProgram } from '../src/redirect/nftables/backend';
import { libnftablesAvailable, runNft } from '../src/redirect/nftables/libnftables';
import { install, pluginEntry } from '../src/installer';
import { histogramBuckets, histogramQuantile, INJECTED, meshedNetconf, runShim, scrapeMetrics, startAgentProcess, startSmallSpawner } from './agent-process';
import { ENGINE_DIR, exec, freshNetns, median, MINIMAL_PATH, removeNetns, rssKb, SHIM, table, tempDir, writeResult, type Summary } from './lib';
import { ADD_PHASES } from '../src/cni/phases';
import { applyRedirect } from '../src/redirect/engine';
import { ambientConfigFromAnnotations } from '../src/redirect/ambient/config';
import { applyAmbient } from '../src/redirect/ambient/apply';
import { ZdsServer } from '../src/agent/zds-server';
import { ZtunnelStandIn } from '../test/support/ztunnel';

const RUNS = Number(process.env.BENCH_RUNS ?? 30);

interface Series {
  [name: string]: number[];
}

function push(series: Series, name: string, ms: number): void {
  (series[name] ??= []).push(ms);
}

/** How the agent's iptables ADDs reached the kernel, from the request log's `via` (all of the run, warm-up included). */
function countVia(logFile: string, agentIds: Set<string>): Record<string, number> {
  const counts: Record<string, number> = {};
  let text = '';
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return counts;
  }
  for (const line of text.split('\n')) {
    if (!line.includes('"command":"ADD"')) continue;
    const l = JSON.parse(line) as { backend?: string; via?: string; containerId?: string };
    if (l.backend?.startsWith('iptables') && l.containerId && agentIds.has(l.containerId)) counts[l.via ?? 'unknown'] = (counts[l.via ?? 'unknown'] ?? 0) + 1;
  }
  return counts;
}

export async function benchAddLatency(): Promise<Summary[]> {
  const dir = tempDir('add');
  const agent = await startAgentProcess(dir);
  const plan = buildPlan(redirectConfigFromAnnotations(INJECTED));
  const restoreText = renderRestore(plan.ipv4.rules);
  const nftText = renderNftScript(plan, ['ipv4']);
  const nft = nftProgram();

  // The standalone path as installed on a node: a temp CNI bin dir with the shim and mesh-cni.d.
  const binDir = path.join(dir, 'bin');
  await install({
    cniBinDir: binDir,
    cniConfDir: path.join(dir, 'conf'),
    shimPath: SHIM,
    enginePath: ENGINE_DIR,
    pluginConfig: pluginEntry({}),
    standaloneConf: true,
    stateDir: path.join(dir, 'install-state'),
  });
  const installedShim = path.join(binDir, 'mesh-cni');
  const absent = path.join(dir, 'no-agent.sock');

  // ztunnel's side for the ambient ADD: the ZDS server as the agent runs it, the stand-in acking every add.
  const teardowns: Array<() => void | Promise<void>> = [];
  const zds = ZdsServer.start({ path: path.join(dir, 'ztunnel', 'ztunnel.sock'), snapshot: () => [] });
  const ztunnel = await ZtunnelStandIn.connect({ teardown: (fn: () => void | Promise<void>) => teardowns.push(fn) } as never, zds.path);
  await ztunnel.until(() => ztunnel.snapshot !== undefined, 'the snapshot');
  const ambientConfig = ambientConfigFromAnnotations({});
  const sidecarConfig = redirectConfigFromAnnotations(INJECTED);
  const timed = async (work: () => Promise<unknown>) => {
    const t = process.hrtime.bigint();
    await work();
    return { code: 0, ms: Number(process.hrtime.bigint() - t) / 1e6 };
  };
  const ambientAdd = (netns: string) =>
    timed(async () => {
      await applyAmbient({ netns, config: ambientConfig, backend: 'iptables', verify: 'when-replacing', families: ['ipv4'] });
      const fd = fs.openSync(netns, 'r');
      try {
        await zds.addWorkload({ uid: `bench-ambient-${++id}`, info: { name: 'bench', namespace: 'bench', serviceAccount: 'default' }, netnsFd: fd });
      } finally {
        fs.closeSync(fd);
      }
    });
  const sidecarAdd = (netns: string) => timed(() => applyRedirect({ netns, config: sidecarConfig, backend: 'iptables', verify: 'when-replacing', families: ['ipv4'] }));

  const spawner = startSmallSpawner();
  const forkingSpawner = startSmallSpawner('fork');
  const series: Series = {};
  let metricsBefore = '';
  let metricsAfter = '';
  let rss = { agent: NaN, small: NaN, bench: NaN };
  let viaCounts: Record<string, number> = {};
  const failures: string[] = [];
  const once = async (name: string, work: (netns: string) => Promise<{ code: number | null; ms: number; stdout?: string }>) => {
    const netns = freshNetns();
    try {
      const r = await work(netns);
      if (r.code !== 0) failures.push(`${name}: exit ${r.code} ${r.stdout ?? ''}`);
      else push(series, name, r.ms);
    } finally {
      removeNetns(netns);
    }
  };
  let id = 0;
  /** The ADDs the agent answered (the standalone ones log to the same file). */
  const agentIds = new Set<string>();
  const add = (backend: string, shim = SHIM, socket = agent.socket, how: 'posix' | 'fork' = 'posix') => (netns: string) => {
    const containerId = `bench-${++id}`;
    if (socket === agent.socket) agentIds.add(containerId);
    return runShim({ shim, command: 'ADD', netns, containerId, netconf: meshedNetconf(dir, backend), socket, spawn: how });
  };
  const restoreForkedHere = (netns: string) =>
    new Promise<{ code: number | null; ms: number; stdout: string }>((resolve) => {
      const t = process.hrtime.bigint();
      const child = withNetns(netns, () => spawn('iptables-restore', ['--noflush'], { stdio: ['pipe', 'pipe', 'pipe'] }));
      let err = '';
      child.stdout.resume();
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.stdin.on('error', () => undefined);
      child.stdin.end(restoreText);
      child.on('close', (code) => resolve({ code, ms: Number(process.hrtime.bigint() - t) / 1e6, stdout: err }));
    });

  try {
    // Warm-up: the agent's first requests load and cache what later ones reuse.
    for (const backend of ['iptables', 'nftables', 'auto']) await once(`warmup-${backend}`, add(backend));
    await once('warmup-small', (netns) => spawner.run(netns, 'iptables-restore', ['--noflush'], restoreText));
    await once('warmup-small-fork', (netns) => forkingSpawner.run(netns, 'iptables-restore', ['--noflush'], restoreText));
    await once('warmup-ambient', ambientAdd);
    await once('warmup-sidecar', sidecarAdd);
    metricsBefore = await scrapeMetrics(agent);
    for (let i = 0; i < RUNS; i++) {
      await once('floor iptables-restore', async (netns) => {
        const t = process.hrtime.bigint();
        const r = await run(netns, 'iptables-restore', ['--noflush'], { input: restoreText });
        return { code: r.code, ms: Number(process.hrtime.bigint() - t) / 1e6, stdout: r.stderr };
      });
      await once('ADD iptables (agent)', add('iptables'));
      await once('restore, posix_spawn from a small process', (netns) => spawner.run(netns, 'iptables-restore', ['--noflush'], restoreText));
      await once('restore, fork from a small process', (netns) => forkingSpawner.run(netns, 'iptables-restore', ['--noflush'], restoreText));
      await once('restore, fork from the bench process', restoreForkedHere);
      await once('shim VERSION (agent)', (netns) =>
        runShim({ command: 'VERSION', netns, containerId: `bench-${++id}`, netconf: meshedNetconf(dir, 'iptables'), socket: agent.socket, spawn: 'posix' }),
      );
      await once('ADD iptables (agent), shim forked from the bench', add('iptables', SHIM, agent.socket, 'fork'));
      await once('floor nft -f', async (netns) => {
        const t = process.hrtime.bigint();
        const r = await run(netns, nft, ['-f', '-'], { input: nftText });
        return { code: r.code, ms: Number(process.hrtime.bigint() - t) / 1e6, stdout: r.stderr };
      });
      await once('ADD nftables (agent)', add('nftables'));
      // The same script through libnftables in this process: what the agent's nftables ADD runs instead of the floor.
      if (libnftablesAvailable()) {
        await once('libnftables in-process', async (netns) => {
          const t = process.hrtime.bigint();
          const [r] = runNft(netns, [{ script: nftText }]);
          return { code: r!.ok ? 0 : 1, ms: Number(process.hrtime.bigint() - t) / 1e6, stdout: r!.error };
        });
      }
      await once('ADD auto (agent)', add('auto'));
      await once('sidecar ADD in-process (rules)', sidecarAdd);
      await once('ambient ADD in-process (rules + ztunnel ack)', ambientAdd);
      await once('node -e 0', async () => exec(process.execPath, ['-e', '0'], { cwd: '/', env: { PATH: MINIMAL_PATH } }));
      await once('standalone VERSION', async () =>
        exec(installedShim, [], { cwd: '/', input: '{"cniVersion":"1.0.0"}', env: { PATH: MINIMAL_PATH, CNI_COMMAND: 'VERSION', MESH_CNI_AGENT_SOCKET: absent } }),
      );
      // The standalone lines keep child_process, as node -e 0 beside them does.
      await once('standalone ADD iptables', add('iptables', installedShim, absent, 'fork'));
      await once('standalone ADD auto', add('auto', installedShim, absent, 'fork'));
    }
    metricsAfter = await scrapeMetrics(agent);
    viaCounts = countVia(path.join(dir, 'mesh-cni.log'), agentIds);
    rss = { agent: rssKb(agent.pid), small: rssKb(spawner.pid), bench: rssKb(process.pid) };
  } finally {
    for (const fn of teardowns) await fn();
    zds.close();
    spawner.stop();
    forkingSpawner.stop();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }

  const m = (name: string) => median(series[name] ?? []);
  const rows = Object.keys(series)
    .filter((n) => !n.startsWith('warmup'))
    .map((n) => [n, series[n]!.length, m(n), Math.min(...series[n]!), Math.max(...series[n]!)]);
  console.log(`\n== 1. ADD latency (${RUNS} runs each, fresh netns every run, medians in ms)`);
  console.log(table(['case', 'n', 'median', 'min', 'max'], rows));
  if (failures.length > 0) console.log(`failures:\n  ${failures.slice(0, 10).join('\n  ')}`);

  const ratios = {
    'add-vs-floor-iptables': m('ADD iptables (agent)') / m('floor iptables-restore'),
    'add-vs-floor-nftables': m('ADD nftables (agent)') / m('floor nft -f'),
    'libnftables-vs-floor-nftables': m('libnftables in-process') / m('floor nft -f'),
    'add-auto-vs-floor-iptables': m('ADD auto (agent)') / m('floor iptables-restore'),
    'standalone-version-vs-node': m('standalone VERSION') / m('node -e 0'),
    'standalone-add-vs-node': m('standalone ADD iptables') / m('node -e 0'),
    'add-ambient-vs-sidecar': m('ambient ADD in-process (rules + ztunnel ack)') / m('sidecar ADD in-process (rules)'),
  };
  console.log(table(['ratio', 'value'], Object.entries(ratios)));

  // The parts of an iptables ADD, from the same loop.
  const phaseMs = (phase: string) => {
    const labels = { phase, backend: 'iptables' };
    const q = histogramQuantile(histogramBuckets(metricsBefore, 'mesh_cni_add_phase_seconds', labels), histogramBuckets(metricsAfter, 'mesh_cni_add_phase_seconds', labels), 0.5);
    return q.value * 1000;
  };
  const phases = Object.fromEntries(ADD_PHASES.map((p) => [p, phaseMs(p)]));
  const agentWork = ADD_PHASES.filter((p) => p !== 'apply').reduce((sum, p) => sum + (phases[p] || 0), 0);
  const mib = (kb: number) => `${(kb / 1024).toFixed(0)} MiB`;
  const parts: Array<[string, number]> = [
    ['shim exec + socket round trip (VERSION through the agent)', m('shim VERSION (agent)')],
    [`agent work: every phase but apply (${ADD_PHASES.filter((p) => p !== 'apply').map((p) => `${p} ${(phases[p] ?? NaN).toFixed(3)}`).join(', ')})`, agentWork],
    [`apply in the agent: lock, families, the rules in (${Object.entries(viaCounts).map(([v, n]) => `${v}: ${n}`).join(', ')}; agent RSS ${mib(rss.agent)})`, phases.apply ?? NaN],
    [`the same restore, posix_spawn from this bench process: the floor (RSS ${mib(rss.bench)})`, m('floor iptables-restore')],
    [`the same restore, posix_spawn from a small process (RSS ${mib(rss.small)})`, m('restore, posix_spawn from a small process')],
    [`the same restore, libuv fork from a small process (RSS ${mib(rss.small)})`, m('restore, fork from a small process')],
    [`the same restore, libuv fork from this bench process (RSS ${mib(rss.bench)})`, m('restore, fork from the bench process')],
    ['ADD iptables through shim + agent', m('ADD iptables (agent)')],
  ];
  const rest = m('ADD iptables (agent)') - m('shim VERSION (agent)') - agentWork - (phases.apply ?? NaN);
  parts.push(['rest: ADD less round trip, agent work and apply', rest]);
  parts.push(['(for comparison) ADD iptables with the shim forked from this bench process', m('ADD iptables (agent), shim forked from the bench')]);
  console.log(`\n== 1b. Where an iptables ADD goes (medians in ms; phases from the agent's /metrics histogram, interpolated in its buckets)`);
  console.log(table(['part', 'ms'], parts.map(([k, v]) => [k, Number(v.toFixed(3))])));
  writeResult('add-latency', { runs: RUNS, iptablesVia: viaCounts, medians: Object.fromEntries(Object.keys(series).map((n) => [n, m(n)])), samples: series, ratios, failures, iptablesParts: Object.fromEntries(parts), phaseMediansMs: phases, rssKb: rss });
  const note = failures.length > 0 ? `${failures.length} failed runs` : undefined;
  return [
    { name: 'add-vs-floor-iptables', value: ratios['add-vs-floor-iptables'], unit: 'x', target: 1.3, atMost: true, note },
    { name: 'add-vs-floor-nftables', value: ratios['add-vs-floor-nftables'], unit: 'x', target: 0.8, atMost: true, note },
    { name: 'add-auto-vs-floor-iptables', value: ratios['add-auto-vs-floor-iptables'], unit: 'x', target: 1.3, atMost: true, note },
    { name: 'agent-work-per-add', value: agentWork * 1000, unit: 'us', target: 500, atMost: true, note: 'median phases of an iptables ADD but apply, summed' },
    { name: 'standalone-version-vs-node', value: ratios['standalone-version-vs-node'], unit: 'x', target: 1.6, atMost: true },
    { name: 'standalone-add-vs-node', value: ratios['standalone-add-vs-node'], unit: 'x', target: 2.0, atMost: true },
    {
      name: 'add-ambient-vs-sidecar',
      value: ratios['add-ambient-vs-sidecar'],
      unit: 'x',
      target: 1.5,
      atMost: true,
      note: `in-process iptables medians: ambient ${m('ambient ADD in-process (rules + ztunnel ack)').toFixed(1)} ms (its rules and the ztunnel ack), sidecar ${m('sidecar ADD in-process (rules)').toFixed(1)} ms`,
    },
  ];
}
