/**
 * The iptables backend: one `iptables-restore --noflush` transaction per IP family, read back with
 * `iptables-save`, for either the nf_tables or the legacy flavour of the binaries.
 */
import { CommandFailedError } from '../../errors';
import { run, type RunResult } from '../../netns';
import { BUILTIN_CHAINS, FAMILIES, OUR_CHAINS, type Family, type Table } from '../constants';
import { widestConfig } from '../config';
import { effectiveChains, planFamily, type AnyPlan, type Rule } from '../plan';
import { renderRestore, toIptablesLines } from './render';
import { isOurs, isUntaggedState, parseSave, shapeKey, signature, targetOf, type SavedRule, type SavedState } from './save';
import type { ApplyLaps, ApplyOutcome, Backend, ObservedRule } from '../backend';
import { makeTemplateLater, replayCounts, replayEnabled, tryReplay } from './replay';

export type IptablesFlavour = 'default' | 'nft' | 'legacy';

const TABLES: Table[] = ['mangle', 'nat', 'raw'];

function binary(family: Family, flavour: IptablesFlavour, tool: 'restore' | 'save'): string {
  const base = family === 'ipv4' ? 'iptables' : 'ip6tables';
  return flavour === 'default' ? `${base}-${tool}` : `${base}-${flavour}-${tool}`;
}

/**
 * The built-in-chain rules any config of ours can write (TPROXY marks, DNS conntrack zones, interface
 * exclusions), by shape: how `remove` and `show` recognise the untagged ones an earlier release wrote
 * (today's carry the owner tag, see render/iptables.ts).
 */
function ownedShapesFor(family: Family): Set<string> {
  const lines = toIptablesLines(planFamily(widestConfig(), family).rules);
  const today = lines.filter((l) => (BUILTIN_CHAINS as readonly string[]).includes(l.chain)).map((l) => shapeKey(l.table, l.chain, l.spec));
  return new Set([...today, ...RETIRED_SHAPES.map(([table, chain, spec]) => shapeKey(table, chain, spec))]);
}

/**
 * Built-in-chain rules of Istio 1.24's layout, which releases before the owner tag wrote, that today's plans
 * no longer write: the DNS reply zone now lives in raw ISTIO_INBOUND. (That layout's other built-in-chain
 * rules are jumps into ISTIO_* chains, recognised by their target.)
 */
const RETIRED_SHAPES: Array<[Table, string, string]> = [['raw', 'PREROUTING', '-p udp --sport 53 -j CT --zone 1']];

const ownedShapes: Record<Family, Set<string> | undefined> = { ipv4: undefined, ipv6: undefined };
function shapes(family: Family): Set<string> {
  return (ownedShapes[family] ??= ownedShapesFor(family));
}

/**
 * A fresh sandbox's restore text by its rules: the engine's plans are cached and frozen (engine.ts planFor),
 * so the same rules array is the same text. Weak: a plan dropped from that cache takes its text with it.
 */
const freshText = new WeakMap<readonly Rule[], string>();
function renderFresh(rules: readonly Rule[]): string {
  if (!Object.isFrozen(rules)) return renderRestore(rules);
  let text = freshText.get(rules);
  if (text === undefined) freshText.set(rules, (text = renderRestore(rules)));
  return text;
}

export class IptablesBackend implements Backend {
  readonly name: string;

  /** How this backend's last apply reached the kernel, per family programmed (undefined: no apply yet). */
  private used?: Array<'replay' | 'restore'>;

  constructor(readonly flavour: IptablesFlavour = 'default') {
    this.name = flavour === 'default' ? 'iptables' : `iptables-${flavour}`;
  }

  /** After an apply: whether it replayed; before one (status): whether this process replays at all. */
  describeVia(): string {
    if (this.used?.length) return [...new Set(this.used)].map((u) => (u === 'replay' ? 'nf_tables replay' : 'iptables-restore')).join(' and ');
    if (this.flavour === 'legacy' || !replayEnabled()) return 'iptables-restore';
    const { ready, restoreOnly } = replayCounts();
    return `iptables-restore, fresh sandboxes by nf_tables replay where the node's iptables is iptables-nft (${ready} plans ready${restoreOnly ? `, ${restoreOnly} restore-only` : ''})`;
  }

  private async exec(netns: string, family: Family, tool: 'restore' | 'save', args: string[], input?: string): Promise<RunResult> {
    const program = binary(family, this.flavour, tool);
    const result = await run(netns, program, args, { input, timeoutMs: 30_000, packageHint: 'iptables' });
    if (result.code !== 0) throw new CommandFailedError(program, result.code, result.stderr, 'the rules were not applied');
    return result;
  }

  /** One save of every table (one process, not one per table: the reconciler runs this for every pod). */
  private async save(netns: string, family: Family): Promise<SavedState> {
    const state = parseSave((await this.exec(netns, family, 'save', [])).stdout);
    return {
      chains: new Map([...state.chains].filter(([table]) => TABLES.includes(table))),
      rules: state.rules.filter((r) => TABLES.includes(r.table)),
    };
  }

  private ours(state: SavedState, family: Family): SavedRule[] {
    const untagged = isUntaggedState(state);
    return state.rules.filter((r) => isOurs(r, shapes(family), untagged));
  }

  /**
   * Lines that take out what an earlier apply left, so a re-apply replaces instead of duplicating: first
   * the jumps and built-in-chain rules of ours, then every stale chain emptied, then deleted (a chain can
   * only go once nothing refers to it).
   */
  private replaceLines(state: SavedState, family: Family, keepChains: Map<Table, string[]>): Map<Table, string[]> {
    const before = new Map<Table, string[]>();
    const push = (table: Table, line: string) => before.set(table, [...(before.get(table) ?? []), line]);
    for (const rule of this.ours(state, family)) {
      if (!OUR_CHAINS.includes(rule.chain)) push(rule.table, `-D ${rule.chain} ${rule.spec}`);
    }
    const stale = [...state.chains].flatMap(([table, chains]) =>
      [...chains].filter((c) => OUR_CHAINS.includes(c) && !keepChains.get(table)?.includes(c)).map((chain) => ({ table, chain })),
    );
    for (const { table, chain } of stale) push(table, `-F ${chain}`);
    for (const { table, chain } of stale) push(table, `-X ${chain}`);
    return before;
  }

  /**
   * One transaction per family. A family with no rules (interceptionMode NONE, or a family the pod no
   * longer has) is cleared only when something of ours may be there: never on a fresh sandbox's ADD.
   */
  async apply(netns: string, plan: AnyPlan, families: readonly Family[], laps?: ApplyLaps): Promise<ApplyOutcome> {
    this.used = [];
    let replaced = false;
    let allCreated = true;
    for (const family of families) {
      if (plan[family].rules.length === 0) {
        replaced = (await this.removeFamily(netns, family)) > 0 || replaced;
        allCreated = false;
      } else {
        const how = await this.applyFamily(netns, family, plan[family].rules, laps);
        replaced = how === 'replaced' || replaced;
        allCreated = allCreated && how === 'created';
      }
    }
    // Each fresh restore created our chains (its `-N` lines fail the whole transaction when one exists).
    if (!replaced) return { provenByTransaction: allCreated };
    for (const family of FAMILIES.filter((f) => !families.includes(f))) await this.removeFamily(netns, family);
    return { provenByTransaction: false };
  }

  async remove(netns: string): Promise<number> {
    let removed = 0;
    for (const family of FAMILIES) removed += await this.removeFamily(netns, family);
    return removed;
  }

  private async applyFamily(netns: string, family: Family, rules: readonly Rule[], laps?: ApplyLaps): Promise<'created' | 'replaced'> {
    // Fast path for a fresh sandbox: Istio's own text, whose `-N` fails (changing nothing) if our chains exist.
    laps?.lap('apply');
    const text = renderFresh(rules);
    laps?.lap('render');
    const restore = binary(family, this.flavour, 'restore');
    // On iptables-nft, the same objects in one transaction without the process (./nft-replay.ts); like the
    // restore below it only succeeds into a netns holding none of them, and anything else falls through.
    if (this.flavour !== 'legacy' && tryReplay(netns, restore, text) === 'replayed') {
      this.used?.push('replay');
      return 'created';
    }
    const fresh = await run(netns, restore, ['--noflush'], {
      input: text,
      timeoutMs: 30_000,
      packageHint: 'iptables',
    });
    this.used?.push('restore');
    if (fresh.code === 0) {
      if (this.flavour !== 'legacy') makeTemplateLater(family, restore, binary(family, this.flavour, 'save'), text);
      return 'created';
    }
    // The save and the replacing restore are two steps; the engine holds the netns lock across both, so no
    // other mesh-cni request can change our rules in between (the replace's `-D` lines name what was saved).
    const state = await this.save(netns, family);
    const anyOurs = this.ours(state, family).length > 0 || [...state.chains.values()].some((c) => [...c].some((n) => OUR_CHAINS.includes(n)));
    if (!anyOurs) {
      throw new CommandFailedError(binary(family, this.flavour, 'restore'), fresh.code, fresh.stderr, 'the rules were not applied');
    }
    const keep = new Map<Table, string[]>();
    for (const r of rules) {
      for (const c of [r.chain, r.target.kind === 'jump' ? r.target.chain : undefined]) {
        if (c && OUR_CHAINS.includes(c)) keep.set(r.table, [...new Set([...(keep.get(r.table) ?? []), c])]);
      }
    }
    await this.exec(netns, family, 'restore', ['--noflush'], renderRestore(rules, { replace: { before: this.replaceLines(state, family, keep) } }));
    return 'replaced';
  }

  private async removeFamily(netns: string, family: Family): Promise<number> {
    const state = await this.save(netns, family);
    const ours = this.ours(state, family);
    const before = this.replaceLines(state, family, new Map());
    if (before.size === 0) return 0;
    let text = '';
    for (const [table, lines] of [...before].sort(([a], [b]) => a.localeCompare(b))) text += `*${table}\n${lines.join('\n')}\nCOMMIT\n`;
    await this.exec(netns, family, 'restore', ['--noflush'], text);
    return ours.length;
  }

  async observe(netns: string, family: Family): Promise<ObservedRule[]> {
    const state = await this.save(netns, family);
    return this.ours(state, family).map((r) => ({ family, table: r.table, chain: r.chain, text: r.spec, signature: signature(r.spec), target: targetOf(r.spec) }));
  }

  /**
   * The rules the kernel should hold for `rules`, per chain in final order, as canonical signatures. Kept per
   * frozen rules array (the engine's cached plans), as the fresh restore text is: every ADD asks for them.
   */
  expected(family: Family, rules: readonly Rule[]): ObservedRule[] {
    if (!Object.isFrozen(rules)) return expectedRules(family, rules);
    const byFamily = expectedCache.get(rules) ?? {};
    expectedCache.set(rules, byFamily);
    return (byFamily[family] ??= Object.freeze(expectedRules(family, rules)) as ObservedRule[]);
  }
}

const expectedCache = new WeakMap<readonly Rule[], Partial<Record<Family, ObservedRule[]>>>();

function expectedRules(family: Family, rules: readonly Rule[]): ObservedRule[] {
  const lines = toIptablesLines(rules);
  const out: ObservedRule[] = [];
  for (const chainLines of effectiveChains(lines).values()) {
    for (const l of chainLines) out.push({ family, table: l.table, chain: l.chain, text: l.spec, signature: signature(l.spec), target: targetOf(l.spec) });
  }
  return out;
}
