/**
 * The native nftables backend: the whole plan, both families, as one `nft -f -` transaction into our own
 * `inet` tables, read back with `nft list ruleset inet`. Everything of ours is in tables named mesh-cni-*,
 * so removing is deleting those tables and nobody else's rule is ever touched.
 */
import * as fs from 'node:fs';
import { CommandFailedError } from '../../errors';
import { run, type RunResult } from '../../netns';
import { NFT_TABLES, NFT_TABLE_NAMES, nftChainName, type Family, type Table } from '../constants';
import { effectiveChains, type Plan, type Rule } from '../plan';
import { nftDeleteTables, renderNftScript, ruleBodies } from '../render/nftables';
import { familiesOf, nftSignature, parseNftList, type ListedRule } from '../nft-list';
import type { ApplyOutcome, Backend, ObservedRule } from './types';

/**
 * The system's nft, by absolute path when it is in a system directory: npm puts node_modules/.bin first in
 * PATH, and a package there may well be called `nft` (@vercel/nft is, exits 0 and programs nothing).
 */
export function nftProgram(): string {
  return ['/usr/sbin/nft', '/sbin/nft', '/usr/local/sbin/nft', '/usr/bin/nft'].find((p) => fs.existsSync(p)) ?? 'nft';
}

const TABLE_OF = new Map<string, Table>(Object.entries(NFT_TABLES).map(([table, name]) => [name, table as Table]));

export interface NftablesBackendOptions {
  /** The nft program (a path in tests, to run a stand-in that fails). */
  nft?: string;
}

export class NftablesBackend implements Backend {
  readonly name = 'nftables';
  private readonly nft: string;

  constructor(options: NftablesBackendOptions = {}) {
    this.nft = options.nft ?? nftProgram();
  }

  private async exec(netns: string, args: string[], input?: string, hint = 'the rules were not applied'): Promise<RunResult> {
    const result = await run(netns, this.nft, args, { input, timeoutMs: 30_000, packageHint: 'nftables' });
    if (result.code !== 0) throw new CommandFailedError(this.nft, result.code, result.stderr, hint);
    return result;
  }

  /** Our rules as listed, in chain order. */
  private async list(netns: string): Promise<ListedRule[]> {
    const listed = await this.exec(netns, ['list', 'ruleset', 'inet'], undefined, 'could not read the nftables ruleset');
    return parseNftList(listed.stdout).filter((r) => NFT_TABLE_NAMES.includes(r.table));
  }

  /** One transaction for every family: the script deletes our tables and defines what the plan needs. */
  async apply(netns: string, plan: Plan, families: readonly Family[]): Promise<ApplyOutcome> {
    await this.exec(netns, ['-f', '-'], renderNftScript(plan, families));
    // One transaction deleted every table of ours and defined the plan's: nothing else of ours can remain.
    return { provenByTransaction: true };
  }

  async remove(netns: string): Promise<number> {
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
}

/** The chain a rule jumps to, if it jumps. */
function targetOf(text: string): string | undefined {
  return /\bjump (\S+)$/.exec(text)?.[1];
}
