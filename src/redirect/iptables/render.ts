/**
 * Plan → `iptables-restore` input, line for line what Istio writes at HEAD for the same pod (plus our owner
 * tag on built-in-chain rules): tables in alphabetical order, `-N` for each of our chains in order of first
 * use, then the rules in plan order.
 * A list match (ports, CIDRs, interfaces, the protocol pair) becomes one line per element, in the order
 * Istio's loops write them; a negated port list becomes one `multiport` match.
 */
import { chainsByTable, type Match, type Rule, type Target } from '../plan';
import { BUILTIN_CHAINS, type Table } from '../constants';

/**
 * Every rule we write into a built-in chain (PREROUTING, OUTPUT, ...) carries an owner tag, an iptables
 * comment `mesh-cni/<purpose>`: remove, DEL and re-apply touch only tagged rules there (and our ISTIO_*
 * chains), so another component's rule of the same shape (`-A PREROUTING -i v0 -j RETURN`) is never taken
 * for ours. The purpose is derived from the rule's target, so the tag is stable across releases.
 */
export const OWNER_TAG_PREFIX = 'mesh-cni/';

export function ownerTag(rule: Rule): string {
  const t = rule.target;
  const purpose = t.kind === 'jump' ? `to-${t.chain.toLowerCase().replace(/_/g, '-')}` : t.kind.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  return `${OWNER_TAG_PREFIX}${purpose}`;
}

const isBuiltinChain = (chain: string) => (BUILTIN_CHAINS as readonly string[]).includes(chain);

/** Restore text without our owner tags: how Istio writes the same rules (the golden comparison with Istio's listings). */
export function stripOwnerTags(text: string): string {
  return text.replace(/ -m comment --comment "?mesh-cni\/[^\s"]+"?/g, '');
}

/** One rule as iptables sees it: a single line in one chain, no lists left. */
export interface IptablesLine {
  table: Table;
  chain: string;
  insertAt?: number;
  /** The rule's arguments after `-A CHAIN` / `-I CHAIN N`. */
  spec: string;
  rule: Rule;
}

/** A mark as Istio writes it: decimal alone (the sidecar's 1337), hex with its mask (ambient's 0x539/0xfff). */
const markValue = (mark: number, mask?: number) => (mask === undefined ? String(mark) : `${hex(mark)}/${hex(mask)}`);
const hex = (n: number) => `0x${n.toString(16)}`;

function renderMatch(m: Match): string {
  switch (m.kind) {
    case 'protocol':
      return `-p ${m.protocol}`;
    case 'protocols':
      throw new Error('internal: a protocol list is fanned out before it is rendered');
    case 'l4module':
      return `-m ${m.protocol}`;
    case 'dport':
    case 'sport': {
      const not = m.negate ? '! ' : '';
      if (m.ports.length === 1) return `${not}--${m.kind} ${m.ports[0]}`;
      return `-m multiport ${not}--${m.kind}s ${m.ports.join(',')}`;
    }
    case 'daddr':
    case 'saddr':
      return `${m.negate ? '! ' : ''}-${m.kind === 'daddr' ? 'd' : 's'} ${m.cidrs[0]}`;
    case 'iifname':
    case 'oifname':
      return `${m.negate ? '! ' : ''}-${m.kind === 'iifname' ? 'i' : 'o'} ${m.names[0]}`;
    case 'uid':
    case 'gid':
      return `-m owner ${m.negate ? '! ' : ''}--${m.kind}-owner ${m.id}`;
    case 'mark':
      return `-m mark ${m.negate ? '! ' : ''}--mark ${markValue(m.mark, m.mask)}`;
    case 'connmark':
      return `-m connmark --mark ${markValue(m.mark, m.mask)}`;
    case 'localSocket':
      return '-m owner --socket-exists';
    case 'inSet':
      return `-m set --match-set ${m.set} dst`;
    case 'ctstate':
      return `-m conntrack --ctstate ${m.states.join(',')}`;
  }
}

function renderTarget(t: Target): string {
  switch (t.kind) {
    case 'return':
      return '-j RETURN';
    case 'accept':
      return '-j ACCEPT';
    case 'drop':
      return '-j DROP';
    case 'jump':
      return `-j ${t.chain}`;
    case 'redirect':
      return `-j REDIRECT ${t.iptablesFlag ?? '--to-ports'} ${t.port}`;
    case 'tproxy':
      return `-j TPROXY --tproxy-mark ${t.mark}/0xffffffff --on-port ${t.port}`;
    case 'setMark':
      return `-j MARK --set-mark ${t.mark}`;
    case 'saveMark':
      return '-j CONNMARK --save-mark';
    case 'restoreMark':
      return t.masks ? `-j CONNMARK --restore-mark --nfmask ${hex(t.masks.nf)} --ctmask ${hex(t.masks.ct)}` : '-j CONNMARK --restore-mark';
    case 'setConnmark':
      return `-j CONNMARK --set-xmark ${hex(t.mark)}/${hex(t.mask)}`;
    case 'snat':
      return `-j SNAT --to-source ${t.to}`;
    case 'ctZone':
      return `-j CT --zone ${t.zone}`;
  }
}

/**
 * Which list Istio's loops run outermost: ports and CIDRs (`for port: tcp, udp`; `for cidr: for interface`),
 * then interfaces, then the protocol pair. A rule names at most one list of each rank.
 */
const FAN_OUT_RANK: Partial<Record<Match['kind'], number>> = { dport: 0, sport: 0, daddr: 1, saddr: 1, iifname: 2, oifname: 2, protocols: 3 };

function variantsOf(m: Match): Match[] {
  if ((m.kind === 'dport' || m.kind === 'sport') && !m.negate) return m.ports.map((p) => ({ ...m, ports: [p] }));
  if (m.kind === 'daddr' || m.kind === 'saddr') return m.cidrs.map((c) => ({ ...m, cidrs: [c] }));
  if (m.kind === 'iifname' || m.kind === 'oifname') return m.names.map((n) => ({ ...m, names: [n] }));
  if (m.kind === 'protocols') return m.protocols.map((protocol) => ({ kind: 'protocol', protocol }));
  return [m];
}

const rank = (m: Match) => FAN_OUT_RANK[m.kind] ?? Number.MAX_SAFE_INTEGER;

/** Splits a rule with list matches into single-element rules, the outermost list first, each keeping its match order. */
function fanOut(matches: readonly Match[]): Match[][] {
  const variants = matches.map(variantsOf);
  const order = matches.map((_, i) => i).sort((a, b) => rank(matches[a]!) - rank(matches[b]!));
  let out: Match[][] = [[...matches]];
  for (const i of order) out = out.flatMap((combo) => variants[i]!.map((v) => combo.map((m, k) => (k === i ? v : m))));
  return out;
}

/** How many elements a rule's outermost list has (1 when it has none): the loop `sameLoopAsPrevious` shares. */
function outerLength(rule: Rule): number {
  const outer = [...rule.matches].sort((a, b) => rank(a) - rank(b))[0];
  return outer ? variantsOf(outer).length : 1;
}

function linesOf(rule: Rule): IptablesLine[] {
  return fanOut(rule.matches).map((matches) => ({
    table: rule.table,
    chain: rule.chain,
    insertAt: rule.insertAt,
    spec: [...matches.map(renderMatch), ...(isBuiltinChain(rule.chain) ? [`-m comment --comment ${ownerTag(rule)}`] : []), renderTarget(rule.target)].join(' '),
    rule,
  }));
}

export function toIptablesLines(rules: readonly Rule[]): IptablesLine[] {
  const out: IptablesLine[] = [];
  for (let i = 0; i < rules.length; ) {
    let end = i + 1;
    while (end < rules.length && rules[end]!.sameLoopAsPrevious) end++;
    const group = rules.slice(i, end).map(linesOf);
    // Rules of one loop: the lines of each element of the shared list, rule after rule, element after element.
    const elements = outerLength(rules[i]!);
    for (let e = 0; e < elements; e++) {
      for (const lines of group) out.push(...lines.slice((e * lines.length) / elements, ((e + 1) * lines.length) / elements));
    }
    i = end;
  }
  return out;
}

export function lineText(line: IptablesLine): string {
  return line.insertAt === undefined ? `-A ${line.chain} ${line.spec}` : `-I ${line.chain} ${line.insertAt} ${line.spec}`;
}

export interface RestoreOptions {
  /**
   * For applying rather than showing: declare our chains with `:CHAIN - [0:0]` (creates, or empties one
   * that exists, inside the same transaction) instead of `-N`, and put these lines (deletions of rules
   * left from an earlier apply) before the new rules, so re-applying replaces atomically.
   */
  replace?: { before: Map<Table, string[]> };
}

/** The restore text for one family's rules. Empty when there are no rules. */
export function renderRestore(rules: readonly Rule[], options: RestoreOptions = {}): string {
  const lines = toIptablesLines(rules);
  const chains = chainsByTable(rules);
  const tables = [...new Set<Table>([...lines.map((l) => l.table), ...(options.replace?.before.keys() ?? [])])].sort();
  let out = '';
  for (const table of tables) {
    const tableLines = lines.filter((l) => l.table === table);
    const before = options.replace?.before.get(table) ?? [];
    if (tableLines.length === 0 && before.length === 0) continue;
    out += `* ${table}\n`;
    for (const chain of chains.get(table) ?? []) out += options.replace ? `:${chain} - [0:0]\n` : `-N ${chain}\n`;
    for (const line of before) out += `${line}\n`;
    for (const line of tableLines) out += `${lineText(line)}\n`;
    out += 'COMMIT\n';
  }
  return out;
}
