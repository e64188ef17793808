/**
 * Reading what nftables holds from its JSON listing (`nft -j list ruleset`, or libnftables with JSON output):
 * each rule's expressions are written back as the rule text `nft list` prints, so one canonical signature
 * (nft-list.ts) compares a rendered rule, a text listing and a JSON listing alike. Only the expressions our
 * renderer can produce are known; anything else is written as `?{json}`, which matches no rule we render,
 * so a foreign statement in one of our chains shows up as a difference instead of disappearing.
 * Pure functions; the kernel tests prove, for every golden case, that this gives what the text parser gives.
 */
import type { ListedRule } from './list';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

interface JsonRule {
  family: string;
  table: string;
  chain: string;
  expr?: Json[];
}

const isObject = (v: Json | undefined): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

const unknown = (v: Json | undefined) => `?${JSON.stringify(v)}`;

/** Keys `nft list` prints without the `meta` keyword. */
const BARE_META = new Set(['iifname', 'oifname', 'iif', 'oif']);
/** Values `nft list` quotes. */
const QUOTED = new Set(['iifname', 'oifname']);

/** A value expression (`meta mark`, `ct mark`, a payload field): the left side of a match or a mangle. */
function selector(v: Json | undefined): { text: string; key: string } {
  if (isObject(v)) {
    const [kind, body] = Object.entries(v)[0] ?? [];
    if (isObject(body)) {
      if (kind === 'meta' && typeof body.key === 'string') return { text: BARE_META.has(body.key) ? body.key : `meta ${body.key}`, key: body.key };
      if (kind === 'ct' && typeof body.key === 'string' && body.dir === undefined) return { text: `ct ${body.key}`, key: body.key };
      if (kind === 'payload' && typeof body.protocol === 'string' && typeof body.field === 'string') return { text: `${body.protocol} ${body.field}`, key: body.field };
    }
    // A masked value: `meta mark & 0xfff`, `ct mark & 0xfff`, and in a mangle `ct mark & A | B`.
    if ((kind === '&' || kind === '|') && Array.isArray(body) && body.length === 2 && typeof body[1] === 'number') {
      const inner = selector(body[0]);
      if (!inner.text.startsWith('?')) return { text: `${inner.text} ${kind} ${body[1]}`, key: inner.key };
    }
  }
  return { text: unknown(v), key: '' };
}

function element(v: Json, key: string): string {
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return QUOTED.has(key) ? `"${v}"` : v;
  if (isObject(v)) {
    if (isObject(v.prefix) && typeof v.prefix.addr === 'string' && typeof v.prefix.len === 'number') return `${v.prefix.addr}/${v.prefix.len}`;
    if (Array.isArray(v.range) && v.range.length === 2) return `${element(v.range[0]!, key)}-${element(v.range[1]!, key)}`;
    // An expression as a value: `meta mark set ct mark`.
    const s = selector(v);
    if (!s.text.startsWith('?')) return s.text;
  }
  return unknown(v);
}

function value(v: Json | undefined, key: string): string {
  if (v === undefined) return unknown(v);
  if (Array.isArray(v)) return v.map((x) => element(x, key)).join(','); // flags: ct state established,related
  if (isObject(v) && Array.isArray(v.set)) return v.set.length === 1 ? element(v.set[0]!, key) : `{ ${v.set.map((x) => element(x, key)).join(', ')} }`;
  return element(v, key);
}

/** One statement or match as `nft list` prints it; the counter's packets are reported beside. */
function statement(e: Json, counter: { packets?: number }): string {
  if (!isObject(e)) return unknown(e);
  const [kind, body] = Object.entries(e)[0] ?? ['', null];
  switch (kind) {
    case 'match': {
      if (!isObject(body)) break;
      const left = selector(body.left);
      const op = body.op === '==' || body.op === 'in' ? '' : body.op === '!=' ? '!= ' : `${String(body.op)} `;
      return `${left.text} ${op}${value(body.right, left.key)}`;
    }
    case 'counter':
      if (isObject(body) && typeof body.packets === 'number') counter.packets = body.packets;
      return 'counter';
    case 'accept':
    case 'drop':
    case 'return':
    case 'continue':
      return kind;
    case 'jump':
    case 'goto':
      if (isObject(body) && typeof body.target === 'string') return `${kind} ${body.target}`;
      break;
    case 'redirect':
      if (body === null) return 'redirect';
      if (isObject(body) && Object.keys(body).every((k) => k === 'port')) return `redirect to :${value(body.port, 'port')}`;
      break;
    case 'snat':
      if (isObject(body) && typeof body.family === 'string' && typeof body.addr === 'string' && Object.keys(body).length === 2) return `snat ${body.family} to ${body.addr}`;
      break;
    case 'tproxy':
      if (isObject(body) && typeof body.family === 'string' && body.port !== undefined && body.addr === undefined) return `tproxy ${body.family} to :${value(body.port, 'port')}`;
      break;
    case 'mangle':
      if (isObject(body)) {
        const key = selector(body.key);
        return `${key.text} set ${value(body.value, key.key)}`;
      }
      break;
  }
  return unknown(e);
}

/** The rules of a JSON listing, in listed order, with the text `nft list` would print for each. */
export function parseNftJson(output: string): ListedRule[] {
  const items = (JSON.parse(output) as { nftables?: Json[] }).nftables ?? [];
  const rules: ListedRule[] = [];
  for (const item of items) {
    if (!isObject(item) || !isObject(item.rule)) continue;
    const rule = item.rule as unknown as JsonRule;
    const counter: { packets?: number } = {};
    const text = (rule.expr ?? []).map((e) => statement(e, counter)).join(' ');
    rules.push({ table: rule.table, chain: rule.chain, text, packets: counter.packets });
  }
  return rules;
}
