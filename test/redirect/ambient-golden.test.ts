/**
 * Golden tests (string comparison, no kernel): ambient's in-pod rules through our iptables renderer are Istio
 * HEAD's, rule for rule and in order, for every case of cni/pkg/iptables/testdata in both families (our owner
 * tag on built-in-chain rules, which Istio does not write, left out). The nft side is judged by the kernel in
 * ambient-kernel.test.ts; here its script is pinned, and checked to name Istio's chains.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ambientConfigFromAnnotations } from '../../src/redirect/ambient/config';
import { buildAmbientPlan } from '../../src/redirect/ambient/plan';
import { renderRestore, stripOwnerTags } from '../../src/redirect/iptables/render';
import { renderNftScript } from '../../src/redirect/nftables/render';
import { InvalidConfigError } from '../../src/errors';
import { AMBIENT_CASES, ISTIO_TEST_NODE } from './ambient-cases';

const GOLDENS = path.resolve(__dirname, '../../../test/golden/istio/ambient');

function istio(kind: 'iptables' | 'nftables', name: string): string {
  return fs.readFileSync(path.join(GOLDENS, kind, `${name}.golden`), 'utf8');
}

for (const c of AMBIENT_CASES) {
  for (const ipv6 of [false, true]) {
    const golden = `${c.name}${ipv6 ? '_ipv6' : ''}`;
    test(`golden: ambient iptables ${golden} is Istio HEAD's rule for rule`, (t) => {
      const plan = buildAmbientPlan(ambientConfigFromAnnotations(c.annotations, { ...ISTIO_TEST_NODE, dnsCapture: c.dnsCapture, ipv6 }));
      // Istio's stub records the two save calls of its state check first, then each family's restore input.
      const ours = ['iptables-save', 'ip6tables-save', stripOwnerTags(renderRestore(plan.ipv4.rules)).trimEnd(), ...(ipv6 ? [stripOwnerTags(renderRestore(plan.ipv6.rules)).trimEnd()] : [])].join('\n');
      t.is(ours, istio('iptables', golden));
    });
  }
}

test('golden: every Istio in-pod golden is one of the cases (none left out)', (t) => {
  const files = fs.readdirSync(path.join(GOLDENS, 'iptables')).filter((f) => !f.startsWith('hostprobe'));
  const covered = AMBIENT_CASES.flatMap((c) => [`${c.name}.golden`, `${c.name}_ipv6.golden`]);
  t.deepEqual(files.sort(), covered.sort());
});

test('golden: the owner tag is on every built-in-chain rule and only there', (t) => {
  const text = renderRestore(buildAmbientPlan(ambientConfigFromAnnotations({}, ISTIO_TEST_NODE)).ipv4.rules);
  for (const line of text.split('\n').filter((l) => l.startsWith('-A ') || l.startsWith('-I '))) {
    const builtin = /^-[AI] (PREROUTING|OUTPUT|POSTROUTING) /.test(line);
    t.is(line.includes('--comment mesh-cni/'), builtin, line);
  }
});

test('golden: the nft script keeps Istio\'s chain names and hooks, both families in one transaction', (t) => {
  const script = renderNftScript(buildAmbientPlan(ambientConfigFromAnnotations({}, ISTIO_TEST_NODE)), ['ipv4', 'ipv6']);
  t.regex(script, /add chain inet mesh-cni-nat istio-prerouting\n/);
  t.regex(script, /add chain inet mesh-cni-nat istio-output\n/);
  t.regex(script, /add chain inet mesh-cni-mangle output \{ type route hook output priority -150 ; \}/);
  t.regex(script, /ct mark set ct mark & 0xfffff111 \| 0x111/);
  t.regex(script, /ip6 saddr e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164 meta l4proto tcp counter accept/);
});

test('annotations: Istio\'s three are read, a sidecar annotation is not, and a bad boolean is refused', (t) => {
  const c = ambientConfigFromAnnotations({ 'ambient.istio.io/dns-capture': 'False', 'ambient.istio.io/bypass-inbound-capture': '1', 'traffic.sidecar.istio.io/excludeOutboundPorts': '5432' });
  t.false(c.dnsCapture);
  t.true(c.ingressMode);
  const plain = buildAmbientPlan(ambientConfigFromAnnotations({}));
  const withSidecarAnnotation = buildAmbientPlan(ambientConfigFromAnnotations({ 'traffic.sidecar.istio.io/excludeOutboundPorts': '5432' }));
  t.deepEqual(withSidecarAnnotation.ipv4.rules, plain.ipv4.rules, 'ambient reads no traffic.sidecar.istio.io annotation');
  t.throws(() => ambientConfigFromAnnotations({ 'ambient.istio.io/dns-capture': 'yes' }), { instanceOf: InvalidConfigError, message: /ambient\.istio\.io\/dns-capture="yes"/ });
  t.throws(() => ambientConfigFromAnnotations({ 'istio.io/reroute-virtual-interfaces': 'eth0,a/b' }), { instanceOf: InvalidConfigError });
});

test('the in-pod routing of both families is part of the plan (fwmark 0x111/0xfff pref 32764, local route in table 100)', (t) => {
  const plan = buildAmbientPlan(ambientConfigFromAnnotations({}));
  for (const family of ['ipv4', 'ipv6'] as const) {
    t.deepEqual(plan[family].links, [
      { kind: 'rule', family, fwmark: 0x111, mask: 0xfff, priority: 32764, table: 100 },
      { kind: 'route', family, type: 'local', dst: 'default', dev: 'lo', table: 100 },
    ]);
  }
});
