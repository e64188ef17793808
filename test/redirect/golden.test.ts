/**
 * Golden tests (string comparison, no kernel): both renderers pinned for every annotation case, and the
 * iptables one compared rule for rule with Istio HEAD's own goldens (test/golden/istio, SOURCE.md there) for
 * every case a pod can express through the CNI path, ignoring our owner tag (`-m comment --comment
 * mesh-cni/...` on built-in-chain rules, which Istio does not write). The kernel tests prove separately that
 * each nft script loads and reads back as planned.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { buildPlan } from '../../src/redirect/plan';
import { preparedFor } from '../../src/redirect/prepare';
import { renderRestore, stripOwnerTags } from '../../src/redirect/iptables/render';
import { renderNftScript } from '../../src/redirect/nftables/render';
import { assertGolden } from '../support/golden';
import { REPO_ROOT } from '../support/paths';
import { decideMeshing } from '../../src/mesh/decision';
import type { Family } from '../../src/redirect/constants';
import { casesTable, ISTIO_HEAD_CASES, podInfo, restoresOf, UNREFERENCED_GOLDENS, type IstioTestPod } from './istio-head';
import { PLAN_CASES } from './cases';

const render = (c: (typeof PLAN_CASES)[number]) => {
  const plan = buildPlan(redirectConfigFromAnnotations(c.annotations, c.proxy));
  return `# ipv4\n${renderRestore(plan.ipv4.rules)}# ipv6\n${renderRestore(plan.ipv6.rules)}`;
};

const renderNft = (c: (typeof PLAN_CASES)[number]) => renderNftScript(buildPlan(redirectConfigFromAnnotations(c.annotations, c.proxy)), ['ipv4', 'ipv6']);

for (const c of PLAN_CASES) {
  test(`golden: iptables ${c.name}`, (t) => assertGolden(t, 'iptables', c.name, render(c)));
  test(`golden: nftables ${c.name}`, (t) => assertGolden(t, 'nftables', c.name, renderNft(c)));
}

const ISTIO_GOLDENS = path.join(REPO_ROOT, 'test/golden/istio');

/** Our restore text for one family of a pod, as our decision, config, plan and renderer make it, without our owner tags. */
function oursFor(pod: IstioTestPod, family: Family): string {
  const decision = decideMeshing(podInfo(pod), { excludeNamespaces: ['kube-system'] });
  if (!decision.meshed) throw new Error(`the pod is not meshed: ${decision.reason}`);
  if (decision.dataplane === 'ambient') throw new Error('the pod is ambient');
  return stripOwnerTags(renderRestore(preparedFor(decision).plan[family].rules));
}

const expressible = ISTIO_HEAD_CASES.filter((c) => !c.skip);
for (const c of expressible) {
  test(`golden: Istio HEAD ${c.id} rule for rule (${c.families.join(', ')})`, (t) => {
    const theirs = restoresOf(fs.readFileSync(path.join(ISTIO_GOLDENS, c.golden), 'utf8'));
    t.is(theirs.length, c.families.length, `${c.golden} holds ${theirs.length} restores for ${c.families.length} families`);
    c.families.forEach((family, i) => t.is(oursFor(c.pod!, family), theirs[i], `${family}: ours differ from ${c.golden}`));
  });
}

test('golden: every Istio HEAD golden is compared or listed as skipped with its reason', (t) => {
  const files = ['capture', 'cni-plugin'].flatMap((dir) => fs.readdirSync(path.join(ISTIO_GOLDENS, dir)).map((f) => `${dir}/${f}`));
  const accounted = new Set([...ISTIO_HEAD_CASES.map((c) => c.golden), ...UNREFERENCED_GOLDENS.map(([file]) => file)]);
  t.deepEqual(files.filter((f) => !accounted.has(f)), [], 'goldens no case reads');
  for (const c of ISTIO_HEAD_CASES) t.true(c.pod !== undefined || (c.skip?.length ?? 0) > 0, `${c.id}: neither a pod nor a reason`);
  const v6 = expressible.filter((c) => c.families.includes('ipv6')).length;
  t.log(`${expressible.length} of ${ISTIO_HEAD_CASES.length} Istio HEAD cases compared (IPv4 ${expressible.length}, IPv6 ${v6}); skipped: ${ISTIO_HEAD_CASES.filter((c) => c.skip).map((c) => c.id).join(', ')}`);
});

test('golden: the case table in test/golden/istio/SOURCE.md is made from istio-head.ts', (t) => {
  const file = path.join(ISTIO_GOLDENS, 'SOURCE.md');
  const text = fs.readFileSync(file, 'utf8');
  const open = '<!-- cases -->\n';
  const close = '<!-- /cases -->';
  const from = text.indexOf(open) + open.length;
  const to = text.indexOf(close);
  t.true(from >= open.length && to >= from, 'SOURCE.md has its <!-- cases --> markers');
  const wanted = `${text.slice(0, from)}${casesTable()}${text.slice(to)}`;
  if (process.env.UPDATE_GOLDEN === '1') fs.writeFileSync(file, wanted);
  t.is(fs.readFileSync(file, 'utf8'), wanted, 'run npm run test:golden:update');
});

test('golden: INVALID_DROP is Istio\'s text (istio-iptables testdata drop-invalid.golden, mangle table)', (t) => {
  const c = PLAN_CASES.find((x) => x.name === 'invalid-drop')!;
  const restore = stripOwnerTags(renderRestore(buildPlan(redirectConfigFromAnnotations(c.annotations, c.proxy)).ipv4.rules));
  const mangle = restore.slice(restore.indexOf('* mangle'), restore.indexOf('COMMIT', restore.indexOf('* mangle')) + 'COMMIT'.length);
  t.is(mangle, ['* mangle', '-N ISTIO_DROP', '-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP', '-A ISTIO_DROP -j DROP', 'COMMIT'].join('\n'));
});

test('golden: istio.io/reroute-virtual-interfaces is preferred; present but empty still hides the deprecated one', (t) => {
  const rules = (a: Record<string, string>) => stripOwnerTags(renderRestore(buildPlan(redirectConfigFromAnnotations(a)).ipv4.rules));
  const both = rules({ 'istio.io/reroute-virtual-interfaces': 'k6t-eth0', 'traffic.sidecar.istio.io/kubevirtInterfaces': 'tap9' });
  t.regex(both, /-I PREROUTING 1 -i k6t-eth0 -j ISTIO_REDIRECT/);
  t.notRegex(both, /tap9/);
  t.notRegex(rules({ 'istio.io/reroute-virtual-interfaces': '', 'traffic.sidecar.istio.io/kubevirtInterfaces': 'tap9' }), /tap9/);
  t.regex(rules({ 'traffic.sidecar.istio.io/kubevirtInterfaces': 'tap9' }), /-i tap9/);
});
