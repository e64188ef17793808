/**
 * Reading what nftables holds: parse `nft list table` output and reduce a rule to a canonical signature, so
 * a rule we rendered and the same rule listed back compare equal. nft rewrites what it is given: it drops
 * dependencies it adds itself (`meta l4proto tcp` before `tcp dport`, `meta nfproto ipv4` before
 * `ip daddr`), prints marks in hex and host prefixes without `/32`, sorts set elements and merges
 * overlapping or adjacent prefixes of an anonymous set into one range. The signature undoes all of that.
 * Pure functions; the kernel tests prove the round trip for every plan we can produce.
 */
import type * as IpAddress from 'ip-address';

let ipAddressModule: typeof IpAddress | undefined;
/** ip-address on first use: its load costs milliseconds on every ADD's start, and only a read-back needs it. */
function ipAddress(): typeof IpAddress {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return (ipAddressModule ??= require('ip-address') as typeof IpAddress);
}
import type { Family } from '../constants';

export interface ListedRule {
  table: string;
  chain: string;
  /** The rule as nft prints it, without counter values. */
  text: string;
  packets?: number;
}

const COUNTER = /\bcounter packets (\d+) bytes \d+/;

/** The rules of `nft list table ...` output (one or more tables), in listed order. */
export function parseNftList(output: string): ListedRule[] {
  const rules: ListedRule[] = [];
  let table: string | undefined;
  let chain: string | undefined;
  for (const raw of output.split('\n')) {
    const line = raw.replace(/\s+# handle \d+$/, '').trim();
    let m: RegExpExecArray | null;
    if ((m = /^table \S+ (\S+) \{$/.exec(line))) table = m[1];
    else if ((m = /^chain (\S+) \{$/.exec(line))) chain = m[1];
    else if (line === '}') {
      if (chain) chain = undefined;
      else table = undefined;
    } else if (table && chain && line !== '' && !/^(type \S+ hook|policy )/.test(line)) {
      const counter = COUNTER.exec(line);
      rules.push({ table, chain, text: line.replace(COUNTER, 'counter'), packets: counter ? Number(counter[1]) : undefined });
    }
  }
  return rules;
}

/** Which families a listed or rendered rule applies to: a rule naming none applies to both. */
export function familiesOf(text: string): Family[] {
  const t = ` ${text} `;
  if (/ (ip (saddr|daddr)|meta nfproto ipv4|tproxy ip) /.test(t)) return ['ipv4'];
  if (/ (ip6 (saddr|daddr)|meta nfproto ipv6|tproxy ip6) /.test(t)) return ['ipv6'];
  return ['ipv4', 'ipv6'];
}

function tokenize(text: string): string[] {
  return text.match(/\{[^}]*\}|"[^"]*"|\S+/g) ?? [];
}

function elements(token: string): string[] {
  return token.startsWith('{')
    ? token
        .slice(1, -1)
        .split(',')
        .map((e) => e.trim())
        .filter(Boolean)
    : [token];
}

type Interval = [bigint, bigint];

function addressInterval(text: string): Interval {
  const { Address4, Address6 } = ipAddress();
  const parse = (a: string) => (a.includes(':') ? new Address6(a) : new Address4(a));
  const dash = text.indexOf('-');
  if (dash > 0) return [parse(text.slice(0, dash)).bigInt(), parse(text.slice(dash + 1)).bigInt()];
  const addr = parse(text);
  return [addr.startAddress().bigInt(), addr.endAddress().bigInt()];
}

function numberInterval(text: string): Interval {
  const [lo, hi] = text.split('-');
  return [BigInt(lo), BigInt(hi ?? lo)];
}

/** A set of addresses or numbers as sorted, merged intervals: equal however nft grouped the elements. */
function mergedIntervals(values: string[], parse: (v: string) => Interval): string {
  const sorted = values.map(parse).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const merged: Interval[] = [];
  for (const [lo, hi] of sorted) {
    const last = merged[merged.length - 1];
    if (last && lo <= last[1] + 1n) last[1] = hi > last[1] ? hi : last[1];
    else merged.push([lo, hi]);
  }
  return merged.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)).join(',');
}

const hexOrDec = (v: string) => (/^0x[0-9a-f]+$/i.test(v) ? String(parseInt(v, 16)) : v);

/** A value after its keyword (`daddr`, `dport`, `state`, ...), in canonical form. */
function canonicalValue(keyword: string, token: string): string {
  const values = elements(token);
  // a named set (`ip daddr @probes-v4`) is compared by its name
  if (token.startsWith('@')) return token;
  if (keyword === 'saddr' || keyword === 'daddr') return mergedIntervals(values, addressInterval);
  if (keyword === 'sport' || keyword === 'dport') return mergedIntervals(values, numberInterval);
  return [...new Set(values.flatMap((v) => v.split(',')).map(hexOrDec))].sort().join(',');
}

/** Removes `words` wherever they occur as a run of tokens. */
function without(tokens: string[], words: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    if (words.every((w, k) => tokens[i + k] === w)) i += words.length - 1;
    else out.push(tokens[i]);
  }
  return out;
}

const VALUE_KEYWORDS = new Set(['saddr', 'daddr', 'sport', 'dport', 'state', 'mark', 'skuid', 'skgid', 'iifname', 'oifname', 'zone', 'l4proto']);

/** A rule's canonical signature (family-neutral: the family is compared separately). */
export function nftSignature(text: string): string {
  // `==` is implied where nft leaves it out and printed where it is needed (`meta mark & 0xfff == 0x539`).
  let tokens = tokenize(text.replace(COUNTER, 'counter')).filter((t) => t !== '==');
  tokens = without(tokens, ['meta', 'nfproto', 'ipv4']);
  tokens = without(tokens, ['meta', 'nfproto', 'ipv6']);
  for (const proto of ['tcp', 'udp']) {
    if (tokens.some((t, i) => t === proto && (tokens[i + 1] === 'dport' || tokens[i + 1] === 'sport'))) tokens = without(tokens, ['meta', 'l4proto', proto]);
  }
  const out: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const tok = tokens[i];
    const prev = out[out.length - 1];
    const keyword = prev === '!=' ? out[out.length - 2] : prev;
    const isValue = keyword !== undefined && VALUE_KEYWORDS.has(keyword) && tok !== '!=' && tok !== 'set';
    out.push(isValue ? canonicalValue(keyword, tok) : hexOrDec(tok));
  }
  return out.join(' ');
}
