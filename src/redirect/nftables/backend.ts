/**
 * The native nftables backend: the whole plan, both families, as one nft transaction into our own `inet`
 * tables, read back as a listing of the ruleset. Everything of ours is in tables named mesh-cni-*, so
 * removing is deleting those tables and nobody else's rule is ever touched.
 *
 * Two ways to talk to nftables, the same script and the same result:
 * - in-process, through libnftables (libnftables.ts) inside `withNetns`: no process on the ADD path, and the
 *   read-back is the library's JSON listing (nft-json.ts). Used whenever the library loads.
 * - the `nft` program, spawned in the netns: `nft -f -` with the script on stdin, read back with
 *   `nft list ruleset inet` (nft-list.ts). The fallback where libnftables is absent, or forced with
 *   MESH_CNI_NFTABLES=process.
 * `via` says which one this backend uses.
 */
import * as fs from 'node:fs';
import { CommandFailedError, NftRefusedError } from '../../errors';
import { run, type RunResult } from '../../netns';
import { NFT_TABLES, NFT_TABLE_NAMES, nftChainName, type Family, type Table } from '../constants';
import { effectiveChains, type AnyPlan, type Rule } from '../plan';
import { nftDeleteTables, renderNftScript, ruleBodies } from './render';
import { familiesOf, nftSignature, parseNftList, type ListedRule } from './list';
import { parseNftJson } from './json';
import { LIBNFTABLES, libnftablesUnavailable, nftablesModeFromEnv, NFTABLES_MODE_ENV, nftSession, runNft, type NftablesMode } from './libnftables';
import type { ApplyLaps, ApplyOutcome, Backend, ObservedRule } from '../backend';

/**
 * The system's nft, by absolute path when it is in a system directory: npm puts node_modules/.bin first in
 * PATH, and a package there may well be called `nft` (@vercel/nft is, exits 0 and programs nothing).
 */
export function nftProgram(): string {
  return ['/usr/sbin/nft', '/sbin/nft', '/usr/local/sbin/nft', '/usr/bin/nft'].find((p) => fs.existsSync(p)) ?? 'nft';
}

const TABLE_OF = new Map<string, Table>(Object.entries(NFT_TABLES).map(([table, name]) => [name, table as Table]));

export interface NftablesBackendOptions {
  /** The nft program (a path in tests, to run a stand-in that fails); naming one means the process path unless `mode` says otherwise. */
  nft?: string;
  /** `library`, `process`, or `auto` (the library when it loads); by default MESH_CNI_NFTABLES, else auto. */
  mode?: NftablesMode;
}

/** How the backend reaches nftables. */
export type NftVia = 'libnftables' | 'nft';

const LIST_RULESET = 'list ruleset inet';
/** NFPROTO_INET, the family of our tables in a netlink table listing. */
const NFPROTO_INET = 1;

/**
 * Whether `tables` (the netns's, from the session's netlink listing) holds any table of ours: asked of the kernel directly (one netlink
 * dump of the table names: a listing through libnftables costs it a cache fetch of four kinds of object,
 * and us its JSON).
 */
function holdsTablesOfOurs(tables: Set<string>): boolean {
  return NFT_TABLE_NAMES.some((name) => tables.has(`${NFPROTO_INET}:${name}`));
}

interface Scripts {
  /** Deletes whatever of ours is there and defines the plan. */
  replacing: string;
  /** For a netns holding none of our tables: defines the plan, and fails whole if one of its tables exists. */
  fresh: string;
}

/**
 * Rendered scripts and expected rules, kept with the plan they came from. The agent's plans come from the
 * engine's plan cache (`planFor`) and are frozen, so the same object always renders the same text: most ADDs
 * repeat a handful of configs, and rendering (0.2 ms) and the expected rules' signatures (0.6 ms, needed
 * for the rule count even when nothing is read back) were a fifth of the agent's CPU per ADD. A plan that
 * is not frozen might change, so it is rendered each time.
 */
const scriptCache = new WeakMap<AnyPlan, Map<string, Scripts>>();
const expectedCache = new WeakMap<readonly Rule[], Map<Family, readonly ObservedRule[]>>();

function scriptsFor(plan: AnyPlan, families: readonly Family[]): Scripts {
  const render = (): Scripts => ({ replacing: renderNftScript(plan, families), fresh: renderNftScript(plan, families, { fresh: true }) });
  if (!Object.isFrozen(plan)) return render();
  let byFamilies = scriptCache.get(plan);
  if (!byFamilies) scriptCache.set(plan, (byFamilies = new Map()));
  const key = families.join(',');
  let scripts = byFamilies.get(key);
  if (!scripts) byFamilies.set(key, (scripts = render()));
  return scripts;
}

/**
 * Which way a backend made with these options talks to nftables, and why (for `mesh-cni status`, the
 * apply report and the agent's log).
 */
export function nftablesVia(options: NftablesBackendOptions = {}): { via: NftVia; reason: string } {
  if (options.mode === undefined && options.nft !== undefined) return { via: 'nft', reason: `the nft program ${options.nft} was named` };
  const mode = options.mode ?? nftablesModeFromEnv();
  if (mode === 'process') return { via: 'nft', reason: options.mode ? 'the nft process was asked for' : `${NFTABLES_MODE_ENV}=process` };
  const unavailable = libnftablesUnavailable();
  if (unavailable === undefined) return { via: 'libnftables', reason: `${LIBNFTABLES} loaded` };
  if (mode === 'library') throw new CommandFailedError(LIBNFTABLES, null, unavailable, `install the libnftables1 package, or unset ${NFTABLES_MODE_ENV}`);
  return { via: 'nft', reason: `${unavailable}; spawning nft instead` };
}

export class NftablesBackend implements Backend {
  readonly name = 'nftables';
  private readonly nft: string;
  private chosen?: { via: NftVia; reason: string };

  constructor(private readonly options: NftablesBackendOptions = {}) {
    this.nft = options.nft ?? nftProgram();
  }

  /** Decided on first use, so making a backend (`mesh-cni plan`) loads no native code. */
  get via(): NftVia {
    return (this.chosen ??= nftablesVia(this.options)).via;
  }

  get viaReason(): string {
    return (this.chosen ??= nftablesVia(this.options)).reason;
  }

  describeVia(): string {
    return this.via === 'libnftables' ? `libnftables in-process (${this.viaReason})` : `the nft program (${this.viaReason})`;
  }

  private async exec(netns: string, args: string[], input?: string, hint = 'the rules were not applied'): Promise<RunResult> {
    const result = await run(netns, this.nft, args, { input, timeoutMs: 30_000, packageHint: 'nftables' });
    if (result.code !== 0) throw new CommandFailedError(this.nft, result.code, result.stderr, hint);
    return result;
  }

  /**
   * Runs nft commands in the netns, in-process or as `nft` (one process per command); returns each one's
   * output. A command nft refuses throws CommandFailedError with nft's own error text, as the process does.
   */
  private async commands(netns: string, commands: Array<{ script: string; json?: boolean }>, hint: string): Promise<string[]> {
    if (this.via === 'nft') {
      const out: string[] = [];
      for (const c of commands) {
        const r = c.script === LIST_RULESET ? await this.exec(netns, ['list', 'ruleset', 'inet'], undefined, hint) : await this.exec(netns, ['-f', '-'], c.script, hint);
        out.push(r.stdout);
      }
      return out;
    }
    const results = runNft(netns, commands);
    const failed = results.find((r) => !r.ok);
    if (failed) throw new NftRefusedError(failed.error, hint);
    return results.map((r) => r.output);
  }

  private parse(listing: string): ListedRule[] {
    const rules = this.via === 'nft' ? parseNftList(listing) : parseNftJson(listing);
    return rules.filter((r) => NFT_TABLE_NAMES.includes(r.table));
  }

  /** Our rules as listed, in chain order. */
  private async list(netns: string): Promise<ListedRule[]> {
    const [listing] = await this.commands(netns, [{ script: LIST_RULESET, json: true }], 'could not read the nftables ruleset');
    return this.parse(listing!);
  }

  /**
   * One transaction for every family. In-process, our tables are listed first, in the same visit to the
   * netns and under the engine's netns lock: where there are none (a fresh sandbox), the fresh script
   * creates the plan's tables, and `create` fails the whole transaction if one appeared meanwhile; otherwise
   * the replacing script deletes ours and defines the plan's. The process path always replaces (a listing
   * would be one more process).
   */
  async apply(netns: string, plan: AnyPlan, families: readonly Family[], laps?: ApplyLaps): Promise<ApplyOutcome> {
    laps?.lap('apply');
    const scripts = scriptsFor(plan, families);
    laps?.lap('render');
    const hint = 'the rules were not applied';
    if (this.via === 'nft') {
      await this.commands(netns, [{ script: scripts.replacing }], hint);
    } else {
      const failed = nftSession(netns, (run, tables) => {
        let fresh: boolean;
        try {
          fresh = !holdsTablesOfOurs(tables());
        } catch (err) {
          return { ok: false, output: '', error: `could not list the netns's nf_tables tables: ${(err as Error).message}` };
        }
        if (fresh && scripts.fresh === '') return undefined;
        const applied = run({ script: fresh ? scripts.fresh : scripts.replacing });
        return applied.ok ? undefined : applied;
      });
      if (failed) throw new NftRefusedError(failed.error, hint);
    }
    // One transaction either created every table of the plan where none of ours was, or deleted every table
    // of ours and defined the plan's: nothing else of ours can remain.
    return { provenByTransaction: true };
  }

  async remove(netns: string): Promise<number> {
    if (this.via === 'libnftables') {
      // The listing and the delete in one visit to the netns.
      const [listing] = await this.commands(netns, [{ script: LIST_RULESET, json: true }, { script: nftDeleteTables() }], 'the rules were not removed');
      return this.parse(listing!).length;
    }
    const rules = await this.list(netns);
    await this.exec(netns, ['-f', '-'], nftDeleteTables(), 'the rules were not removed');
    return rules.length;
  }

  async observe(netns: string, family: Family): Promise<ObservedRule[]> {
    return this.observeFamilies(netns, [family]);
  }

  /** One listing serves every family (our tables are inet). */
  async observeFamilies(netns: string, families: readonly Family[]): Promise<ObservedRule[]> {
    const listed = await this.list(netns);
    return families.flatMap((family) => this.asObserved(listed, family));
  }

  private asObserved(listed: readonly ListedRule[], family: Family): ObservedRule[] {
    return listed
      .filter((r) => familiesOf(r.text).includes(family))
      .map((r) => ({ family, table: TABLE_OF.get(r.table)!, chain: r.chain, text: r.text, signature: nftSignature(r.text), target: targetOf(r.text), packets: r.packets }));
  }

  expected(family: Family, rules: readonly Rule[]): ObservedRule[] {
    if (!Object.isFrozen(rules)) return expectedRules(family, rules);
    let byFamily = expectedCache.get(rules);
    if (!byFamily) expectedCache.set(rules, (byFamily = new Map()));
    let cached = byFamily.get(family);
    if (!cached) byFamily.set(family, (cached = Object.freeze(expectedRules(family, rules).map((r) => Object.freeze(r)))));
    // A copy of the list: callers may sort or filter it; the rules in it are frozen.
    return [...cached];
  }
}

/** What the kernel lists for `rules` in `family`, in chain order, each with its canonical signature. */
function expectedRules(family: Family, rules: readonly Rule[]): ObservedRule[] {
  const out: ObservedRule[] = [];
  for (const chainRules of effectiveChains(rules).values()) {
    for (const rule of chainRules) {
      for (const body of ruleBodies(rule, family)) {
        out.push({ family, table: rule.table, chain: nftChainName(rule.chain), text: body, signature: nftSignature(body), target: targetOf(body) });
      }
    }
  }
  return out;
}

/** The chain a rule jumps to, if it jumps. */
function targetOf(text: string): string | undefined {
  return /\bjump (\S+)$/.exec(text)?.[1];
}
