/**
 * A primary CNI that removes our entry again and again (Cilium with cni.exclusive=true, played by a process
 * of this test in its own conf dir): the agent, a real `mesh-cni agent` process, stops re-inserting, turns not
 * ready saying which file and what to change, shows it on /metrics and in `mesh-cni status`, waits without
 * spinning (its CPU time from /proc over the wait), and puts its entry back once the primary stops.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { httpGet, metricValue, startAgentProcess, type AgentProcess } from '../support/agent';
import { CILIUM_CONFLIST, CILIUM_FILE, startExclusivePrimary, type ExclusivePrimary } from '../support/exclusive-primary';
import { CLI } from '../support/paths';

const QUIET_SECONDS = 25;
const WAIT_MS = 6000;

/** utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15). */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  return (Number(fields[11]) + Number(fields[12])) / ticks;
}

async function until(what: string, limitMs: number, done: () => Promise<boolean>, log: () => string): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (Date.now() < deadline) {
    if (await done().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no ${what} within ${limitMs} ms\n${log()}`);
}

test.serial('an exclusive primary: the agent stops re-inserting, says why, waits idle, and resumes when the fight stops', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-cni-fight-'));
  const confDir = path.join(dir, 'net.d');
  const binDir = path.join(dir, 'bin');
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(confDir);
  let primary: ExclusivePrimary | undefined;
  let agent: AgentProcess | undefined;
  t.teardown(async () => {
    await agent?.stop();
    await primary?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  primary = await startExclusivePrimary(confDir, dir);
  agent = await startAgentProcess(
    [
      '--no-kubernetes',
      '--cni-conf-dir', confDir,
      '--host-cni-conf-dir', confDir,
      '--cni-bin-dir', binDir,
      '--state-dir', stateDir,
      '--socket', path.join(stateDir, 'agent.sock'),
      '--plugin-log-file', path.join(dir, 'cni.log'),
      '--health-port', '0',
      '--health-host', '127.0.0.1',
      '--fight-quiet-seconds', String(QUIET_SECONDS),
    ],
    path.join(dir, 'agent.log'),
  );
  const a = agent;
  const readyz = async () => JSON.parse((await httpGet(a.healthPort, '/readyz')).body) as { ready: boolean; reasons: string[] };

  await until('hold', 60_000, async () => (await readyz()).reasons.some((r) => r.includes('cni.exclusive=false')), () => a.log());
  const reasons = (await readyz()).reasons;
  t.false((await readyz()).ready);
  t.true(reasons.some((r) => r.includes(path.join(confDir, CILIUM_FILE)) && r.includes('keeps removing our entry')), reasons.join('\n'));
  const metrics = (await httpGet(a.healthPort, '/metrics')).body;
  t.is(metricValue(metrics, 'mesh_cni_install_held', { config: path.join(confDir, CILIUM_FILE), primary: 'cilium-cni' }), 1);
  t.true(a.lines().some((l) => l.msg === 'holding: the primary CNI keeps removing our entry' && String(l.advice).includes('cni.exclusive=false')), 'no API client: the hold is logged');
  const status = spawnSync(process.execPath, [CLI, 'status', '--cni-conf-dir', confDir, '--cni-bin-dir', binDir, '--state-dir', stateDir, '--socket', path.join(stateDir, 'agent.sock'), '--health-port', String(a.healthPort), '-o', 'json'], { encoding: 'utf8' });
  const report = JSON.parse(status.stdout) as { fight: { config: string; advice: string } | null; problems: string[] };
  t.is(report.fight?.config, path.join(confDir, CILIUM_FILE));
  t.true(report.problems.some((p) => p.includes('cni.exclusive=false')), report.problems.join('\n'));

  // The wait: the agent writes nothing (the primary has nothing to undo) and spins on nothing.
  const pid = a.nodePid();
  t.truthy(pid);
  const actionsBefore = primary.actions().length;
  const cpuBefore = cpuSeconds(pid!);
  const wallBefore = performance.now();
  await new Promise((r) => setTimeout(r, WAIT_MS));
  const cpuShare = (cpuSeconds(pid!) - cpuBefore) / ((performance.now() - wallBefore) / 1000);
  t.log(`agent CPU while held: ${(cpuShare * 100).toFixed(2)} % over ${WAIT_MS / 1000} s; the primary's actions before the hold: ${actionsBefore}`);
  t.true(cpuShare < 0.05, `agent CPU while held ${(cpuShare * 100).toFixed(2)} %`);
  t.is(primary.actions().length, actionsBefore, 'the held agent wrote nothing the primary had to undo');
  t.is(fs.readFileSync(path.join(confDir, CILIUM_FILE), 'utf8'), CILIUM_CONFLIST);
  t.false((await readyz()).ready);

  // The fight stops (cni.exclusive=false, the primary restarted without renaming): after the quiet period the entry is back.
  await primary.stop();
  primary = undefined;
  await until('resume', (QUIET_SECONDS + 60) * 1000, async () => (await readyz()).ready, () => a.log());
  const list = JSON.parse(fs.readFileSync(path.join(confDir, CILIUM_FILE), 'utf8')) as { plugins: Array<{ type: string }> };
  t.deepEqual(list.plugins.map((p) => p.type), ['cilium-cni', 'mesh-cni']);
  t.true(a.lines().some((l) => l.msg === 'resuming: putting our entry back'));
  t.is(metricValue((await httpGet(a.healthPort, '/metrics')).body, 'mesh_cni_install_held'), 0);
  t.false(fs.existsSync(path.join(stateDir, 'install-held.json')));
});
