/**
 * Benchmark 1, pod ADD latency. In one loop, so every ratio compares figures from the same minutes:
 *   - the shim executed as the runtime does (env + stdin, cwd /), agent warm, into a fresh netns, per backend
 *     (iptables, nftables, and auto: what a default install writes into the netconf);
 *   - the floor: one bare iptables-restore (or nft -f) of the same rules into a fresh netns, as a process
 *     (spawned from inside the netns, as the engine spawns it);
 *   - the standalone path (no agent): the installed shim -> node -> installed engine, for VERSION and ADD,
 *     against a bare `node -e 0`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run } from '../src/netns';
import { redirectConfigFromAnnotations } from '../src/redirect/config';
import { buildPlan } from '../src/redirect/plan';
import { renderRestore } from '../src/redirect/render/iptables';
import { renderNftScript } from '../src/redirect/render/nftables';
import { nftProgram } from '../src/redirect/backend/nftables';
import { install, pluginEntry } from '../src/installer';
import { INJECTED, meshedNetconf, runShim, startAgentProcess } from './agent';
import { ENGINE_DIR, exec, freshNetns, median, MINIMAL_PATH, removeNetns, SHIM, table, tempDir, writeResult, type Summary } from './lib';

const RUNS = Number(process.env.BENCH_RUNS ?? 30);

interface Series {
  [name: string]: number[];
}

function push(series: Series, name: string, ms: number): void {
  (series[name] ??= []).push(ms);
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

  const series: Series = {};
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
  const add = (backend: string, shim = SHIM, socket = agent.socket) => (netns: string) =>
    runShim({ shim, command: 'ADD', netns, containerId: `bench-${++id}`, netconf: meshedNetconf(dir, backend), socket });

  try {
    // Warm-up: the agent's first requests load and cache what later ones reuse.
    for (const backend of ['iptables', 'nftables', 'auto']) await once(`warmup-${backend}`, add(backend));
    for (let i = 0; i < RUNS; i++) {
      await once('floor iptables-restore', async (netns) => {
        const t = process.hrtime.bigint();
        const r = await run(netns, 'iptables-restore', ['--noflush'], { input: restoreText });
        return { code: r.code, ms: Number(process.hrtime.bigint() - t) / 1e6, stdout: r.stderr };
      });
      await once('ADD iptables (agent)', add('iptables'));
      await once('floor nft -f', async (netns) => {
        const t = process.hrtime.bigint();
        const r = await run(netns, nft, ['-f', '-'], { input: nftText });
        return { code: r.code, ms: Number(process.hrtime.bigint() - t) / 1e6, stdout: r.stderr };
      });
      await once('ADD nftables (agent)', add('nftables'));
      await once('ADD auto (agent)', add('auto'));
      await once('node -e 0', async () => exec(process.execPath, ['-e', '0'], { cwd: '/', env: { PATH: MINIMAL_PATH } }));
      await once('standalone VERSION', async () =>
        exec(installedShim, [], { cwd: '/', input: '{"cniVersion":"1.0.0"}', env: { PATH: MINIMAL_PATH, CNI_COMMAND: 'VERSION', MESH_CNI_AGENT_SOCKET: absent } }),
      );
      await once('standalone ADD iptables', add('iptables', installedShim, absent));
      await once('standalone ADD auto', add('auto', installedShim, absent));
    }
  } finally {
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
    'add-auto-vs-floor-iptables': m('ADD auto (agent)') / m('floor iptables-restore'),
    'standalone-version-vs-node': m('standalone VERSION') / m('node -e 0'),
    'standalone-add-vs-node': m('standalone ADD iptables') / m('node -e 0'),
  };
  console.log(table(['ratio', 'value'], Object.entries(ratios)));
  writeResult('add-latency', { runs: RUNS, medians: Object.fromEntries(Object.keys(series).map((n) => [n, m(n)])), samples: series, ratios, failures });
  const note = failures.length > 0 ? `${failures.length} failed runs` : undefined;
  return [
    { name: 'add-vs-floor-iptables', value: ratios['add-vs-floor-iptables'], unit: 'x', target: 1.5, atMost: true, note },
    { name: 'add-vs-floor-nftables', value: ratios['add-vs-floor-nftables'], unit: 'x', target: 1.5, atMost: true, note },
    { name: 'add-auto-vs-floor-iptables', value: ratios['add-auto-vs-floor-iptables'], unit: 'x', target: 1.5, atMost: true, note },
    { name: 'standalone-version-vs-node', value: ratios['standalone-version-vs-node'], unit: 'x', target: 1.6, atMost: true },
    { name: 'standalone-add-vs-node', value: ratios['standalone-add-vs-node'], unit: 'x', target: 2.0, atMost: true },
  ];
}
