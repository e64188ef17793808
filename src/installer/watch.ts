/**
 * Keeps the install in place: watches the conf dir, the bin dir and the token's directory (projected tokens
 * rotate by swapping a symlink there, which a watch on the file itself would miss), and runs an install pass
 * shortly after any event. inotify can drop events (queue overflow, a directory replaced), so a periodic pass
 * runs as well. Passes never overlap; an event during a pass schedules exactly one more.
 */
import { statSync, watch, type FSWatcher } from 'node:fs';
import { dirname, join } from 'node:path';
import { install, installedPaths } from './install';
import { stampOf } from './dir-stamp';
import { removeIfExists, writeFileAtomic } from './atomic-file';
import { adviceFor, FightGuard, primaryTypeOf, type FightPolicy, type FightReport, type HoldState } from './fight';
export { describeHold, type FightReport } from './fight';
import { chosenConfig } from './primary-config';
import { notPrimary, ownedConfigPath } from './owned-config';
import type { InstallOptions, InstallReport } from './types';
import { STATE_FILES } from '../defaults';

export type WatchTrigger = 'start' | 'fs' | 'periodic' | 'retry';

export type InstallEvent =
  | { type: 'pass'; trigger: WatchTrigger; report: InstallReport }
  | { type: 'error'; trigger: WatchTrigger; error: Error }
  /** the primary keeps removing our entry: no more writes to the config until `fight.until` */
  | { type: 'held'; fight: FightReport }
  /** the hold ended: the next pass puts the entry back */
  | { type: 'resumed'; fight: FightReport };

/** Where a hold is written for `mesh-cni status` (removed when it ends). */
export function holdFilePath(stateDir: string): string {
  return join(stateDir, STATE_FILES.installHold);
}

export interface WatchOptions {
  /** wait this long after an event for the burst to settle (default 25 ms) */
  debounceMs?: number;
  /** safety pass interval (default 2000 ms) */
  periodMs?: number;
  /** hold after repeated removals of our entry (fight.ts); without it every removal is repaired */
  fight?: FightPolicy;
}

export interface InstallWatcher {
  /** stops watching and waits for a running pass to end */
  close(): Promise<void>;
  /** the last pass found our entry in the active config and the binaries in place */
  ready(): boolean;
  /** the last pass's report (undefined before the first pass ends) */
  lastReport(): InstallReport | undefined;
  /** resolves after the next pass that starts from now ends */
  nextPass(): Promise<void>;
  /** the hold in force: the primary keeps removing our entry (undefined when not held) */
  held(): FightReport | undefined;
}

/**
 * Runs a first pass at once, then keeps the node installed until close(). onEvent hears every pass that
 * changed something or changed readiness, every error (the next trigger retries), and the first pass.
 */
export function watchAndRepair(o: InstallOptions, onEvent: (event: InstallEvent) => void = () => {}, options: WatchOptions = {}): InstallWatcher {
  const loop = new InstallLoop(o, onEvent, options.debounceMs ?? 25, options.fight ? new FightGuard(options.fight) : undefined);
  loop.begin(options.periodMs ?? 2000);
  return {
    close: () => loop.close(),
    ready: () => loop.isReady && loop.hold === undefined,
    held: () => loop.hold,
    lastReport: () => loop.last,
    nextPass: () => loop.nextPass(),
  };
}

class InstallLoop {
  private readonly dirs: string[];
  private readonly watchers = new Map<string, { watcher: FSWatcher; ino: number }>();
  private closed = false;
  private running: Promise<void> | undefined;
  private again: WatchTrigger | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private timer: NodeJS.Timeout | undefined;
  private waiters: Array<() => void> = [];
  private retry: NodeJS.Timeout | undefined;
  /** The directories' stamp taken before the last pass that ended without an error (dir-stamp.ts). */
  private stampBefore: string | undefined;
  last: InstallReport | undefined;
  isReady = false;
  hold: FightReport | undefined;

  constructor(
    private readonly o: InstallOptions,
    private readonly onEvent: (event: InstallEvent) => void,
    private readonly debounceMs: number,
    private readonly guard: FightGuard | undefined,
  ) {
    this.dirs = [o.cniConfDir, o.cniBinDir, ...(o.kubeconfig ? [dirname(o.kubeconfig.tokenPath)] : [])];
  }

  begin(periodMs: number): void {
    this.timer = setInterval(() => this.start('periodic'), periodMs);
    this.start('start');
  }

  private emit(event: InstallEvent): void {
    try {
      this.onEvent(event);
    } catch {
      // A listener's failure must not stop the repair loop.
    }
  }

  /** After every pass: watch each dir, and watch again any dir replaced by a new one (an inotify watch follows the old inode). */
  private ensureWatchers(): void {
    if (this.closed) return;
    for (const dir of this.dirs) {
      let ino: number;
      try {
        ino = statSync(dir).ino;
      } catch {
        continue; // not there yet (the first pass creates the CNI dirs); retried after the next pass
      }
      const current = this.watchers.get(dir);
      if (current?.ino === ino) continue;
      current?.watcher.close();
      this.watchers.delete(dir);
      this.watchDir(dir, ino);
    }
  }

  private watchDir(dir: string, ino: number): void {
    try {
      const watcher = watch(dir, { persistent: false }, () => this.schedule('fs'));
      watcher.on('error', () => {
        watcher.close();
        if (this.watchers.get(dir)?.watcher === watcher) this.watchers.delete(dir);
      });
      this.watchers.set(dir, { watcher, ino });
    } catch {
      // Removed between stat and watch; retried after the next pass.
    }
  }

  /** Asked by every pass with the removals it found: whether to leave the config alone (fight.ts). */
  private holdNow(removed: string[]): boolean {
    const guard = this.guard;
    if (!guard) return false;
    let started: HoldState | undefined;
    for (const _ of removed) started = guard.removal(Date.now()) ?? started;
    if (started) this.pendingHold = started;
    return guard.holding(Date.now()) !== undefined;
  }

  private pendingHold: HoldState | undefined;

  /** A hold begun in this pass: say so (event, hold file) and try again when it ends. */
  private async startHold(started: HoldState): Promise<void> {
    const primary = (await chosenConfig(this.o.cniConfDir, this.o.cniConfFileName, notPrimary(this.o)).catch(() => undefined))?.primary;
    const primaryType = primaryTypeOf(primary?.parsed);
    const fight: FightReport = {
      // With the owned config, the file taken away again and again is ours, not the primary's.
      config: this.o.ownedConfig ? ownedConfigPath(this.o) : (primary?.path ?? this.o.cniConfDir),
      primaryType,
      advice: adviceFor(primaryType, this.o.cniConfDir),
      removals: started.removals,
      windowSeconds: Math.round((this.guard?.policy.windowMs ?? 0) / 1000),
      since: new Date(started.since).toISOString(),
      until: new Date(started.until).toISOString(),
      strike: started.strike,
    };
    this.hold = fight;
    await writeFileAtomic(holdFilePath(this.o.stateDir), `${JSON.stringify(fight, null, 2)}\n`, 0o644).catch(() => undefined);
    if (this.retry) clearTimeout(this.retry);
    this.retry = setTimeout(() => this.start('retry'), Math.max(0, started.until - Date.now()));
    this.emit({ type: 'held', fight });
  }

  /** The hold ran its time: the pass about to run tries again. */
  private async endHold(): Promise<void> {
    const fight = this.hold;
    if (!fight || this.guard?.holding(Date.now())) return;
    this.hold = undefined;
    await removeIfExists(holdFilePath(this.o.stateDir)).catch(() => undefined);
    this.emit({ type: 'resumed', fight });
  }

  private async runPass(trigger: WatchTrigger): Promise<void> {
    const pending = this.waiters;
    this.waiters = [];
    try {
      // Taken before the pass: whatever changes during it (our own writes included) differs from this stamp,
      // so the next periodic pass runs; only a pass over dirs nothing touched since is skipped.
      let stamp: string | undefined;
      try {
        stamp = stampOf(this.dirs, [installedPaths(this.o).engine]);
      } catch {
        stamp = undefined; // unreadable: the pass runs and says why
      }
      const stampBefore = this.stampBefore;
      this.stampBefore = undefined;
      if (trigger === 'periodic' && stamp !== undefined && stamp === stampBefore) {
        this.stampBefore = stamp;
        return;
      }
      await this.endHold();
      const report = await install(this.o, { hold: (removed) => this.holdNow(removed) });
      const started = this.pendingHold;
      this.pendingHold = undefined;
      if (started) await this.startHold(started);
      const readinessChanged = report.status.ready !== this.isReady;
      this.last = report;
      this.isReady = report.status.ready;
      this.stampBefore = stamp;
      if (trigger === 'start' || report.changed || readinessChanged) this.emit({ type: 'pass', trigger, report });
    } catch (err) {
      this.isReady = false;
      this.emit({ type: 'error', trigger, error: err instanceof Error ? err : new Error(String(err)) });
    } finally {
      for (const resolve of pending) resolve();
    }
  }

  /** Passes never overlap: a trigger during a pass schedules exactly one more. */
  private start(trigger: WatchTrigger): void {
    if (this.closed) return;
    if (this.running) {
      this.again = this.again ?? trigger;
      return;
    }
    this.running = this.runPass(trigger).then(() => {
      this.running = undefined;
      this.ensureWatchers();
      if (this.again && !this.closed) {
        const next = this.again;
        this.again = undefined;
        this.start(next);
      }
    });
  }

  private schedule(trigger: WatchTrigger): void {
    if (this.closed) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.start(trigger);
    }, this.debounceMs);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    if (this.retry) clearTimeout(this.retry);
    if (this.debounce) clearTimeout(this.debounce);
    for (const w of this.watchers.values()) w.watcher.close();
    this.watchers.clear();
    while (this.running) await this.running;
    // A hold is this process's judgement; the next agent judges afresh, so status must not show a stale one.
    if (this.hold) await removeIfExists(holdFilePath(this.o.stateDir)).catch(() => undefined);
    for (const resolve of this.waiters) resolve();
    this.waiters = [];
  }

  nextPass(): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.closed) return resolve();
      this.waiters.push(resolve);
      this.start('fs');
    });
  }
}
