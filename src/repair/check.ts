/**
 * The reconciler's check of one netns against a config: the comparison `compareRedirect` makes (the plan's
 * rules as the backend lists them, against what the netns holds, both families, under the netns lock),
 * made cheap enough to run over every pod of a node on each resync:
 *
 * - the expected rules are built once per (backend, config, families), not once per pod: the pods of a
 *   node mostly share a handful of configs, and a plan with its expected listing costs 0.3–1.3 ms;
 * - a family whose tables do not exist in the netns is not listed (no `ip6tables-save` for a pod that never
 *   had an IPv6 rule): nf_tables tables come from netlink, legacy ones from /proc (./nf-facts.ts);
 * - for backends that write through nf_tables (nft, iptables-nft), a netns found healthy is not read again
 *   while its cookie and nf_tables generation are unchanged: no transaction has committed there since.
 *
 * Anything the kernel facts cannot settle (netlink refused, a legacy or unknown iptables flavour, a netns a
 * failed rollback left broken) takes the full path: every family listed, nothing remembered.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RedirectConfig } from '../redirect/config';
import { FAMILIES, NFT_TABLE_NAMES, type Family } from '../redirect/constants';
import { chooseBackend, type BackendName } from '../redirect/engine';
import { detectFamilies } from '../redirect/routes';
import { buildPlan } from '../redirect/plan';
import { diffRules, knownBroken, observeAll } from '../redirect/rule-state';
import type { Backend, ObservedRule } from '../redirect/backend';
import { withNetnsLock } from '../netns';
import { NFPROTO, nfFacts, type NfFacts } from './nf-facts';

export interface CheckResult {
  ok: boolean;
  problems: string[];
  observedRules?: number;
}

/** How many listings a checker ran and saved, for the benchmark and the tests. */
export interface CheckStats {
  checks: number;
  /** families listed (one program per family for iptables, one listing for both for nft) */
  listings: number;
  /** families not listed because their tables do not exist */
  familiesSkipped: number;
  /** checks answered from an unchanged generation */
  unchanged: number;
}

/** Which packet-filter layer a backend writes to: nf_tables (generation ids apply), x_tables, or unknown. */
type Layer = 'nft-native' | 'iptables-nft' | 'iptables-legacy' | 'unknown';

/** The flavour the unsuffixed `iptables-save` really is on this host (an alternatives symlink). */
function defaultIptablesLayer(): Layer {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/sbin').split(':')) {
    try {
      const real = path.basename(fs.realpathSync(path.join(dir, 'iptables-save')));
      if (real.includes('legacy')) return 'iptables-legacy';
      if (real.includes('nft')) return 'iptables-nft';
      return 'unknown';
    } catch {
      continue;
    }
  }
  return 'unknown';
}

function layerOf(backend: Backend): Layer {
  if (backend.name === 'nftables') return 'nft-native';
  if (backend.name === 'iptables-nft') return 'iptables-nft';
  if (backend.name === 'iptables-legacy') return 'iptables-legacy';
  if (backend.name === 'iptables') return defaultIptablesLayer();
  return 'unknown';
}

const IPTABLES_TABLES = ['mangle', 'nat', 'raw'];

/** Whether `family` may hold rules of ours in this netns; undefined when the facts cannot tell. */
function mayHold(layer: Layer, facts: NfFacts, family: Family): boolean | undefined {
  if (layer === 'nft-native') return NFT_TABLE_NAMES.some((t) => facts.nftTables.has(`${NFPROTO.inet}:${t}`));
  if (layer === 'iptables-nft') return IPTABLES_TABLES.some((t) => facts.nftTables.has(`${NFPROTO[family]}:${t}`));
  if (layer === 'iptables-legacy') return IPTABLES_TABLES.some((t) => facts.legacyTables[family].has(t));
  return undefined;
}

function readFacts(netns: string, layer: Layer): NfFacts | undefined {
  if (layer === 'unknown') return undefined;
  try {
    return nfFacts(netns, { legacy: layer === 'iptables-legacy' });
  } catch {
    return undefined;
  }
}

export interface RepairChecker {
  check(netns: string, config: RedirectConfig): Promise<CheckResult>;
  readonly stats: CheckStats;
}

/** A checker for one backend choice; its caches live as long as it does (the agent's reconciler). */
export function repairChecker(o: { backend?: BackendName; hostNetns?: string } = {}): RepairChecker {
  const stats: CheckStats = { checks: 0, listings: 0, familiesSkipped: 0, unchanged: 0 };
  const expectedCache = new Map<string, Record<Family, ObservedRule[]>>();
  /** netns cookie → what the last healthy check saw */
  const healthy = new Map<bigint, { genId: number; key: string; result: CheckResult }>();

  const expectedFor = (backend: Backend, config: RedirectConfig, families: readonly Family[]) => {
    const key = `${backend.name}|${families.join(',')}|${JSON.stringify(config)}`;
    let expected = expectedCache.get(key);
    if (!expected) {
      const plan = buildPlan(config);
      expected = { ipv4: [], ipv6: [] };
      for (const family of families) expected[family] = backend.expected(family, plan[family].rules);
      // Bounded: configs come from pod annotations, and a node holds a few hundred pods at most.
      if (expectedCache.size >= 256) expectedCache.clear();
      expectedCache.set(key, expected);
    }
    return { key, expected };
  };

  const check = async (netnsPath: string, config: RedirectConfig): Promise<CheckResult> => {
    stats.checks++;
    const { backend } = await chooseBackend(o);
    const layer = layerOf(backend);
    // A read only: the reconciler's own netns is not refused here (the repair, an apply, refuses it).
    return withNetnsLock(netnsPath, async (netns) => {
      const families = await detectFamilies(netns);
      const { key, expected } = expectedFor(backend, config, families);
      const broken = knownBroken(netns);
      const facts = broken ? undefined : readFacts(netns, layer);
      const remembered = facts?.cookie !== undefined ? healthy.get(facts.cookie) : undefined;
      const generational = layer === 'nft-native' || layer === 'iptables-nft';
      if (facts && remembered && generational && facts.genId !== undefined && remembered.genId === facts.genId && remembered.key === key) {
        stats.unchanged++;
        return { ...remembered.result, problems: [] };
      }
      const problems: string[] = [];
      if (broken) problems.push(`a failed rollback left this netns in an unknown state: ${broken}`);
      let observed: ObservedRule[];
      try {
        const toList = FAMILIES.filter((f) => !facts || mayHold(layer, facts, f) !== false);
        stats.familiesSkipped += FAMILIES.length - toList.length;
        stats.listings += toList.length;
        observed = toList.length > 0 ? await observeAll(backend, netns, toList) : [];
      } catch (err) {
        if (!broken) throw err;
        return { ok: false, problems: [...problems, `the rules could not be read: ${(err as Error).message}`], observedRules: 0 };
      }
      for (const family of FAMILIES) problems.push(...diffRules(expected[family], observed.filter((r) => r.family === family)));
      const result: CheckResult = { ok: problems.length === 0, problems, observedRules: observed.length };
      if (facts?.cookie !== undefined) {
        // Bounded: a cookie is never reused, so namespaces long gone would otherwise stay remembered.
        if (healthy.size >= 4096) healthy.clear();
        if (result.ok && generational && facts.genId !== undefined) healthy.set(facts.cookie, { genId: facts.genId, key, result });
        else healthy.delete(facts.cookie);
      }
      return result;
    }, { allowOwn: true });
  };
  return { check, stats };
}
