/** The plan/apply/show/remove commands, run as a person runs them, against real network namespaces. */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mesh } from '../support/cli';
import { createPodPeer, tryInNetns } from '../support/netns';
import { connect, listen } from '../support/traffic';
import { requireKernelTools } from '../support/require';
import { REPO_ROOT } from '../support/paths';
import { INVALID_ANNOTATIONS } from '../redirect/invalid-cases';
import { stripOwnerTags } from '../../src/redirect/iptables/render';

test('plan prints Istio-identical iptables-restore text and touches nothing', (t) => {
  const r = mesh(['plan', '--backend', 'iptables']);
  t.is(r.code, 0, r.stderr);
  // The first line says which backend and why, as a comment iptables-restore ignores; the rest is Istio's text.
  const [first, tag, ...rest] = r.stdout.split('\n');
  t.regex(first, /^# backend: iptables /);
  // Our owner tag on built-in-chain rules is said once, and is the only difference.
  t.regex(tag, /^# owner tag: .*--comment mesh-cni\/<purpose>/);
  t.is(stripOwnerTags(rest.join('\n')), fs.readFileSync(path.join(REPO_ROOT, 'test/golden/istio/cni-plugin/basic.txt.golden'), 'utf8').trimEnd() + '\n');
});

test('plan --dns-capture prints Istio HEAD\'s DNS layout: ISTIO_OUTPUT_DNS in nat and raw, jumped to before the 127.0.0.1 return', (t) => {
  const r = mesh(['plan', '--backend', 'iptables', '--dns-capture']);
  t.is(r.code, 0, r.stderr);
  const [, , ...rest] = r.stdout.split('\n');
  t.is(stripOwnerTags(rest.join('\n')), fs.readFileSync(path.join(REPO_ROOT, 'test/golden/istio/cni-plugin/dns.txt.golden'), 'utf8').trimEnd() + '\n');
});

test('plan --ipv6 -o json gives both families with rule purposes', (t) => {
  const r = mesh(['plan', '--ipv6', '-o', 'json', '-a', 'traffic.sidecar.istio.io/excludeOutboundIPRanges=10.0.0.0/8,fd00::/8']);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.deepEqual(out.families.map((f: { family: string }) => f.family), ['ipv4', 'ipv6']);
  const v6 = out.families[1];
  t.true(v6.rules.some((x: { rule: string; purpose: string }) => x.rule === '-A ISTIO_OUTPUT -d fd00::/8 -j RETURN' && x.purpose === 'exclude-outbound-ranges'));
  t.deepEqual(v6.links, [{ kind: 'address', family: 'ipv6', dev: 'lo', cidr: '::6/128' }]);
});

test('every command has --help with examples; usage errors exit 2', (t) => {
  for (const cmd of ['plan', 'apply', 'show', 'remove']) {
    const r = mesh([cmd, '--help']);
    t.is(r.code, 0);
    t.regex(r.stdout, /Examples:/, cmd);
  }
  t.is(mesh(['no-such-command']).code, 2);
  t.is(mesh(['apply']).code, 2, 'apply without --netns');
  t.is(mesh(['plan', '--backend', 'ipchains']).code, 2);
});

test.serial('apply, show and remove through the CLI on a real netns', async (t) => {
  requireKernelTools(t);
  const pair = createPodPeer(t);
  await listen(t, pair.pod, 'pod', ['15001']);
  await listen(t, pair.peer, 'peer', ['80']);
  const applied = mesh(['apply', '--netns', pair.podPath, '-o', 'json']);
  t.is(applied.code, 0, applied.stderr);
  const report = JSON.parse(applied.stdout);
  t.deepEqual(report.families, ['ipv4', 'ipv6']);
  t.is(connect(pair.pod, pair.peerIp4, 80).port, 15001);

  const shown = mesh(['show', '--netns', pair.podPath]);
  t.is(shown.code, 0, shown.stderr);
  t.regex(shown.stdout, /# ipv4 nat/);
  t.regex(shown.stdout, /-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001/);
  t.regex(shown.stdout, /# ipv6 nat/);
  const shownJson = JSON.parse(mesh(['show', '--netns', pair.podPath, '-o', 'json']).stdout);
  t.is(shownJson.rules.length, report.rules);

  const removed = mesh(['remove', '--netns', pair.podPath]);
  t.is(removed.code, 0, removed.stderr);
  t.regex(removed.stdout, new RegExp(`removed ${report.rules} rules`));
  t.regex(mesh(['show', '--netns', pair.podPath]).stdout, /no mesh-cni rules/);
  t.is(connect(pair.pod, pair.peerIp4, 80).listener, 'peer');
  t.is(mesh(['remove', '--netns', pair.podPath]).code, 0, 'removing twice is fine');
});

test.serial('apply refuses a missing netns, a path that is not a netns, and the host netns', (t) => {
  requireKernelTools(t);
  const missing = mesh(['apply', '--netns', '/var/run/netns/mcni-does-not-exist']);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /does not exist/);
  const notNs = mesh(['apply', '--netns', '/etc/hostname', '-o', 'json']);
  t.is(notNs.code, 1);
  t.is(JSON.parse(notNs.stdout).error.code, 'NOT_A_NETNS');
  const host = mesh(['apply', '--netns', '/proc/self/ns/net']);
  t.is(host.code, 1);
  t.regex(host.stderr, /own network namespace/);
});

test.serial(`${INVALID_ANNOTATIONS.length} invalid annotation values: clear error, exit 1, netns untouched`, (t) => {
  requireKernelTools(t);
  const pair = createPodPeer(t, { ipv6: false });
  const before = tryInNetns(pair.pod, 'iptables-save', []).stdout.replace(/^#.*$/gm, '');
  for (const c of INVALID_ANNOTATIONS) {
    const r = mesh(['apply', '--netns', pair.podPath, '-a', `${c.key}=${c.value}`]);
    t.is(r.code, 1, `${c.key}=${c.value}`);
    t.true(r.stderr.includes(c.key) && r.stderr.includes(JSON.stringify(c.value)), r.stderr);
    t.regex(r.stderr, /hint: /);
  }
  t.is(tryInNetns(pair.pod, 'iptables-save', []).stdout.replace(/^#.*$/gm, ''), before);
});
