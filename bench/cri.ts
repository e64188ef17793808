/**
 * Benchmark 3, through CRI: RunPodSandbox as kubelet calls it, on containerd "nodes" started the same way: one
 * per backend chaining bridge + host-local + mesh-cni (the shim talking to a warm agent, the netconf naming
 * iptables or nftables), and one chaining only bridge + host-local. Sandboxes rotate between the nodes so all
 * see the same machine load; each is stopped and removed outside the timing. Uses test/support/cri.ts.
 */
import * as fs from 'node:fs';
import { startNode, type CriNode } from '../test/support/cri';
import { INJECTED, startAgentProcess } from './agent-process';
import { median, now, table, tempDir, writeResult, type Summary } from './lib';

// 30 each: a sandbox takes 70-110 ms here, and the ratio must resolve the 2-4 ms an ADD adds to it.
const RUNS = Number(process.env.BENCH_CRI_RUNS ?? 30);
const BACKENDS = ['iptables', 'nftables'] as const;
type Chain = (typeof BACKENDS)[number] | 'without';
/** RunPodSandbox with us against without: the budget per backend. */
const TARGETS: Record<(typeof BACKENDS)[number], number> = { iptables: 1.1, nftables: 1.05 };

async function timedSandbox(node: CriNode, name: string): Promise<number> {
  const started = now();
  const sandbox = await node.runPodSandbox({ name, namespace: 'bench', annotations: INJECTED });
  const ms = now() - started;
  await node.stopPodSandbox(sandbox.id);
  await node.removePodSandbox(sandbox.id);
  return ms;
}

export async function benchCri(): Promise<Summary[]> {
  const dir = tempDir('cri');
  const agent = await startAgentProcess(dir);
  const nodes: Partial<Record<Chain, CriNode>> = {};
  const times: Record<Chain, number[]> = { iptables: [], nftables: [], without: [] };
  const meshed: Record<string, number> = {};
  try {
    for (const backend of BACKENDS) nodes[backend] = await startNode({ env: { MESH_CNI_AGENT_SOCKET: agent.socket }, meshCni: { backend } });
    nodes.without = await startNode({ plugin: false });
    const chains = Object.keys(nodes) as Chain[];
    // Warm-up: the first sandbox of a node pays for containerd's own first-use work.
    for (const chain of chains) await timedSandbox(nodes[chain]!, `warm-${chain}`);
    const logFrom = Object.fromEntries(BACKENDS.map((b) => [b, nodes[b]!.meshCniLogSize()]));
    for (let i = 0; i < RUNS; i++) {
      for (const chain of chains) times[chain].push(await timedSandbox(nodes[chain]!, `${chain}-${i}`));
    }
    for (const b of BACKENDS) meshed[b] = nodes[b]!.meshCniLogSince(logFrom[b]!).filter((l) => l.command === 'ADD' && l.decision === 'meshed' && l.backend === b).length;
  } finally {
    for (const node of Object.values(nodes)) await node.stop().catch(() => undefined);
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const label: Record<Chain, string> = { iptables: 'bridge + host-local + mesh-cni iptables (agent)', nftables: 'bridge + host-local + mesh-cni nftables (agent)', without: 'bridge + host-local' };
  console.log(`\n== 3. Through CRI: RunPodSandbox, ${RUNS} sandboxes per chain (ms)`);
  console.log(table(['chain', 'n', 'median', 'min', 'max'], (Object.keys(label) as Chain[]).map((c) => [label[c], times[c].length, median(times[c]), Math.min(...times[c]), Math.max(...times[c])])));
  console.log(`meshed ADDs seen in our log: ${BACKENDS.map((b) => `${b} ${meshed[b]} of ${RUNS}`).join(', ')}`);
  const ratios = Object.fromEntries(BACKENDS.map((b) => [b, median(times[b]) / median(times.without)]));
  writeResult('cri', { runs: RUNS, times, ratios, meshedAdds: meshed });
  return BACKENDS.map((b) => ({
    name: `cri-run-pod-sandbox-${b}`,
    value: ratios[b]!,
    unit: 'x',
    target: TARGETS[b],
    atMost: true,
    note: `${median(times[b]).toFixed(0)} vs ${median(times.without).toFixed(0)} ms; ${meshed[b]}/${RUNS} meshed`,
  }));
}
