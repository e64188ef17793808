/**
 * A primary CNI that owns the config dir, as Cilium does with `cni.exclusive=true`: it keeps its own conflist
 * exactly as it wants it (written again whenever it differs) and renames every other `*.conf*` to
 * `*.cilium_bak`, within 100 ms of any change (an inotify watch, and a 50 ms poll for what the watch misses).
 * A real process (under the harness's reaper, stopped by PID) in the test's own conf dir; it prints one line
 * per action, so the test counts what it did.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startService, waitUntil, type Service } from './service';

export const CILIUM_CONFLIST = `${JSON.stringify({ cniVersion: '0.3.1', name: 'cilium', plugins: [{ type: 'cilium-cni', 'enable-debug': false }] }, null, 2)}\n`;
export const CILIUM_FILE = '05-cilium.conflist';

const SCRIPT = `
const fs = require('fs'), path = require('path');
const [dir, own, wanted] = [process.argv[1], process.argv[2], fs.readFileSync(process.argv[3])];
const target = path.join(dir, own);
function enforce() {
  let names = [];
  try { names = fs.readdirSync(dir); } catch { return; }
  for (const name of names) {
    if (name === own || !/\\.conf/.test(name) || name.endsWith('.cilium_bak') || name.startsWith('.')) continue;
    try { fs.renameSync(path.join(dir, name), path.join(dir, name + '.cilium_bak')); console.log('renamed ' + name); } catch {}
  }
  let current;
  try { current = fs.readFileSync(target); } catch {}
  if (!current || !current.equals(wanted)) {
    fs.writeFileSync(target + '.tmp', wanted);
    fs.renameSync(target + '.tmp', target);
    console.log('rewrote ' + own);
  }
}
fs.watch(dir, () => enforce());
setInterval(enforce, 50);
enforce();
console.log('exclusive primary running');
`;

export interface ExclusivePrimary {
  service: Service;
  /** the actions it took (renames and rewrites) so far */
  actions(): string[];
  stop(): Promise<void>;
}

export async function startExclusivePrimary(confDir: string, workDir: string): Promise<ExclusivePrimary> {
  const wanted = path.join(workDir, 'cilium-wanted.conflist');
  fs.writeFileSync(wanted, CILIUM_CONFLIST);
  const logFile = path.join(workDir, 'exclusive-primary.log');
  const service = startService('exclusive primary', [process.execPath, '-e', SCRIPT, confDir, CILIUM_FILE, wanted], { logFile, graceSeconds: 2 });
  const lines = () => (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n') : []);
  await waitUntil(service, 'the exclusive primary to start', 15_000, () => lines().includes('exclusive primary running'));
  return {
    service,
    actions: () => lines().filter((l) => l.startsWith('renamed ') || l.startsWith('rewrote ')),
    stop: () => service.stop(),
  };
}
