/**
 * Benchmark 6, rule count: rules programmed (read back from the kernel) against the number of excluded
 * outbound CIDRs and excluded inbound ports, both backends. iptables needs a rule per entry; nftables puts
 * them in anonymous sets, so its count stays flat.
 */
import { applyRedirect, showRedirect, type BackendName } from '../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../src/redirect/config';
import { INJECTED } from './agent-process';
import { freshNetns, now, removeNetns, table, writeResult, type Summary } from './lib';

const SIZES = [0, 1, 10, 50, 100, 250];

function annotations(n: number): Record<string, string> {
  const a: Record<string, string> = { ...INJECTED };
  if (n > 0) {
    a['traffic.sidecar.istio.io/excludeOutboundIPRanges'] = Array.from({ length: n }, (_, i) => `10.${200 + Math.floor(i / 250)}.${i % 250}.0/24`).join(',');
    a['traffic.sidecar.istio.io/excludeInboundPorts'] = Array.from({ length: n }, (_, i) => String(20000 + i)).join(',');
  }
  return a;
}

export async function benchRuleCount(): Promise<Summary[]> {
  const rows: Array<{ backend: string; excluded: number; rules: number; applyMs: number }> = [];
  for (const backend of ['iptables', 'nftables'] as BackendName[]) {
    for (const n of SIZES) {
      const netns = freshNetns();
      try {
        const config = redirectConfigFromAnnotations(annotations(n));
        const started = now();
        await applyRedirect({ netns, config, backend });
        const applyMs = now() - started;
        const shown = await showRedirect({ netns, backend, families: ['ipv4'] });
        rows.push({ backend, excluded: n, rules: shown.rules.length, applyMs });
      } finally {
        removeNetns(netns);
      }
    }
  }
  console.log('\n== 6. Rules in the kernel vs excluded CIDRs and ports (n CIDRs + n ports, IPv4, read back)');
  console.log(table(['backend', 'excluded (n)', 'rules', 'apply ms'], rows.map((r) => [r.backend, r.excluded, r.rules, r.applyMs])));
  writeResult('rule-count', { sizes: SIZES, rows });
  const count = (b: string, n: number) => rows.find((r) => r.backend === b && r.excluded === n)!.rules;
  const max = SIZES[SIZES.length - 1]!;
  return [
    { name: 'nft-rules-growth', value: count('nftables', max) / count('nftables', 1), unit: 'x', target: 1.0, atMost: true, note: `n=1: ${count('nftables', 1)} rules, n=${max}: ${count('nftables', max)}` },
  ];
}
