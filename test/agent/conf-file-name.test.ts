/**
 * `mesh-cni agent --cni-conf-file-name` (the chart's cniConfFileName), as a real process on a temp node: not
 * ready while the named conflist is absent, with /readyz naming it, though another valid config is there;
 * ready once the file appears and holds our entry.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { httpGet, startAgentProcess, type AgentProcess } from '../support/agent';
import { CALICO_CONFLIST, FLANNEL_CONFLIST } from '../installer/fixtures';

test.serial('not ready while the named config is absent, saying which; ready with our entry in it once it appears', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-cni-confname-'));
  const confDir = path.join(dir, 'net.d');
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(confDir);
  fs.writeFileSync(path.join(confDir, '10-calico.conflist'), CALICO_CONFLIST);
  let agent: AgentProcess | undefined;
  t.teardown(async () => {
    await agent?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  agent = await startAgentProcess(
    ['--no-kubernetes', '--cni-conf-dir', confDir, '--host-cni-conf-dir', confDir, '--cni-bin-dir', path.join(dir, 'bin'), '--state-dir', stateDir, '--socket', path.join(stateDir, 'agent.sock'),
      '--plugin-log-file', path.join(dir, 'cni.log'), '--health-port', '0', '--health-host', '127.0.0.1', '--cni-conf-file-name', '20-flannel.conflist'],
    path.join(dir, 'agent.log'),
  );
  const a = agent;
  const readyz = async () => JSON.parse((await httpGet(a.healthPort, '/readyz')).body) as { ready: boolean; reasons: string[] };
  const named = path.join(confDir, '20-flannel.conflist');
  const deadline = Date.now() + 60_000;
  while (!(await readyz()).reasons.some((r) => r.includes(named)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  const before = await readyz();
  t.false(before.ready);
  t.true(before.reasons.some((r) => r.includes(`the config named by cniConfFileName, ${named}, does not exist yet`)), before.reasons.join('\n'));
  t.is(fs.readFileSync(path.join(confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  fs.writeFileSync(named, FLANNEL_CONFLIST);
  while (!(await readyz()).ready && Date.now() < deadline + 30_000) await new Promise((r) => setTimeout(r, 100));
  t.true((await readyz()).ready, a.log());
  t.deepEqual((JSON.parse(fs.readFileSync(named, 'utf8')) as { plugins: Array<{ type: string }> }).plugins.map((p) => p.type), ['flannel', 'portmap', 'mesh-cni']);
  t.is(fs.readFileSync(path.join(confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
});
