/**
 * The nftables backend against the kernel: every golden case loads and reads back as planned, rule counts
 * stay flat however long the lists, a failing transaction changes nothing, and only our tables are touched.
 */
import test, { type ExecutionContext } from 'ava';
import { applyPlan, applyRedirect, checkRedirect, removeRedirect, type BackendName } from '../../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../../src/redirect/config';
import { buildPlan, type Plan, type Rule } from '../../../src/redirect/plan';
import { NftablesBackend, nftProgram } from '../../../src/redirect/nftables/backend';
import { CommandFailedError } from '../../../src/errors';
import { createNetns, netnsPath, inNetns, tryInNetns } from '../../support/netns';
import { requireKernelTools, requireNft } from '../../support/require';
import { PLAN_CASES } from '../cases';

const FAMILIES = ['ipv4', 'ipv6'] as const;

function podNetns(t: ExecutionContext): { name: string; path: string } {
  requireKernelTools(t);
  requireNft(t);
  const name = createNetns(t, 'pod');
  return { name, path: netnsPath(name) };
}

function ourTables(netns: string): string[] {
  return inNetns(netns, nftProgram(), ['list', 'tables'])
    .split('\n')
    .filter((l) => l.includes('mesh-cni-'));
}

/** Rules in our tables, counted from `nft -j`, which lists each rule as one object. */
function nftRuleCount(netns: string): number {
  const items = (JSON.parse(inNetns(netns, nftProgram(), ['-j', 'list', 'ruleset', 'inet'])) as { nftables: Array<{ rule?: { table: string } }> }).nftables;
  return items.filter((i) => i.rule?.table.startsWith('mesh-cni-')).length;
}

function iptablesRuleCount(netns: string): number {
  return ['iptables-nft-save', 'ip6tables-nft-save']
    .map((tool) => inNetns(netns, tool, []).split('\n').filter((l) => l.startsWith('-A ')).length)
    .reduce((a, b) => a + b, 0);
}

function anyIptablesRules(netns: string): string {
  return ['iptables-nft-save', 'ip6tables-nft-save', 'iptables-legacy-save', 'ip6tables-legacy-save']
    .map((tool) => tryInNetns(netns, tool, []).stdout)
    .join('')
    .split('\n')
    .filter((l) => l.startsWith('-A ') || l.includes('ISTIO_'))
    .join('\n');
}

for (const backend of ['nftables', 'iptables-nft', 'iptables-legacy'] as BackendName[]) {
  test.serial(`${backend}: every golden case applies, reads back as planned (both families, then IPv4 alone) and checks clean`, async (t) => {
    const ns = podNetns(t);
    for (const c of PLAN_CASES) {
      const config = redirectConfigFromAnnotations(c.annotations, c.proxy);
      for (const families of [[...FAMILIES], ['ipv4' as const]]) {
        // The iptables backend programs each family on its own and leaves a family it is not asked about
        // alone, so going from two families to one needs a remove there; one nft transaction replaces both.
        if (families.length === 1 && backend !== 'nftables') await removeRedirect({ netns: ns.path, backend });
        // applyRedirect reads the rules back and throws RuleMismatchError on any difference.
        await t.notThrowsAsync(applyRedirect({ netns: ns.path, backend, config, families }), `${c.name} (${families.join('+')})`);
        const check = await checkRedirect({ netns: ns.path, backend, config, families });
        t.deepEqual(check.problems, [], `${c.name} (${families.join('+')})`);
      }
    }
    await removeRedirect({ netns: ns.path, backend });
    if (backend === 'nftables') t.deepEqual(ourTables(ns.name), []);
  });
}

test.serial('nftables: 200 excluded CIDRs take as many rules as 2 (iptables: one more rule per CIDR)', async (t) => {
  const ns = podNetns(t);
  const cidrs = (n: number) => Array.from({ length: n }, (_, i) => `10.${Math.floor(i / 100)}.${(i % 100) * 2}.0/24`).join(',');
  const counts: Record<string, number> = {};
  for (const n of [2, 200]) {
    const config = redirectConfigFromAnnotations({ 'traffic.sidecar.istio.io/excludeOutboundIPRanges': cidrs(n) });
    await applyRedirect({ netns: ns.path, backend: 'nftables', config, families: [...FAMILIES] });
    counts[`nftables ${n}`] = nftRuleCount(ns.name);
    await removeRedirect({ netns: ns.path, backend: 'nftables' });
    await applyRedirect({ netns: ns.path, backend: 'iptables-nft', config, families: [...FAMILIES] });
    counts[`iptables ${n}`] = iptablesRuleCount(ns.name);
    await removeRedirect({ netns: ns.path, backend: 'iptables-nft' });
  }
  t.log(`rules for 2 vs 200 excluded CIDRs, both families: ${JSON.stringify(counts)}`);
  t.is(counts['nftables 200'], counts['nftables 2']);
  t.is(counts['iptables 200'], counts['iptables 2'] + 198);
});

/** A plan the kernel refuses: a TPROXY rule in an output chain (tproxy is only valid in prerouting). */
function planTheKernelRejects(): Plan {
  const plan = buildPlan(redirectConfigFromAnnotations({ 'sidecar.istio.io/interceptionMode': 'TPROXY' }, { dnsCapture: true }));
  const bad: Rule = { table: 'mangle', chain: 'OUTPUT', matches: [{ kind: 'protocol', protocol: 'tcp' }], target: { kind: 'tproxy', port: 15006, mark: 1337 }, purpose: 'kernel-rejects-this' };
  return { ...plan, ipv4: { ...plan.ipv4, rules: [...plan.ipv4.rules, bad] } };
}

test.serial('nftables: a transaction the kernel rejects leaves no table on a fresh netns and the previous ruleset untouched otherwise', async (t) => {
  const ns = podNetns(t);
  const backend = new NftablesBackend();
  const err = await t.throwsAsync(backend.apply(ns.path, planTheKernelRejects(), [...FAMILIES]), { instanceOf: CommandFailedError });
  t.regex(err!.message, /Operation not supported/);
  t.deepEqual(ourTables(ns.name), [], 'none of the three tables was created, though their definitions came first in the script');

  const good = buildPlan(redirectConfigFromAnnotations({}));
  await backend.apply(ns.path, good, [...FAMILIES]);
  const before = inNetns(ns.name, nftProgram(), ['list', 'ruleset', 'inet']);
  await t.throwsAsync(backend.apply(ns.path, planTheKernelRejects(), [...FAMILIES]));
  t.is(inNetns(ns.name, nftProgram(), ['list', 'ruleset', 'inet']), before, 'the delete of the old tables was rolled back with the rest');
});

test.serial('nftables: when apply fails the engine leaves no mesh-cni table and nothing in iptables', async (t) => {
  const ns = podNetns(t);
  await applyRedirect({ netns: ns.path, backend: 'nftables', config: redirectConfigFromAnnotations({}), families: [...FAMILIES] });
  await t.throwsAsync(applyPlan({ netns: ns.path, backend: 'nftables', plan: planTheKernelRejects(), families: [...FAMILIES] }), { instanceOf: CommandFailedError });
  t.deepEqual(ourTables(ns.name), [], 'fail closed: the old rules are removed too');
  t.is(anyIptablesRules(ns.name), '', 'no iptables rules either');
});

test.serial('nftables: a missing nft is reported naming the package', async (t) => {
  const ns = podNetns(t);
  const backend = new NftablesBackend({ nft: '/nonexistent/nft' });
  const err = await t.throwsAsync(backend.apply(ns.path, buildPlan(redirectConfigFromAnnotations({})), ['ipv4']), { instanceOf: CommandFailedError });
  t.regex(err!.hint ?? '', /nftables/);
});

test.serial("nftables: apply and remove touch only our tables, and removing twice is fine", async (t) => {
  const ns = podNetns(t);
  inNetns(ns.name, nftProgram(), ['-f', '-'], 'add table inet theirs\nadd chain inet theirs output { type filter hook output priority 0 ; }\nadd rule inet theirs output counter accept\n');
  await applyRedirect({ netns: ns.path, backend: 'nftables', config: redirectConfigFromAnnotations({ 'sidecar.istio.io/interceptionMode': 'TPROXY' }, { dnsCapture: true }), families: [...FAMILIES] });
  t.is(ourTables(ns.name).length, 3, 'nat, mangle and raw');
  const { removed } = await removeRedirect({ netns: ns.path, backend: 'nftables' });
  t.true(removed > 0);
  t.deepEqual(ourTables(ns.name), []);
  t.regex(inNetns(ns.name, nftProgram(), ['list', 'table', 'inet', 'theirs']), /counter packets \d+ bytes \d+ accept/);
  t.deepEqual(await removeRedirect({ netns: ns.path, backend: 'nftables' }), { removed: 0 });
});

test.serial('nftables: a changed config leaves no stale table or chain behind', async (t) => {
  const ns = podNetns(t);
  await applyRedirect({ netns: ns.path, backend: 'nftables', config: redirectConfigFromAnnotations({ 'sidecar.istio.io/interceptionMode': 'TPROXY' }, { dnsCapture: true }), families: [...FAMILIES] });
  await applyRedirect({ netns: ns.path, backend: 'nftables', config: redirectConfigFromAnnotations({ 'traffic.sidecar.istio.io/includeInboundPorts': '' }), families: [...FAMILIES] });
  t.deepEqual(ourTables(ns.name), ['table inet mesh-cni-nat']);
  t.notRegex(inNetns(ns.name, nftProgram(), ['list', 'table', 'inet', 'mesh-cni-nat']), /chain prerouting/, 'no inbound capture, so no prerouting chain');
});
