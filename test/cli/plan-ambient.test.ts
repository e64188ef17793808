/** `mesh-cni plan --dataplane ambient`, run as a person runs it: Istio's in-pod rules for the options given. */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mesh } from '../support/cli';
import { stripOwnerTags } from '../../src/redirect/iptables/render';

const GOLDENS = path.resolve(__dirname, '../../../test/golden/istio/ambient/iptables');

/** The restore text of the output: everything after the comment lines. */
function restoreText(stdout: string): string {
  return stripOwnerTags(
    stdout
      .split('\n')
      .filter((l) => !l.startsWith('#'))
      .join('\n'),
  ).trimEnd();
}

/** Istio's golden without the two save calls its stub recorded. */
function istio(name: string): string {
  return fs.readFileSync(path.join(GOLDENS, `${name}.golden`), 'utf8').split('\n').slice(2).join('\n').trimEnd();
}

test('plan --dataplane ambient: both families and DNS capture by default (the chart\'s defaults), Istio\'s text', (t) => {
  const r = mesh(['plan', '--dataplane', 'ambient', '--backend', 'iptables', '--host-probe-snat-ipv6', 'e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^# dataplane: ambient/m);
  t.regex(r.stdout, /^# routing \(ipv6\): ip rule fwmark 0x111\/0xfff pref 32764 lookup 100; ip route local default dev lo table 100$/m);
  t.is(restoreText(r.stdout), istio('default_ipv6'));
});

test('plan --dataplane ambient with annotations, --no-dns-capture and --no-ipv6: Istio\'s ingress and virtual-interface cases', (t) => {
  const ingress = mesh(['plan', '--dataplane', 'ambient', '--backend', 'iptables', '--no-dns-capture', '--no-ipv6', '-a', 'ambient.istio.io/bypass-inbound-capture=true']);
  t.is(ingress.code, 0, ingress.stderr);
  t.is(restoreText(ingress.stdout), istio('ingress'));
  const virt = mesh(['plan', '--dataplane', 'ambient', '--backend', 'iptables', '--no-dns-capture', '--no-ipv6', '-a', 'istio.io/reroute-virtual-interfaces=fake1s0f0,fake1s0f1']);
  t.is(restoreText(virt.stdout), istio('virtual_interfaces'));
  const podDns = mesh(['plan', '--dataplane', 'ambient', '--backend', 'iptables', '--no-dns-capture', '--no-ipv6', '-a', 'ambient.istio.io/dns-capture=true']);
  t.is(restoreText(podDns.stdout), istio('dns_pod_enabled_and_off_globally'));
});

test('plan --dataplane ambient: the probe address reaches the rules; a bad one or a bad annotation is refused', (t) => {
  const r = mesh(['plan', '--dataplane', 'ambient', '--backend', 'nftables', '--no-ipv6', '--host-probe-snat-ip', '169.254.9.9', '-o', 'json']);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.is(out.dataplane, 'ambient');
  t.true(out.rules.some((x: { rule: string }) => x.rule.includes('ip saddr 169.254.9.9')), JSON.stringify(out.rules));
  t.is(mesh(['plan', '--dataplane', 'ambient', '--host-probe-snat-ip', 'fd00::1']).code, 2);
  const bad = mesh(['plan', '--dataplane', 'ambient', '-a', 'ambient.istio.io/bypass-inbound-capture=maybe']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /bypass-inbound-capture="maybe": not a boolean/);
  t.is(mesh(['plan', '--dataplane', 'ambient', '--proxy-uid', '1000']).code, 2, 'sidecar-only options are usage errors');
});
