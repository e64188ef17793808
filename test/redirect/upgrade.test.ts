/**
 * Kernel: a pod started before an upgrade holds the rules the previous release wrote (Istio 1.24's layout,
 * owner-tagged), frozen in test/golden/previous-release. Programmed into a real netns beside another
 * component's rules, they must be recognised by every path that meets them: CHECK and the reconciler's check
 * see them as ours and report the difference, a repair and a re-ADD (the same apply as ADD) replace them with
 * today's layout with nothing duplicated and no stale chain, DEL takes all of ours away, and the other
 * component's rules survive all of it. On both iptables flavours and native nftables.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { applyRedirect, checkRedirect, removeRedirect, showRedirect, type BackendName } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations, type RedirectConfig } from '../../src/redirect/config';
import { buildPlan, chainsByTable } from '../../src/redirect/plan';
import { repairChecker } from '../../src/repair/check';
import { nftProgram } from '../../src/redirect/nftables/backend';
import { FAMILIES, type Family } from '../../src/redirect/constants';
import { createPodPeer, inNetns, tryInNetns, type PodPeer } from '../support/netns';
import { connect, listen } from '../support/traffic';
import { requireKernelTools, requireNft } from '../support/require';
import { REPO_ROOT } from '../support/paths';
import { PLAN_CASES } from './cases';
import { stripOwnerTags } from '../../src/redirect/iptables/render';

const BACKENDS: BackendName[] = ['iptables-nft', 'iptables-legacy', 'nftables'];
/** Cases whose previous layout differs most: DNS chains, the widest (TPROXY, DNS, INVALID_DROP), interface returns, UDP exclusions, VM inserts. */
const CASES = ['dns', 'invalid-drop-tproxy-dns', 'exclude-interfaces', 'include-exclude-ports', 'kubevirt'];
const PREVIOUS = path.join(REPO_ROOT, 'test/golden/previous-release');

/** Another component's rules in the chains and tables we use, one of them the shape the previous layout's DNS reply zone had. */
const FOREIGN_IPTABLES: Array<[table: string, chain: string, spec: string]> = [
  ['nat', 'OUTPUT', '-o v0 -j RETURN'],
  ['mangle', 'PREROUTING', '-i v0 -j RETURN'],
  ['raw', 'PREROUTING', '-p udp -m udp --sport 53 -j CT --zone 1'],
  ['raw', 'OUTPUT', '-p udp -m udp --dport 5353 -j CT --zone 3'],
];
const FOREIGN_NFT = 'add table inet other\nadd chain inet other output { type filter hook output priority 0 ; }\nadd rule inet other output udp dport 5353 counter accept\n';

const flavourOf = (backend: BackendName) => (backend === 'iptables-legacy' ? 'legacy' : 'nft');
const tool = (backend: BackendName, family: Family, what: 'save' | 'restore' | '') =>
  `${family === 'ipv4' ? 'iptables' : 'ip6tables'}-${flavourOf(backend)}${what ? `-${what}` : ''}`;

/** The previous release's text for one case: per family for iptables, one script for nftables. */
function previousRules(backend: BackendName, name: string): { ipv4: string; ipv6: string } | string {
  if (backend === 'nftables') return fs.readFileSync(path.join(PREVIOUS, 'nftables', `${name}.golden`), 'utf8');
  const text = fs.readFileSync(path.join(PREVIOUS, 'iptables', `${name}.golden`), 'utf8');
  const [, ipv4 = '', ipv6 = ''] = /^# ipv4\n([\s\S]*)# ipv6\n([\s\S]*)$/.exec(text) ?? [];
  return { ipv4, ipv6 };
}

/** Programs the previous release's rules and the foreign ones; returns the foreign rules as the kernel lists them. */
function programPrevious(pair: PodPeer, backend: BackendName, name: string): string[] {
  const previous = previousRules(backend, name);
  if (typeof previous === 'string') {
    inNetns(pair.pod, nftProgram(), ['-f', '-'], FOREIGN_NFT);
    inNetns(pair.pod, nftProgram(), ['-f', '-'], previous);
    return foreignNft(pair);
  }
  const before: string[] = [];
  for (const family of FAMILIES) {
    before.push(...inNetns(pair.pod, tool(backend, family, 'save'), []).split('\n'));
    for (const [table, chain, spec] of FOREIGN_IPTABLES) inNetns(pair.pod, tool(backend, family, ''), ['-t', table, '-A', chain, ...spec.split(' ')]);
    inNetns(pair.pod, tool(backend, family, 'restore'), ['--noflush'], previous[family]);
  }
  const foreign = FAMILIES.flatMap((family) =>
    inNetns(pair.pod, tool(backend, family, 'save'), [])
      .split('\n')
      .filter((l) => l.startsWith('-A ') && !l.includes('mesh-cni/') && !/^-A ISTIO_/.test(l) && !before.includes(l))
      .map((l) => `${family} ${l}`),
  );
  if (foreign.length !== FOREIGN_IPTABLES.length * FAMILIES.length) throw new Error(`expected the foreign rules planted in both families, got:\n${foreign.join('\n')}`);
  return foreign;
}

function foreignNft(pair: PodPeer): string[] {
  return tryInNetns(pair.pod, nftProgram(), ['list', 'table', 'inet', 'other']).stdout.split('\n').map((l) => l.trim()).filter((l) => l.includes('5353'));
}

/** The foreign rules (as programPrevious listed them) now missing. */
function missingForeign(pair: PodPeer, backend: BackendName, foreign: string[]): string[] {
  if (backend === 'nftables') {
    const now = foreignNft(pair).map((l) => l.replace(/packets \d+ bytes \d+/, ''));
    return foreign.filter((l) => !now.includes(l.replace(/packets \d+ bytes \d+/, '')));
  }
  const now = FAMILIES.flatMap((family) => inNetns(pair.pod, tool(backend, family, 'save'), []).split('\n').map((l) => `${family} ${l}`));
  return foreign.filter((l) => !now.includes(l));
}

/** Our chains per table as the kernel holds them (iptables), or our tables' chains (nftables). */
function ourChains(pair: PodPeer, backend: BackendName, family: Family): string[] {
  if (backend === 'nftables') {
    const listing = tryInNetns(pair.pod, nftProgram(), ['list', 'ruleset', 'inet']).stdout;
    const out: string[] = [];
    let table = '';
    for (const line of listing.split('\n')) {
      const t = /^table inet (mesh-cni-\S+)/.exec(line);
      if (t) table = t[1]!;
      else if (/^table /.test(line)) table = '';
      const c = /^\s+chain (\S+) \{/.exec(line);
      if (c && table) out.push(`${table}/${c[1]}`);
    }
    return out.sort();
  }
  let table = '';
  const out: string[] = [];
  for (const line of inNetns(pair.pod, tool(backend, family, 'save'), []).split('\n')) {
    if (line.startsWith('*')) table = line.slice(1);
    const c = /^:(ISTIO_\S+)/.exec(line);
    if (c) out.push(`${table}/${c[1]}`);
  }
  return out.sort();
}

/** The chains today's plan has (iptables), per family. */
function plannedChains(config: RedirectConfig, family: Family): string[] {
  return [...chainsByTable(buildPlan(config)[family].rules)].flatMap(([table, chains]) => chains.map((c) => `${table}/${c}`)).sort();
}

async function setup(t: ExecutionContext, backend: BackendName): Promise<PodPeer> {
  requireKernelTools(t);
  if (backend === 'nftables') requireNft(t);
  return createPodPeer(t);
}

for (const backend of BACKENDS) {
  for (const name of CASES) {
    const c = PLAN_CASES.find((x) => x.name === name)!;
    const config = redirectConfigFromAnnotations(c.annotations, c.proxy);

    test.serial(`upgrade ${backend} ${name}: the previous release's rules are seen by CHECK and the reconciler, and repair and re-ADD replace them with today's, nothing duplicated, foreign rules kept`, async (t) => {
      const pair = await setup(t, backend);
      const foreign = programPrevious(pair, backend, name);
      const netns = pair.podPath;

      const checked = await checkRedirect({ netns, config, backend });
      t.false(checked.ok, 'CHECK: the previous layout is not today\'s');
      t.true((checked.observedRules ?? 0) > 0, 'CHECK: the previous rules are seen as ours, not as none');
      const checker = repairChecker({ backend });
      const found = await checker.check(netns, config);
      t.false(found.ok, 'the reconciler finds the pod needs repair');
      t.true((found.observedRules ?? 0) > 0);

      // A repair in place is the apply ADD runs (repair/wiring.ts); re-ADD runs it again.
      await applyRedirect({ netns, config, backend, verify: 'when-replacing' });
      t.deepEqual((await checker.check(netns, config)).problems, [], 'repaired: the reconciler finds it healthy');
      await applyRedirect({ netns, config, backend, verify: 'when-replacing' });
      const after = await checkRedirect({ netns, config, backend });
      t.deepEqual(after.problems, [], 're-ADD: exactly today\'s rules');
      const shown = await showRedirect({ netns, backend });
      t.is(shown.rules.length, after.observedRules ?? -1, 'nothing of ours beyond the plan');
      for (const family of FAMILIES) {
        if (backend !== 'nftables') t.deepEqual(ourChains(pair, backend, family), plannedChains(config, family), `${family}: no chain of the previous layout left (raw ISTIO_OUTPUT)`);
      }
      if (backend === 'nftables') t.notRegex(tryInNetns(pair.pod, nftProgram(), ['list', 'table', 'inet', 'mesh-cni-raw']).stdout, /chain istio-output \{/);
      t.deepEqual(missingForeign(pair, backend, foreign), [], 'the other component\'s rules are all there');

      if (config.dnsCapture) {
        // The behaviour that changed: an app's UDP query to a resolver on loopback now reaches the agent.
        await listen(t, pair.pod, 'dns-agent', ['15053/udp'], { uid: 1337, gid: 1337 });
        await listen(t, pair.pod, 'local-dns', ['53/udp']);
        for (const loopback of ['127.0.0.1', '::1']) t.like(connect(pair.pod, loopback, 53, { proto: 'udp' }), { listener: 'dns-agent', port: 15053 }, `UDP to ${loopback}:53 after the repair`);
      }
    });

    test.serial(`upgrade ${backend} ${name}: DEL takes every rule of the previous release away and leaves the foreign ones`, async (t) => {
      const pair = await setup(t, backend);
      const foreign = programPrevious(pair, backend, name);
      t.true((await showRedirect({ netns: pair.podPath, backend })).rules.length > 0, 'the previous rules are seen as ours');
      const { removed } = await removeRedirect({ netns: pair.podPath, backend });
      t.true(removed > 0);
      t.is((await showRedirect({ netns: pair.podPath, backend })).rules.length, 0, 'nothing of ours left');
      for (const family of FAMILIES) t.deepEqual(ourChains(pair, backend, family), [], `${family}: no chain of ours left`);
      if (backend !== 'nftables') {
        for (const family of FAMILIES) t.notRegex(inNetns(pair.pod, tool(backend, family, 'save'), []), /mesh-cni\/|ISTIO_/, `${family}: no tagged rule or ISTIO_ jump left`);
      }
      t.deepEqual(missingForeign(pair, backend, foreign), [], 'the other component\'s rules are all there');
    });
  }
}

for (const backend of ['iptables-nft', 'iptables-legacy'] as const) {
  test.serial(`upgrade ${backend}: the same layout written untagged, by a release before the owner tag, is removed whole, its raw DNS reply zone included`, async (t) => {
    const pair = await setup(t, backend);
    const previous = previousRules(backend, 'invalid-drop-tproxy-dns') as { ipv4: string; ipv6: string };
    for (const family of FAMILIES) inNetns(pair.pod, tool(backend, family, 'restore'), ['--noflush'], stripOwnerTags(previous[family]));
    t.regex(inNetns(pair.pod, tool(backend, 'ipv4', 'save'), ['-t', 'raw']), /^-A PREROUTING -p udp -m udp --sport 53 -j CT --zone 1$/m, 'the untagged reply zone is there');
    await removeRedirect({ netns: pair.podPath, backend });
    for (const family of FAMILIES) {
      const saved = inNetns(pair.pod, tool(backend, family, 'save'), []);
      t.notRegex(saved, /ISTIO_|^-A (PREROUTING|OUTPUT) /m, `${family}: nothing of the untagged layout left:\n${saved}`);
    }
  });
}
