/**
 * Benchmark 4, repair scan: 500 pods known to the agent -- 500 netns programmed by the engine, an attachment
 * record for each (as ADD writes it), and stand-in V1Pod objects as the watch cache would hold them -- and
 * the time of one full verification pass of the Reconciler wired with the agent's own netns dependencies
 * (src/repair/wiring.ts netnsDeps: locate by attachment record, read the rules back, compare with the plan).
 * Per backend. The first pass is cold: every netns is listed (one iptables-save per pod for IPv4, IPv6
 * skipped where the netns has no IPv6 table; one nft listing per pod). The later passes are the agent's
 * steady resync: a netns whose nf_tables generation has not moved since it was found healthy is not listed
 * again (src/repair/check.ts). Both are reported, each against the target. Every pod must come out healthy.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { AttachmentStore } from '../src/state/attachments';
import { redirectConfigFromAnnotations } from '../src/redirect/config';
import { applyRedirect, type BackendName } from '../src/redirect/engine';
import { Reconciler } from '../src/repair/reconciler';
import { netnsDeps } from '../src/repair/wiring';
import { INJECTED } from './agent-process';
import { freshNetnsBatch, median, now, removeNetns, table, tempDir, writeResult, type Summary } from './lib';

const PODS = Number(process.env.BENCH_REPAIR_PODS ?? 500);
const PASSES = 4;

function standInPod(i: number): V1Pod {
  return {
    metadata: { name: `pod-${i}`, namespace: 'bench', uid: `uid-${i}`, annotations: INJECTED },
    spec: { containers: [{ name: 'app' }, { name: 'istio-proxy', securityContext: { runAsUser: 1337, runAsGroup: 1337 } }] },
    status: { podIP: `10.${100 + Math.floor(i / 250)}.${i % 250}.2` },
  } as V1Pod;
}

export async function benchRepairScan(): Promise<Summary[]> {
  const rows: Array<{ backend: string; pods: number; programMs: number; passMs: number[]; healthy: number; listingsPerPass: number[] }> = [];
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
      const listingsPerPass: number[] = [];
      let healthy = 0;
      for (let p = 0; p < PASSES; p++) {
        const listed = deps.checkStats.listings;
        const t = now();
        const findings = await reconciler.pass();
        passMs.push(now() - t);
        listingsPerPass.push(deps.checkStats.listings - listed);
        healthy = findings.filter((f) => f.verdict === 'healthy').length;
        if (healthy !== PODS) console.log(`repair scan ${backend}: ${PODS - healthy} not healthy, e.g. ${JSON.stringify(findings.find((f) => f.verdict !== 'healthy'))}`);
      }
      rows.push({ backend, pods: PODS, programMs, passMs, healthy, listingsPerPass });
    } finally {
      for (const ns of netns) removeNetns(ns);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const steady = (r: (typeof rows)[number]) => median(r.passMs.slice(1));
  console.log(`\n== 4. Repair scan: verification passes over ${PODS} programmed pods (ms; steady: median of passes 2..${PASSES})`);
  console.log(
    table(
      ['backend', 'pods', 'programming all', 'cold pass', 'listings', 'steady pass', 'listings', 'per pod (steady)', 'healthy'],
      rows.map((r) => [r.backend, r.pods, r.programMs, r.passMs[0]!, r.listingsPerPass[0]!, steady(r), r.listingsPerPass[PASSES - 1]!, steady(r) / r.pods, r.healthy]),
    ),
  );
  writeResult('repair-scan', { pods: PODS, passes: PASSES, rows });
  const target = (backend: string) => (backend === 'nftables' ? 1 : 2);
  return rows.flatMap((r) => [
    { name: `repair-scan-${r.backend}`, value: steady(r) / 1000, unit: 's', target: target(r.backend), atMost: true, note: `${r.pods} pods, ${r.healthy} healthy; steady resync, ${r.listingsPerPass[PASSES - 1]} listings` },
    { name: `repair-scan-cold-${r.backend}`, value: r.passMs[0]! / 1000, unit: 's', target: target(r.backend), atMost: true, note: `first pass, ${r.listingsPerPass[0]} family listings` },
  ]);
}
