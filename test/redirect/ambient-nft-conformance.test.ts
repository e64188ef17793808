/**
 * Conformance judged by the kernel: each of Istio HEAD's ambient nftables goldens (cni/pkg/nftables/testdata,
 * test/golden/istio/ambient/nftables) loaded as it is into one netns, our script for the same pod (with Istio's
 * table names, so the listings can be set side by side) into another, and nft's own listing of both compared
 * chain by chain and family by family, rule by rule, in order. The two write a rule's matches in a different order (ours follow
 * the iptables rule, which Istio's iptables goldens pin); nft keeps the order it was given, so each rule's
 * matches are compared as a set, its statements in order.
 *
 * One difference is deliberate and only in the IPv4-only cases: there Istio's nft rules that name no address
 * (`oifname != "lo" ... udp dport 53`) match IPv6 packets too, while ours carry `meta nfproto ipv4`, as Istio's
 * iptables rules do (no ip6tables rule is written when IPv6 is off). The comparison drops that one match.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ambientConfigFromAnnotations } from '../../src/redirect/ambient/config';
import { buildAmbientPlan } from '../../src/redirect/ambient/plan';
import { renderNftScript } from '../../src/redirect/nftables/render';
import { nftProgram } from '../../src/redirect/nftables/backend';
import { createNetns, inNetns } from '../support/netns';
import { requireNft } from '../support/require';
import { AMBIENT_CASES, ISTIO_TEST_NODE } from './ambient-cases';

const GOLDENS = path.resolve(__dirname, '../../../test/golden/istio/ambient/nftables');
const ISTIO_TABLES = { nat: 'istio-ambient-nat', mangle: 'istio-ambient-mangle', raw: 'istio-ambient-raw' } as const;

const CLAUSE = /meta \S+ (?:& \S+ )?(?:!= |== )?\S+|ip6? [sd]addr (?:!= )?\S+|(?:tcp|udp) [sd]port (?:!= )?\S+|[io]ifname (?:!= )?\S+|ct mark (?:& \S+ )?(?:== )?\S+/g;

const STATEMENT = /(?:^| )(accept|return|drop|redirect to|jump|snat|ct mark set|meta mark set|ct zone set)\b/;

/**
 * A listed rule as its set of matches and its statements. Counters are left out: ours count every rule,
 * Istio's jumps do not, and a counter changes nothing a packet meets.
 */
function canonical(listed: string, dropNfproto: boolean): string {
  const rule = listed.replace(/\bcounter( packets \d+ bytes \d+)?/g, '').replace(/\s+/g, ' ').trim();
  const at = STATEMENT.exec(rule)?.index ?? rule.length;
  const matchText = rule.slice(0, at);
  const statements = rule.slice(at).trim();
  let clauses: string[] = [...(matchText.match(CLAUSE) ?? [])];
  const rest = matchText.replace(CLAUSE, '').trim();
  if (rest) clauses.push(`?${rest}`);
  if (dropNfproto) clauses = clauses.filter((c) => c !== 'meta nfproto ipv4');
  return `${clauses.sort().join(' ; ')} => ${statements}`;
}

/** `nft list ruleset` as chain → rules, counters and handles removed. */
function listing(netns: string, dropNfproto: boolean): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let table = '';
  let chain = '';
  for (const raw of inNetns(netns, nftProgram(), ['list', 'ruleset']).split('\n')) {
    const line = raw.trim();
    let m: RegExpExecArray | null;
    if ((m = /^table inet (\S+) \{$/.exec(line))) table = m[1]!;
    else if ((m = /^chain (\S+) \{$/.exec(line))) {
      chain = `${table}/${m[1]}`;
      out.set(chain, []);
    } else if (line === '}') chain = '';
    else if (chain && line && !line.startsWith('type ')) out.get(chain)!.push(canonical(line, dropNfproto));
  }
  return out;
}

/** The rules a packet of one family meets: those naming that family's addresses, and those naming none. */
function ofFamily(rules: string[], family: 'ip' | 'ip6'): string[] {
  return rules.filter((r) => {
    const names = / ?(ip6?) [sd]addr /.exec(` ${r}`)?.[1];
    return names === undefined || names === family;
  });
}

function load(t: ExecutionContext, role: string, script: string): string {
  const ns = createNetns(t, role);
  inNetns(ns, nftProgram(), ['-f', '-'], script);
  return ns;
}

for (const c of AMBIENT_CASES) {
  for (const ipv6 of [false, true]) {
    const golden = `${c.name}${ipv6 ? '_ipv6' : ''}`;
    test(`ambient nft ${golden}: the kernel holds the same rules from Istio's golden and from our script`, (t) => {
      requireNft(t);
      const istio = load(t, 'istio', fs.readFileSync(path.join(GOLDENS, `${golden}.golden`), 'utf8'));
      const plan = buildAmbientPlan(ambientConfigFromAnnotations(c.annotations, { ...ISTIO_TEST_NODE, dnsCapture: c.dnsCapture, ipv6 }));
      const ours = load(t, 'ours', renderNftScript(plan, ipv6 ? ['ipv4', 'ipv6'] : ['ipv4'], { tables: ISTIO_TABLES }));
      const want = listing(istio, false);
      const got = listing(ours, !ipv6);
      t.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), 'the same tables and chains');
      // What a packet meets is its own family's rules in order; how two families' rules interleave changes nothing.
      for (const [chain, rules] of want) {
        for (const family of ['ip', 'ip6'] as const) t.deepEqual(ofFamily(got.get(chain) ?? [], family), ofFamily(rules, family), `${chain} (${family})`);
      }
    });
  }
}
