/**
 * A primary CNI that removes our entry again and again (Cilium with `cni.exclusive=true` renames every other
 * config and rewrites its own, continuously): putting the entry back each time is a loop without end, and the
 * pods created in between run without rules whatever we do. So after `removals` removals within `windowMs`
 * the installer holds: it stops writing the config, the agent turns not ready and says which file and what to
 * change. While held nothing of ours is in the file, so the primary has nothing left to remove; after
 * `quietMs` the installer tries once more. A removal within `windowMs` of that try holds again for twice as
 * long (up to `maxQuietMs`); a try that stands for `windowMs` ends the fight and the next hold starts over at
 * `quietMs`. Pure: the clock is handed in, so the policy is unit-tested without waiting.
 */

export interface FightPolicy {
  /** removals of our entry that start a hold ... */
  removals: number;
  /** ... when they fall within this many milliseconds */
  windowMs: number;
  /** how long the first hold lasts before one more try */
  quietMs: number;
  /** the longest a hold grows to when the tries keep failing */
  maxQuietMs: number;
}

/** 5 removals in 60 s: a primary that rewrites its file on its own schedule (a restart, an upgrade, a CIDR
 * change) removes our entry a few times an hour; an exclusive one removes it within a second of every write. */
export const DEFAULT_FIGHT_POLICY: FightPolicy = { removals: 5, windowMs: 60_000, quietMs: 60_000, maxQuietMs: 600_000 };

export interface HoldState {
  /** when the hold began (ms since the epoch) */
  since: number;
  /** when the installer tries again */
  until: number;
  /** removals counted within the window when the hold began (1 for a failed try) */
  removals: number;
  /** the holds in a row: 1 for the first, 2 after one failed try, ... */
  strike: number;
}

export class FightGuard {
  private recent: number[] = [];
  private hold: HoldState | undefined;
  /** the end of the last hold, while its try is on probation */
  private triedAt: number | undefined;
  private strikes = 0;

  constructor(readonly policy: FightPolicy = DEFAULT_FIGHT_POLICY) {}

  /** The hold in force at `now`, if any; a hold that has run its time ends here (the installer tries again). */
  holding(now: number): HoldState | undefined {
    if (this.hold && now >= this.hold.until) {
      this.hold = undefined;
      this.recent = [];
      this.triedAt = now;
    }
    if (this.triedAt !== undefined && !this.hold && now - this.triedAt >= this.policy.windowMs) {
      // The try stood for a whole window: the fight is over.
      this.triedAt = undefined;
      this.strikes = 0;
    }
    return this.hold;
  }

  /** Counts one removal of our entry; answers the hold it starts, if it starts one. Removals while held do not count. */
  removal(now: number): HoldState | undefined {
    if (this.holding(now)) return undefined;
    if (this.triedAt !== undefined) return this.start(now, 1);
    this.recent = [...this.recent.filter((t) => now - t < this.policy.windowMs), now];
    if (this.recent.length >= this.policy.removals) return this.start(now, this.recent.length);
    return undefined;
  }

  private start(now: number, removals: number): HoldState {
    this.strikes += 1;
    const quiet = Math.min(this.policy.quietMs * 2 ** (this.strikes - 1), this.policy.maxQuietMs);
    this.hold = { since: now, until: now + quiet, removals, strike: this.strikes };
    this.recent = [];
    this.triedAt = undefined;
    return this.hold;
  }
}

/** What the operator should change, from the primary's first plugin type; generic when we do not know it. */
export function adviceFor(primaryType: string | undefined, confDir: string): string {
  if (primaryType === 'cilium-cni') {
    return "Cilium owns the CNI config dir (cni.exclusive=true): set cni.exclusive=false in Cilium's Helm values (cni-exclusive: \"false\" in the cilium-config ConfigMap) and restart the Cilium agents";
  }
  const who = primaryType ? `the primary CNI (${primaryType})` : 'the primary CNI';
  return `${who} keeps removing other plugins from ${confDir}: configure it to leave other CNI configs alone, or chain mesh-cni through its own options`;
}

/** The primary file's first plugin type, for the advice (a conflist's plugins[0].type, a conf's type). */
export function primaryTypeOf(parsed: Record<string, unknown> | undefined): string | undefined {
  if (!parsed) return undefined;
  const plugins = parsed.plugins;
  const first = Array.isArray(plugins) ? (plugins[0] as Record<string, unknown> | undefined) : parsed;
  return typeof first?.type === 'string' ? first.type : undefined;
}

/** A hold as the operator reads it (readiness, the agent's Event and metric, `mesh-cni status`). */
export interface FightReport {
  /** the active config the entry keeps being removed from */
  config: string;
  /** its first plugin's type (cilium-cni, calico, ...) */
  primaryType?: string;
  /** what to change */
  advice: string;
  removals: number;
  windowSeconds: number;
  /** ISO times: held since, and the next try */
  since: string;
  until: string;
  /** holds in a row (each twice as long as the one before, up to the policy's maximum) */
  strike: number;
}

/** The message of a hold, for readiness and logs. */
export function describeHold(f: FightReport): string {
  return `the primary CNI keeps removing our entry from ${f.config} (${f.removals} time${f.removals === 1 ? '' : 's'} within ${f.windowSeconds} s${f.strike > 1 ? `, hold ${f.strike} in a row` : ''}): not re-inserting until ${f.until}; ${f.advice}`;
}
