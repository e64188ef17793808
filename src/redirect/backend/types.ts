import type { Family } from '../constants';
import type { Plan, Rule } from '../plan';

/** One rule of ours as the kernel holds it (or should hold it), comparable across renderers by signature. */
export interface ObservedRule {
  family: Family;
  table: string;
  chain: string;
  /** As the tool prints it (iptables-save spec, or nft rule text). */
  text: string;
  /** Canonical form: equal for the rule we rendered and the same rule read back. */
  signature: string;
  target?: string;
  /** Packets that matched, where the backend keeps counters. */
  packets?: number;
}

/** A way of programming rules into a netns. One plan feeds every backend. */
export interface Backend {
  readonly name: string;
  /** Programs `rules` atomically for one family, replacing whatever of ours was there. */
  apply(netns: string, family: Family, rules: readonly Rule[]): Promise<void>;
  /** Removes every rule and chain of ours for one family; returns how many rules were removed. */
  remove(netns: string, family: Family): Promise<number>;
  /** Our rules as the kernel holds them, per chain in order. */
  observe(netns: string, family: Family): Promise<ObservedRule[]>;
  /** What `observe` should return once `rules` are applied. */
  expected(family: Family, rules: readonly Rule[]): ObservedRule[];
  /**
   * For a backend whose one transaction covers every family (nftables' `inet` tables): programs the plan's
   * rules for `families` at once. When present, the engine calls it instead of `apply` per family.
   */
  applyAll?(netns: string, plan: Plan, families: readonly Family[]): Promise<void>;
  /** Likewise for removal: everything of ours, every family, in one step. */
  removeAll?(netns: string): Promise<number>;
}
