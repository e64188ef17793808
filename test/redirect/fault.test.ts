/**
 * Fault tests: a restore that fails half way must leave none of our rules, in any family or table, and none
 * of the policy routing either. The failure is real: the plan gets one extra rule the kernel rejects.
 */
import test from 'ava';
import { applyPlan, type BackendName } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { buildPlan, type Plan, type Rule } from '../../src/redirect/plan';
import { CommandFailedError } from '../../src/errors';
import { createPodPeer, tryInNetns } from '../support/netns';
import { requireKernelTools } from '../support/require';

/** A rule iptables accepts syntactically but the kernel refuses to load (there is no such conntrack state). */
const UNLOADABLE: Rule = {
  table: 'nat',
  chain: 'ISTIO_OUTPUT',
  matches: [{ kind: 'ctstate', states: ['NO_SUCH_STATE'] }],
  target: { kind: 'return' },
  purpose: 'fault-injection',
};

function withFault(plan: Plan, family: 'ipv4' | 'ipv6'): Plan {
  return { ...plan, [family]: { ...plan[family], rules: [...plan[family].rules, UNLOADABLE] } };
}

function leftovers(pod: string, flavour: 'nft' | 'legacy'): string {
  const found: string[] = [];
  for (const tool of [`iptables-${flavour}-save`, `ip6tables-${flavour}-save`]) {
    const out = tryInNetns(pod, tool, []).stdout;
    found.push(...out.split('\n').filter((l) => /ISTIO_|TPROXY|CONNMARK|--zone/.test(l)).map((l) => `${tool}: ${l}`));
  }
  for (const fam of ['-4', '-6']) {
    found.push(...tryInNetns(pod, 'ip', [fam, 'rule', 'list']).stdout.split('\n').filter((l) => l.includes('lookup 133')));
    found.push(...tryInNetns(pod, 'ip', [fam, 'route', 'show', 'table', '133']).stdout.split('\n').filter(Boolean));
  }
  found.push(...tryInNetns(pod, 'ip', ['-6', 'addr', 'show', 'dev', 'lo']).stdout.split('\n').filter((l) => l.includes('::6/128')));
  return found.join('\n');
}

const cases: Array<{ name: string; backend: BackendName; flavour: 'nft' | 'legacy'; fail: 'ipv4' | 'ipv6'; annotations: Record<string, string> }> = [
  { name: 'IPv6 fails after IPv4 was committed', backend: 'iptables-nft', flavour: 'nft', fail: 'ipv6', annotations: {} },
  { name: 'IPv6 fails after IPv4 was committed', backend: 'iptables-legacy', flavour: 'legacy', fail: 'ipv6', annotations: {} },
  // Legacy iptables-restore commits table by table: mangle (TPROXY) is in before nat fails.
  { name: 'nat fails after mangle was committed (TPROXY)', backend: 'iptables-legacy', flavour: 'legacy', fail: 'ipv4', annotations: { 'sidecar.istio.io/interceptionMode': 'TPROXY' } },
  { name: 'nat fails after mangle was committed (TPROXY)', backend: 'iptables-nft', flavour: 'nft', fail: 'ipv6', annotations: { 'sidecar.istio.io/interceptionMode': 'TPROXY' } },
];

for (const c of cases) {
  test.serial(`fault ${c.backend}: ${c.name} → zero rules of ours left`, async (t) => {
    requireKernelTools(t);
    const pair = createPodPeer(t);
    const plan = withFault(buildPlan(redirectConfigFromAnnotations(c.annotations)), c.fail);
    const err = await t.throwsAsync(applyPlan({ netns: pair.podPath, backend: c.backend, plan, families: ['ipv4', 'ipv6'] }));
    t.true(err instanceof CommandFailedError, String(err));
    t.regex(err!.message, /restore/);
    t.is(leftovers(pair.pod, c.flavour), '', 'nothing of ours may remain');
  });
}

test.serial('fault: a failed re-apply over a working config leaves nothing either (fail closed)', async (t) => {
  requireKernelTools(t);
  const pair = createPodPeer(t);
  const good = buildPlan(redirectConfigFromAnnotations({}));
  await applyPlan({ netns: pair.podPath, backend: 'iptables-nft', plan: good, families: ['ipv4', 'ipv6'] });
  t.not(leftovers(pair.pod, 'nft'), '');
  await t.throwsAsync(applyPlan({ netns: pair.podPath, backend: 'iptables-nft', plan: withFault(good, 'ipv4'), families: ['ipv4', 'ipv6'] }));
  t.is(leftovers(pair.pod, 'nft'), '');
});
