/**
 * Benchmark 4, repair scan: 500 pods known to the agent -- 500 netns programmed by the engine, an attachment
 * record for each (as ADD writes it), and stand-in V1Pod objects as the watch cache would hold them -- and
 * the time of one full verification pass of the Reconciler wired with the agent's own netns dependencies
 * (src/repair/wiring.ts netnsDeps: locate by attachment record, read the rules back, compare with the plan).
 * Per backend; the pass is repeated and the median reported. Every pod must come out healthy.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { AttachmentStore } from '../src/cni/attachments';
import { redirectConfigFromAnnotations } from '../src/redirect/config';
import { applyRedirect, type BackendName } from '../src/redirect/engine';
import { Reconciler } from '../src/repair/reconciler';
import { netnsDeps } from '../src/repair/wiring';
import { INJECTED } from './agent';
import { freshNetnsBatch, median, now, removeNetns, table, tempDir, writeResult, type Summary } from './lib';

const PODS = Number(process.env.BENCH_REPAIR_PODS ?? 500);
const PASSES = 3;

function standInPod(i: number): V1Pod {
  return {
    metadata: { name: `pod-${i}`, namespace: 'bench', uid: `uid-${i}`, annotations: INJECTED },
    spec: { containers: [{ name: 'app' }, { name: 'istio-proxy', securityContext: { runAsUser: 1337, runAsGroup: 1337 } }] },
    status: { podIP: `10.${100 + Math.floor(i / 250)}.${i % 250}.2` },
  } as V1Pod;
}

export async function benchRepairScan(): Promise<Summary[]> {
  const rows: Array<{ backend: string; pods: number; programMs: number; passMs: number[]; healthy: number }> = [];
  for (const backend of ['iptables', 'nftables'] as BackendName[]) {
    const dir = tempDir('repair');
    const netns = freshNetnsBatch(PODS);
    try {
      const attachments = new AttachmentStore(path.join(dir, 'state'));
      const config = redirectConfigFromAnnotations(INJECTED);
      const started = now();
      for (let i = 0; i < PODS; i++) {
        const report = await applyRedirect({ netns: netns[i]!, config, backend, verify: 'when-replacing' });
        attachments.record({ containerId: `c${i}`, ifName: 'eth0', netns: netns[i]!, pod: { namespace: 'bench', name: `pod-${i}`, uid: `uid-${i}` }, backend: report.backend, rules: report.rules, programmedAt: new Date().toISOString() });
      }
      const programMs = now() - started;
      const pods = Array.from({ length: PODS }, (_, i) => standInPod(i));
      const deps = await netnsDeps({ attachments, backend, procRoot: path.join(dir, 'no-proc') });
      const noop = async () => undefined;
      const reconciler = new Reconciler({ mode: 'repair', excludeNamespaces: ['kube-system'], backend }, { pods: () => pods, ...deps, label: noop, delete: noop, event: noop });
      const passMs: number[] = [];
      let healthy = 0;
      for (let p = 0; p < PASSES; p++) {
        const t = now();
        const findings = await reconciler.pass();
        passMs.push(now() - t);
        healthy = findings.filter((f) => f.verdict === 'healthy').length;
        if (healthy !== PODS) console.log(`repair scan ${backend}: ${PODS - healthy} not healthy, e.g. ${JSON.stringify(findings.find((f) => f.verdict !== 'healthy'))}`);
      }
      rows.push({ backend, pods: PODS, programMs, passMs, healthy });
    } finally {
      for (const ns of netns) removeNetns(ns);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  console.log(`\n== 4. Repair scan: one full verification pass over ${PODS} programmed pods (ms, median of ${PASSES})`);
  console.log(table(['backend', 'pods', 'programming all', 'pass', 'per pod', 'healthy'], rows.map((r) => [r.backend, r.pods, r.programMs, median(r.passMs), median(r.passMs) / r.pods, r.healthy])));
  writeResult('repair-scan', { pods: PODS, passes: PASSES, rows });
  return rows.map((r) => ({
    name: `repair-scan-${r.backend}`,
    value: median(r.passMs) / 1000,
    unit: 's',
    target: 2,
    atMost: true,
    note: `${r.pods} pods, ${r.healthy} healthy`,
  }));
}
