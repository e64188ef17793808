/**
 * Keeps the install in place: watches the conf dir, the bin dir and the token's directory (projected tokens
 * rotate by swapping a symlink there, which a watch on the file itself would miss), and runs an install pass
 * shortly after any event. inotify can drop events (queue overflow, a directory replaced), so a periodic pass
 * runs as well. Passes never overlap; an event during a pass schedules exactly one more.
 */
import { statSync, watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import { install } from './install';
import type { InstallOptions, InstallReport } from './types';

export type WatchTrigger = 'start' | 'fs' | 'periodic';

export type InstallEvent =
  | { type: 'pass'; trigger: WatchTrigger; report: InstallReport }
  | { type: 'error'; trigger: WatchTrigger; error: Error };

export interface WatchOptions {
  /** wait this long after an event for the burst to settle (default 25 ms) */
  debounceMs?: number;
  /** safety pass interval (default 2000 ms) */
  periodMs?: number;
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
}

/**
 * Runs a first pass at once, then keeps the node installed until close(). onEvent hears every pass that
 * changed something or changed readiness, every error (the next trigger retries), and the first pass.
 */
export function watchAndRepair(o: InstallOptions, onEvent: (event: InstallEvent) => void = () => {}, options: WatchOptions = {}): InstallWatcher {
  const debounceMs = options.debounceMs ?? 25;
  const periodMs = options.periodMs ?? 2000;
  const dirs = [o.cniConfDir, o.cniBinDir, ...(o.kubeconfig ? [dirname(o.kubeconfig.tokenPath)] : [])];
  const watchers = new Map<string, { watcher: FSWatcher; ino: number }>();
  let closed = false;
  let running: Promise<void> | undefined;
  let again: WatchTrigger | undefined;
  let debounce: NodeJS.Timeout | undefined;
  let last: InstallReport | undefined;
  let isReady = false;
  let waiters: Array<() => void> = [];

  const emit = (event: InstallEvent) => {
    try {
      onEvent(event);
    } catch {
      // A listener's failure must not stop the repair loop.
    }
  };

  /** After every pass: watch each dir, and watch again any dir replaced by a new one (an inotify watch follows the old inode). */
  const ensureWatchers = () => {
    if (closed) return;
    for (const dir of dirs) {
      let ino: number;
      try {
        ino = statSync(dir).ino;
      } catch {
        continue; // not there yet (the first pass creates the CNI dirs); retried after the next pass
      }
      const current = watchers.get(dir);
      if (current?.ino === ino) continue;
      current?.watcher.close();
      watchers.delete(dir);
      try {
        const watcher = watch(dir, { persistent: false }, () => schedule('fs'));
        watcher.on('error', () => {
          watcher.close();
          if (watchers.get(dir)?.watcher === watcher) watchers.delete(dir);
        });
        watchers.set(dir, { watcher, ino });
      } catch {
        // Removed between stat and watch; retried after the next pass.
      }
    }
  };

  const runPass = async (trigger: WatchTrigger) => {
    const pending = waiters;
    waiters = [];
    try {
      const report = await install(o);
      const readinessChanged = report.status.ready !== isReady;
      last = report;
      isReady = report.status.ready;
      if (trigger === 'start' || report.changed || readinessChanged) emit({ type: 'pass', trigger, report });
    } catch (err) {
      isReady = false;
      emit({ type: 'error', trigger, error: err instanceof Error ? err : new Error(String(err)) });
    } finally {
      for (const resolve of pending) resolve();
    }
  };

  const start = (trigger: WatchTrigger) => {
    if (closed) return;
    if (running) {
      again = again ?? trigger;
      return;
    }
    running = runPass(trigger).then(() => {
      running = undefined;
      ensureWatchers();
      if (again && !closed) {
        const next = again;
        again = undefined;
        start(next);
      }
    });
  };

  function schedule(trigger: WatchTrigger) {
    if (closed) return;
    if (debounce) clearTimeout(debounce);
    debounce = setTimeout(() => {
      debounce = undefined;
      start(trigger);
    }, debounceMs);
  }

  const timer = setInterval(() => start('periodic'), periodMs);
  start('start');

  return {
    async close() {
      closed = true;
      clearInterval(timer);
      if (debounce) clearTimeout(debounce);
      for (const w of watchers.values()) w.watcher.close();
      watchers.clear();
      while (running) await running;
      for (const resolve of waiters) resolve();
      waiters = [];
    },
    ready: () => isReady,
    lastReport: () => last,
    nextPass: () =>
      new Promise<void>((resolve) => {
        if (closed) return resolve();
        waiters.push(resolve);
        start('fs');
      }),
  };
}
