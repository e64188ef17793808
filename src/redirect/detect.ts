/**
 * `--backend auto`: program pods the way the node already programs itself. Two packet filters can coexist in
 * one kernel, but rules written through the one the node does not use surprise whoever debugs the node (and
 * iptables-legacy may not even be there: RHEL 10 ships without it). Like kube-proxy and Istio, we look at
 * where the host's (the agent's netns) existing rules are.
 */
import { run } from '../netns';
import { NFT_TABLE_NAMES } from './constants';
import { nftProgram } from './nftables/backend';
import { libnftablesAvailable, nftablesModeFromEnv, runNft } from './nftables/libnftables';

export type ConcreteBackend = 'nftables' | 'iptables-nft' | 'iptables-legacy';

export interface BackendChoice {
  backend: ConcreteBackend;
  reason: string;
}

/** Rule counts per packet filter on the host; undefined when that tool is missing or could not read them. */
export interface HostRuleCounts {
  legacy?: number;
  iptablesNft?: number;
  nativeNft?: number;
}

/** The decision alone, pure, so every branch is tested without a kernel. */
export function decideBackend(c: HostRuleCounts): BackendChoice {
  const legacy = c.legacy ?? 0;
  const compat = c.iptablesNft ?? 0;
  const native = c.nativeNft ?? 0;
  if (native > 0 && legacy === 0) {
    return { backend: 'nftables', reason: `the host has ${native} native nftables rules and no iptables-legacy rules` };
  }
  if (legacy > compat) {
    return { backend: 'iptables-legacy', reason: `the host's iptables rules are in iptables-legacy (${legacy} rules, ${compat} in iptables-nft)` };
  }
  if (compat > 0) {
    return { backend: 'iptables-nft', reason: `the host's iptables rules are in iptables-nft (${compat} rules, ${legacy} in iptables-legacy)` };
  }
  if (c.iptablesNft === undefined && c.nativeNft !== undefined) {
    return { backend: 'nftables', reason: 'the host has no rules and no iptables-nft binaries, but nft works' };
  }
  return { backend: 'iptables-nft', reason: "the host has no rules yet; iptables (nf_tables flavour) is Istio's default" };
}

/** Rules (`-A` lines) in the save output of one iptables flavour, both families. */
async function countIptablesRules(hostNetns: string, flavour: 'legacy' | 'nft'): Promise<number | undefined> {
  let total = 0;
  for (const base of ['iptables', 'ip6tables']) {
    const r = await run(hostNetns, `${base}-${flavour}-save`, [], { timeoutMs: 30_000 }).catch(() => undefined);
    if (!r || r.code !== 0) return undefined;
    total += r.stdout.split('\n').filter((l) => l.startsWith('-A ')).length;
  }
  return total;
}

/** iptables-nft keeps its rules in nft tables of these names; they are iptables rules, not native ones. */
const IPTABLES_NFT_TABLES = new Set(['filter', 'nat', 'mangle', 'raw', 'security', 'broute']);
const IPTABLES_NFT_FAMILIES = new Set(['ip', 'ip6', 'arp', 'bridge']);

interface NftJsonItem {
  rule?: { family: string; table: string };
}

/** The host's whole ruleset as nft's JSON, in-process where libnftables loads (as the backend would run it). */
async function nftJsonRuleset(hostNetns: string): Promise<string | undefined> {
  if (nftablesModeFromEnv() !== 'process' && libnftablesAvailable()) {
    try {
      const [r] = runNft(hostNetns, [{ script: 'list ruleset', json: true }]);
      return r?.ok ? r.output : undefined;
    } catch {
      return undefined;
    }
  }
  const r = await run(hostNetns, nftProgram(), ['-j', 'list', 'ruleset'], { timeoutMs: 30_000 }).catch(() => undefined);
  return r && r.code === 0 ? r.stdout : undefined;
}

/** Rules in native nftables tables (not iptables-nft's, not ours). */
async function countNativeNftRules(hostNetns: string): Promise<number | undefined> {
  const listing = await nftJsonRuleset(hostNetns);
  if (listing === undefined) return undefined;
  const items = (JSON.parse(listing || '{"nftables":[]}') as { nftables: NftJsonItem[] }).nftables;
  return items.filter(({ rule }) => rule && !NFT_TABLE_NAMES.includes(rule.table) && !(IPTABLES_NFT_FAMILIES.has(rule.family) && IPTABLES_NFT_TABLES.has(rule.table))).length;
}

export async function hostRuleCounts(hostNetns: string): Promise<HostRuleCounts> {
  const [legacy, iptablesNft, nativeNft] = await Promise.all([countIptablesRules(hostNetns, 'legacy'), countIptablesRules(hostNetns, 'nft'), countNativeNftRules(hostNetns)]);
  return { legacy, iptablesNft, nativeNft };
}

export async function detectBackend(hostNetns = '/proc/self/ns/net'): Promise<BackendChoice> {
  return decideBackend(await hostRuleCounts(hostNetns));
}
