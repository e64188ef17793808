/**
 * Benchmark 3, through CRI: RunPodSandbox as kubelet calls it, on two containerd "nodes" started the same way,
 * one chaining bridge + host-local + mesh-cni (the shim talking to a warm agent), one chaining only
 * bridge + host-local. Sandboxes alternate between the nodes so both see the same machine load; each is
 * stopped and removed outside the timing. Uses test/support/cri.ts.
 */
import * as fs from 'node:fs';
import { startNode, type CriNode } from '../test/support/cri';
import { INJECTED, startAgentProcess } from './agent';
import { median, now, table, tempDir, writeResult, type Summary } from './lib';

const RUNS = Number(process.env.BENCH_CRI_RUNS ?? 10);

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
  let withPlugin: CriNode | undefined;
  let without: CriNode | undefined;
  const times: Record<'with' | 'without', number[]> = { with: [], without: [] };
  let meshed = 0;
  try {
    withPlugin = await startNode({ env: { MESH_CNI_AGENT_SOCKET: agent.socket } });
    without = await startNode({ plugin: false });
    // Warm-up: the first sandbox of a node pays for containerd's own first-use work.
    await timedSandbox(withPlugin, 'warm-with');
    await timedSandbox(without, 'warm-without');
    const logFrom = withPlugin.meshCniLogSize();
    for (let i = 0; i < RUNS; i++) {
      times.with.push(await timedSandbox(withPlugin, `with-${i}`));
      times.without.push(await timedSandbox(without, `without-${i}`));
    }
    meshed = withPlugin.meshCniLogSince(logFrom).filter((l) => l.command === 'ADD' && l.decision === 'meshed').length;
  } finally {
    await withPlugin?.stop().catch(() => undefined);
    await without?.stop().catch(() => undefined);
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const ratio = median(times.with) / median(times.without);
  console.log(`\n== 3. Through CRI: RunPodSandbox, ${RUNS} sandboxes per chain (ms)`);
  console.log(
    table(
      ['chain', 'n', 'median', 'min', 'max'],
      [
        ['bridge + host-local + mesh-cni (agent)', times.with.length, median(times.with), Math.min(...times.with), Math.max(...times.with)],
        ['bridge + host-local', times.without.length, median(times.without), Math.min(...times.without), Math.max(...times.without)],
      ],
    ),
  );
  console.log(`meshed ADDs seen in our log: ${meshed} of ${RUNS}`);
  writeResult('cri', { runs: RUNS, times, ratio, meshedAdds: meshed });
  return [{ name: 'cri-run-pod-sandbox', value: ratio, unit: 'x', target: 1.1, atMost: true, note: `${median(times.with).toFixed(0)} vs ${median(times.without).toFixed(0)} ms; ${meshed}/${RUNS} meshed` }];
}
