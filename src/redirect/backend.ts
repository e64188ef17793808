import type { Family } from './constants';
import type { AnyPlan, Rule } from './plan';

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

/**
 * A way of programming rules into a netns. One plan feeds every backend; each programs every family the
 * pod has and removes whatever of ours an earlier apply left, including a family no longer asked for.
 */
/** What an apply can say about its own result. */
export interface ApplyOutcome {
  /**
   * The rules now in the netns are exactly the plan's, by construction of the one transaction that ran
   * (it could only succeed whole, into a netns holding nothing of ours, or it replaced all of ours at once).
   * When false, only reading the rules back shows what the netns holds.
   */
  provenByTransaction: boolean;
}

/** Told where an apply's time goes (the agent's per-phase histogram); `lap` gives the time since the last lap. */
export interface ApplyLaps {
  lap(phase: 'render' | 'apply'): void;
}

export interface Backend {
  readonly name: string;
  /** Programs the plan's rules for `families`, replacing whatever of ours was there. */
  apply(netns: string, plan: AnyPlan, families: readonly Family[], laps?: ApplyLaps): Promise<ApplyOutcome>;
  /** Removes every rule and chain of ours, every family; returns how many rules were removed. */
  remove(netns: string): Promise<number>;
  /** Our rules for one family as the kernel holds them, per chain in order. */
  observe(netns: string, family: Family): Promise<ObservedRule[]>;
  /** The same for several families, where the backend can read them in one go. */
  observeFamilies?(netns: string, families: readonly Family[]): Promise<ObservedRule[]>;
  /** What `observe` should return once `rules` are applied. */
  expected(family: Family, rules: readonly Rule[]): ObservedRule[];
  /**
   * How the backend reaches the kernel, where it has more than one way, and why that one (nftables: in-process
   * through libnftables, or the nft program). Shown by `mesh-cni status` and `apply`, and in the apply report.
   */
  describeVia?(): string;
}
