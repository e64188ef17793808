/**
 * `--backend auto`: the decision table on its own, then real "host" namespaces set up each way (legacy
 * rules, iptables-nft rules, native nft rules, nothing), then the CLI saying what it chose and why.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { decideBackend, detectBackend, type ConcreteBackend, type HostRuleCounts } from '../../src/redirect/detect';
import { applyRedirect } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { nftProgram } from '../../src/redirect/nftables/backend';
import { createNetns, inNetns, netnsPath } from '../support/netns';
import { requireKernelTools, requireNft } from '../support/require';
import { CLI } from '../support/paths';

const DECISIONS: Array<[string, HostRuleCounts, ConcreteBackend, RegExp]> = [
  ['native nft rules only', { legacy: 0, iptablesNft: 0, nativeNft: 12 }, 'nftables', /12 native nftables rules and no iptables-legacy/],
  ['native nft and iptables-nft rules', { legacy: 0, iptablesNft: 30, nativeNft: 5 }, 'nftables', /native nftables/],
  ['native nft rules beside legacy rules', { legacy: 3, iptablesNft: 0, nativeNft: 5 }, 'iptables-legacy', /iptables-legacy \(3 rules, 0 in iptables-nft\)/],
  ['more legacy than nft rules', { legacy: 40, iptablesNft: 2, nativeNft: 0 }, 'iptables-legacy', /40 rules, 2 in iptables-nft/],
  ['iptables-nft rules', { legacy: 0, iptablesNft: 40, nativeNft: 0 }, 'iptables-nft', /in iptables-nft \(40 rules/],
  ['an empty host', { legacy: 0, iptablesNft: 0, nativeNft: 0 }, 'iptables-nft', /no rules yet.*Istio's default/],
  ['no iptables binaries at all (RHEL 10 without iptables-nft)', { nativeNft: 0 }, 'nftables', /no iptables-nft binaries/],
  ['no legacy binaries (RHEL 10), empty', { iptablesNft: 0, nativeNft: 0 }, 'iptables-nft', /Istio's default/],
];

for (const [what, counts, backend, reason] of DECISIONS) {
  test(`auto decision: ${what} → ${backend}`, (t) => {
    const choice = decideBackend(counts);
    t.is(choice.backend, backend);
    t.regex(choice.reason, reason);
  });
}

const HOSTS: Array<[string, (ns: string) => void, ConcreteBackend]> = [
  ['legacy rules present', (ns) => inNetns(ns, 'iptables-legacy', ['-A', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT']), 'iptables-legacy'],
  ['iptables-nft rules present', (ns) => inNetns(ns, 'iptables-nft', ['-A', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT']), 'iptables-nft'],
  [
    'native nft rules present',
    (ns) => inNetns(ns, nftProgram(), ['-f', '-'], 'add table inet host-fw\nadd chain inet host-fw input { type filter hook input priority 0 ; }\nadd rule inet host-fw input tcp dport 22 accept\n'),
    'nftables',
  ],
  ['empty', () => undefined, 'iptables-nft'],
];

for (const [what, setUp, expected] of HOSTS) {
  test.serial(`auto detection in a host netns with ${what} → ${expected}`, async (t) => {
    requireKernelTools(t);
    requireNft(t);
    const host = createNetns(t, 'host');
    setUp(host);
    const choice = await detectBackend(netnsPath(host));
    t.is(choice.backend, expected, choice.reason);
  });
}

test.serial('apply with auto programs the pod with the backend the host uses and reports why', async (t) => {
  requireKernelTools(t);
  requireNft(t);
  const host = createNetns(t, 'host');
  HOSTS[2][1](host);
  const pod = createNetns(t, 'pod');
  const report = await applyRedirect({ netns: netnsPath(pod), backend: 'auto', hostNetns: netnsPath(host), config: redirectConfigFromAnnotations({}), families: ['ipv4', 'ipv6'] });
  t.is(report.backend, 'nftables');
  t.regex(report.backendReason, /^auto: the host has 1 native nftables rules/);
  t.regex(inNetns(pod, nftProgram(), ['list', 'tables']), /mesh-cni-nat/);
});

function cli(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { status: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

test.serial('mesh-cni plan prints the backend it chose and why, and the nft script for nftables', (t) => {
  requireKernelTools(t);
  const host = createNetns(t, 'host');
  HOSTS[0][1](host);
  const auto = cli(['plan', '--host-netns', netnsPath(host)]);
  t.is(auto.status, 0, auto.stderr);
  t.regex(auto.stdout.split('\n')[0], /^# backend: iptables-legacy \(auto: the host's iptables rules are in iptables-legacy \(1 rules, 0 in iptables-nft\)\)$/);
  t.regex(auto.stdout, /^-A ISTIO_OUTPUT /m);

  const nft = cli(['plan', '--backend', 'nftables', '--ipv6']);
  t.is(nft.status, 0, nft.stderr);
  t.is(nft.stdout.split('\n')[0], '# backend: nftables (named with --backend)');
  t.regex(nft.stdout, /^add rule inet mesh-cni-nat istio-output oifname "lo" ip6 saddr ::6\/128 counter return$/m);

  const json = JSON.parse(cli(['plan', '--backend', 'nftables', '-o', 'json']).stdout) as { backend: string; backendReason: string; script: string };
  t.is(json.backend, 'nftables');
  t.is(json.backendReason, 'named with --backend');
  t.regex(json.script, /^add table inet mesh-cni-nat$/m);
});
