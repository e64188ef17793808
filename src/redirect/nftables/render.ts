/**
 * Plan → one `nft -f -` script. Both IP families live in `inet` tables, one table per iptables table
 * (mesh-cni-nat, mesh-cni-mangle, mesh-cni-raw), with Istio's nft chain names. Unlike iptables, a list match
 * (ports, CIDRs, interfaces) becomes one rule with an anonymous set, so the rule count does not grow with
 * the number of entries.
 *
 * The script is its own replacement: it first deletes all three of our tables (`add` then `delete`, so an
 * absent table is no error) and then defines what the plan needs. `nft -f` runs the whole file as one
 * kernel transaction, so the netns holds either the old ruleset or the new one, never a mix, and a config
 * that no longer needs a table or chain leaves none behind.
 */
import { NFT_TABLES, nftChainName, type Family, type Table } from '../constants';
import { chainsByTable, effectiveChains, type AnyPlan, type Match, type Rule, type Target } from '../plan';

/** One nft rule: the families it applies to and its text; a rule both families share is written once. */
export interface NftRule {
  table: Table;
  chain: string;
  families: Family[];
  /** The rule without its family qualifier: what both families' rules are compared by. */
  body: string;
  /** The rule as written after `add rule inet TABLE CHAIN`. */
  text: string;
  rule: Rule;
}

const TABLE_ORDER: Table[] = ['nat', 'mangle', 'raw'];

/**
 * Base chains, hooked where iptables hooks the same table, so our rules meet a packet at the same point
 * relative to conntrack (-200), NAT and routing as Istio's iptables rules do:
 * - nat at -100 (dstnat), `type nat`: sees the first packet of each connection and `redirect` binds the
 *   whole connection, exactly as iptables' nat PREROUTING/OUTPUT.
 * - mangle at -150: after conntrack, so `ct state` and `ct mark` are known. Prerouting is `type filter`
 *   (`tproxy` is only allowed there). Output is `type route`: iptables' mangle OUTPUT re-routes a packet
 *   whose mark it changed, and the TPROXY marks only work if the fwmark policy rule is consulted again;
 *   a `type filter` chain would set the mark after the routing decision and change nothing.
 * - raw at -300: before conntrack, the only place `ct zone set` takes effect (the zone is part of the
 *   connection lookup).
 */
const BASE_CHAINS: Record<Table, Record<string, string>> = {
  nat: {
    PREROUTING: 'type nat hook prerouting priority -100 ;',
    OUTPUT: 'type nat hook output priority -100 ;',
    // the node's kubelet-probe SNAT (ambient), at srcnat as iptables' nat POSTROUTING
    POSTROUTING: 'type nat hook postrouting priority 100 ;',
  },
  mangle: {
    PREROUTING: 'type filter hook prerouting priority -150 ;',
    OUTPUT: 'type route hook output priority -150 ;',
  },
  raw: {
    PREROUTING: 'type filter hook prerouting priority -300 ;',
    OUTPUT: 'type filter hook output priority -300 ;',
  },
};

const ADDRESS_FAMILY: Record<Family, string> = { ipv4: 'ip', ipv6: 'ip6' };
const hex = (n: number) => `0x${n.toString(16)}`;

/** An anonymous set for a list, a bare value for one element. */
function valueOrSet(values: readonly (string | number)[]): string {
  return values.length === 1 ? String(values[0]) : `{ ${values.join(', ')} }`;
}

/**
 * Interface names are quoted (nft would read some names as keywords). iptables' wildcard is a trailing
 * `+`, nft's a trailing `*`; config validation keeps `*`, `"` and `\` out of names, so nothing else needs
 * escaping.
 */
function ifname(name: string): string {
  return `"${name.endsWith('+') ? `${name.slice(0, -1)}*` : name}"`;
}

function protocolOf(rule: Rule): 'tcp' | 'udp' | undefined {
  const m = rule.matches.find((x) => x.kind === 'protocol');
  return m?.kind === 'protocol' ? m.protocol : undefined;
}

const hasPorts = (rule: Rule) => rule.matches.some((m) => m.kind === 'dport' || m.kind === 'sport');

function renderMatch(m: Match, rule: Rule, family: Family): string | undefined {
  const not = 'negate' in m && m.negate ? '!= ' : '';
  switch (m.kind) {
    case 'protocol':
      // `tcp dport` already implies the protocol (nft adds the dependency itself and lists it without).
      return hasPorts(rule) ? undefined : `meta l4proto ${m.protocol}`;
    case 'protocols':
      throw new Error(`internal: a protocol list is split into one rule per protocol before it is rendered (${rule.purpose})`);
    case 'dport':
    case 'sport': {
      const protocol = protocolOf(rule);
      if (!protocol) throw new Error(`internal: a port match needs a protocol match (${rule.purpose})`);
      return `${protocol} ${m.kind} ${not}${valueOrSet(m.ports)}`;
    }
    case 'daddr':
    case 'saddr':
      return `${ADDRESS_FAMILY[family]} ${m.kind} ${not}${valueOrSet(m.cidrs)}`;
    case 'iifname':
    case 'oifname':
      return `${m.kind} ${not}${valueOrSet(m.names.map(ifname))}`;
    case 'uid':
    case 'gid':
      return `meta sk${m.kind} ${not}${m.id}`;
    case 'mark':
      return m.mask === undefined ? `meta mark ${not}${m.mark}` : `meta mark & ${hex(m.mask)} ${m.negate ? '!=' : '=='} ${hex(m.mark)}`;
    case 'connmark':
      return m.mask === undefined ? `ct mark ${m.mark}` : `ct mark & ${hex(m.mask)} == ${hex(m.mark)}`;
    case 'l4module':
      return undefined;
    case 'localSocket':
      // nft has no --socket-exists; Istio's nft host rule names the kubelet's uid (cni/pkg/nftables).
      return `meta skuid ${m.nftUid}`;
    case 'inSet':
      return `${ADDRESS_FAMILY[family]} daddr @${m.set}`;
    case 'ctstate':
      return `ct state ${m.states.map((s) => s.toLowerCase()).join(',')}`;
  }
}

/**
 * A target as nft statements. Most are one rule; TPROXY is two: iptables' TPROXY target drops a packet
 * when no transparent socket listens on the port, while nft's `tproxy` just does not match, which would let
 * inbound traffic reach the application unproxied while the proxy starts. The second rule keeps that
 * fail-closed behaviour.
 */
function renderTarget(t: Target, family: Family): string[] {
  switch (t.kind) {
    case 'return':
      return ['return'];
    case 'accept':
      return ['accept'];
    case 'drop':
      return ['drop'];
    case 'jump':
      return [`jump ${nftChainName(t.chain)}`];
    case 'redirect':
      return [`redirect to :${t.port}`];
    case 'tproxy':
      return [`tproxy ${ADDRESS_FAMILY[family]} to :${t.port} meta mark set ${t.mark} accept`, 'drop'];
    case 'setMark':
      return [`meta mark set ${t.mark}`];
    case 'saveMark':
      return ['ct mark set meta mark'];
    case 'restoreMark':
      return ['meta mark set ct mark'];
    case 'setConnmark':
      // iptables' --set-xmark mark/mask: the mask's bits cleared, then the mark's set. Written as nft stores it
      // (it folds the mark into the and-mask: Istio's `& 0xfffff000 | 0x111` lists as `& 0xfffff111 | 0x111`),
      // so a listing reads back as the text we rendered.
      return [`ct mark set ct mark & ${hex((~t.mask | t.mark) >>> 0)} | ${hex(t.mark)}`];
    case 'snat':
      return [`snat ${ADDRESS_FAMILY[family]} to ${t.to}`];
    case 'ctZone':
      return [`ct zone set ${t.zone}`];
  }
}

/**
 * A rule per protocol of a protocol list (`tcp dport { 5555, 6666 }`, then `udp dport ...`), as Istio's native
 * nftables rules split them: each keeps its port set, and the two meet a packet at the same place.
 */
function perProtocol(rule: Rule): Rule[] {
  const i = rule.matches.findIndex((m) => m.kind === 'protocols');
  const list = rule.matches[i];
  if (list?.kind !== 'protocols') return [rule];
  return list.protocols.map((protocol) => ({ ...rule, matches: rule.matches.map((m, k): Match => (k === i ? { kind: 'protocol', protocol } : m)) }));
}

/** The nft rule bodies (no family qualifier) one plan rule becomes for one family. Every rule counts. */
export function ruleBodies(rule: Rule, family: Family): string[] {
  return perProtocol(rule).flatMap((r) => {
    const matches = r.matches.map((m) => renderMatch(m, r, family)).filter((x): x is string => x !== undefined);
    return renderTarget(r.target, family).map((statement) => [...matches, 'counter', statement].join(' '));
  });
}

/** Rules with an address or address-set match are already limited to one family (nft adds `meta nfproto` itself). */
const namesFamily = (rule: Rule) => rule.matches.some((m) => m.kind === 'daddr' || m.kind === 'saddr' || m.kind === 'inSet');

interface Body {
  body: string;
  rule: Rule;
}

/** One family's rules per `table/CHAIN`, in the order iptables would hold them after every insert. */
function bodiesByChain(rules: readonly Rule[], family: Family): Map<string, Body[]> {
  const out = new Map<string, Body[]>();
  for (const [key, chainRules] of effectiveChains(rules)) {
    out.set(
      key,
      chainRules.flatMap((rule) => ruleBodies(rule, family).map((body) => ({ body, rule }))),
    );
  }
  return out;
}

/**
 * Merges the two families' rules of one chain: rules equal in both are written once, the rest once per
 * family. A longest common subsequence keeps each family's own order, which is all that matters: a rule of
 * one family never matches a packet of the other.
 */
function mergeFamilies(v4: readonly Body[], v6: readonly Body[]): Array<Body & { families: Family[] }> {
  const n = v4.length;
  const m = v6.length;
  const lcs: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = v4[i].body === v6[j].body ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out: Array<Body & { families: Family[] }> = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && v4[i].body === v6[j].body) {
      out.push({ ...v4[i++], families: ['ipv4', 'ipv6'] });
      j++;
    } else if (j >= m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1])) {
      out.push({ ...v4[i++], families: ['ipv4'] });
    } else {
      out.push({ ...v6[j++], families: ['ipv6'] });
    }
  }
  return out;
}

function qualified(body: string, rule: Rule, families: Family[]): string {
  if (families.length !== 1 || namesFamily(rule)) return body;
  return `meta nfproto ${families[0]} ${body}`;
}

/** Our chains of a table in the order they are declared: base chains first, then ours by first use. */
function chainOrder(table: Table, plan: AnyPlan, families: readonly Family[]): string[] {
  const rules = families.flatMap((f) => plan[f].rules);
  const builtin = Object.keys(BASE_CHAINS[table]).filter((c) => rules.some((r) => r.table === table && r.chain === c));
  return [...builtin, ...(chainsByTable(rules).get(table) ?? [])];
}

/** Every nft rule of the plan for these families, grouped by table and chain, in final order. */
export function toNftRules(plan: AnyPlan, families: readonly Family[]): NftRule[] {
  const perFamily = (f: Family) => (families.includes(f) ? bodiesByChain(plan[f].rules, f) : new Map<string, Body[]>());
  const v4 = perFamily('ipv4');
  const v6 = perFamily('ipv6');
  const out: NftRule[] = [];
  for (const table of TABLE_ORDER) {
    for (const chain of chainOrder(table, plan, families)) {
      const key = `${table}/${chain}`;
      for (const r of mergeFamilies(v4.get(key) ?? [], v6.get(key) ?? [])) {
        out.push({ table, chain: nftChainName(chain), families: r.families, body: r.body, text: qualified(r.body, r.rule, r.families), rule: r.rule });
      }
    }
  }
  return out;
}

/** Deletes our tables whether or not they exist (`add` of an existing table is a no-op, `delete` of a missing one an error). */
export function nftDeleteTables(tables: Partial<Record<Table, string>> = NFT_TABLES): string {
  return TABLE_ORDER.filter((t) => tables[t]).map((t) => `add table inet ${tables[t]}\ndelete table inet ${tables[t]}\n`).join('');
}

/** A named set of addresses declared in one of the script's tables (the node's probe set). */
export interface NftSet {
  table: Table;
  name: string;
  family: Family;
  /** elements with a comment each (the pod's uid) */
  elements?: Array<{ address: string; comment?: string }>;
}

export interface NftScriptOptions {
  fresh?: boolean;
  /** Table names other than the pods' mesh-cni-* (the node's own table, redirect/ambient/host.ts). */
  tables?: Partial<Record<Table, string>>;
  sets?: readonly NftSet[];
}

/** `add set` and its elements; a comment is quoted, and checked to need no escaping (a pod uid). */
export function nftSetLines(tableName: string, set: NftSet): string {
  let out = `add set inet ${tableName} ${set.name} { type ${set.family === 'ipv4' ? 'ipv4_addr' : 'ipv6_addr'} ; }\n`;
  const elements = (set.elements ?? []).map((e) => {
    if (e.comment !== undefined && !/^[A-Za-z0-9._-]*$/.test(e.comment)) throw new Error(`internal: set comment ${JSON.stringify(e.comment)}`);
    return e.comment === undefined ? e.address : `${e.address} comment "${e.comment}"`;
  });
  if (elements.length > 0) out += `add element inet ${tableName} ${set.name} { ${elements.join(', ')} }\n`;
  return out;
}

/**
 * The complete, self-replacing script for `nft -f -`.
 *
 * `fresh`: the script for a netns that holds no table of ours (its caller has just listed them, under the
 * netns lock): no deletes, and `create table`, which fails the whole transaction if the table exists. Both
 * leave the netns holding exactly the plan; the fresh one spares the kernel the delete of three tables that
 * were never there, whose clean-up waits for an RCU grace period (libnftables.ts), and nft the listing of
 * sets, objects and flowtables a delete makes it fetch.
 */
export function renderNftScript(plan: AnyPlan, families: readonly Family[], options: NftScriptOptions = {}): string {
  const rules = toNftRules(plan, families);
  const tables = options.tables ?? NFT_TABLES;
  let out = options.fresh ? '' : nftDeleteTables(tables);
  for (const table of TABLE_ORDER) {
    const tableRules = rules.filter((r) => r.table === table);
    if (tableRules.length === 0) continue;
    const name = tables[table];
    if (!name) throw new Error(`internal: no nft table named for ${table}`);
    out += `${options.fresh ? 'create' : 'add'} table inet ${name}\n`;
    for (const set of options.sets ?? []) if (set.table === table) out += nftSetLines(name, set);
    for (const chain of chainOrder(table, plan, families)) {
      const hook = BASE_CHAINS[table][chain];
      out += `add chain inet ${name} ${nftChainName(chain)}${hook ? ` { ${hook} }` : ''}\n`;
    }
    for (const r of tableRules) out += `add rule inet ${name} ${r.chain} ${r.text}\n`;
  }
  return out;
}
