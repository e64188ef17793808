/**
 * Long-running services for tests (containerd, etcd, kube-apiserver), each started as a child of the test
 * process under test/support/reaper.py: the reaper adopts what the service leaves behind (containerd's
 * shims), stops everything when asked, and stops everything when the test process dies. Stopped by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const REAPER = path.resolve(__dirname, '../../../test/support/reaper.py');

export interface Service {
  name: string;
  pid: number;
  logFile: string;
  /** Resolves once the service and everything it started are gone. */
  stop(): Promise<void>;
  exited(): boolean;
  /** The last lines of its log, for failure messages. */
  tail(lines?: number): string;
}

export interface ServiceOptions {
  /** Run inside this network namespace (nsenter --net=PATH; never `ip netns exec`, which remounts /sys). */
  netnsPath?: string;
  env?: NodeJS.ProcessEnv;
  logFile: string;
  /** Seconds between SIGTERM and SIGKILL. */
  graceSeconds?: number;
}

export function startService(name: string, argv: string[], options: ServiceOptions): Service {
  const log = fs.openSync(options.logFile, 'a');
  const command = options.netnsPath ? ['nsenter', `--net=${options.netnsPath}`, '--', ...argv] : argv;
  const child: ChildProcess = spawn('/usr/bin/python3', [REAPER, String(process.pid), String(options.graceSeconds ?? 10), '--', ...command], {
    stdio: ['ignore', log, log],
    env: options.env ?? process.env,
  });
  fs.closeSync(log);
  let exitedFlag = false;
  const exit = new Promise<void>((resolve) => {
    child.on('exit', () => {
      exitedFlag = true;
      resolve();
    });
    child.on('error', () => {
      exitedFlag = true;
      resolve();
    });
  });
  const tail = (lines = 30) => {
    try {
      return fs.readFileSync(options.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  };
  return {
    name,
    pid: child.pid ?? -1,
    logFile: options.logFile,
    exited: () => exitedFlag,
    tail,
    async stop() {
      if (exitedFlag) return;
      child.kill('SIGTERM');
      const grace = ((options.graceSeconds ?? 10) + 5) * 1000;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exit, new Promise<void>((resolve) => (timer = setTimeout(resolve, grace)))]);
      clearTimeout(timer);
      if (!exitedFlag) {
        child.kill('SIGKILL');
        await exit;
      }
    },
  };
}

/** Polls `ready` until it resolves true, the service exits, or the deadline passes. */
export async function waitUntil(service: Service, what: string, timeoutMs: number, ready: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (service.exited()) throw new Error(`${service.name} exited before ${what}:\n${service.tail()}`);
    try {
      if (await ready()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`${service.name}: no ${what} within ${timeoutMs} ms:\n${service.tail()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
