/**
 * iptables-nft by replay (src/redirect/iptables/replay.ts) against the kernel and the node's own iptables:
 * for every golden case a replayed netns holds what `iptables-restore` made (the same `iptables-save`, the same
 * `nft list ruleset`), or the case is restore-only with a reason; replayed rules redirect real TCP; a netns that
 * already holds one of the tables refuses the replay untouched and the backend falls back to the restore; a
 * batch the kernel refuses commits nothing; legacy iptables gets no template; nothing is left open.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { applyRedirect, checkRedirect, removeRedirect } from '../../../src/redirect/engine';
import { withNetns } from '../../../src/netns';
import { redirectConfigFromAnnotations } from '../../../src/redirect/config';
import { buildPlan } from '../../../src/redirect/plan';
import { IptablesBackend } from '../../../src/redirect/iptables/backend';
import { renderRestore } from '../../../src/redirect/iptables/render';
import { captureTemplate, enableReplay, forgetTemplates, replayCounts, replayTemplate, tryReplay, type ReplayTemplate } from '../../../src/redirect/iptables/replay';
import { createNetns, createPodPeer, inNetns, netnsPath, sh, tryInNetns } from '../../support/netns';
import { connect, expectDefaultRedirect, listen } from '../../support/traffic';
import { requireKernelTools, requireNft } from '../../support/require';
import { PLAN_CASES } from '../cases';
import { startAgent } from '../../../src/agent/agent';
import { callCniSocket } from '../../../src/agent/shim-socket';
import { INJECTED, POD_ARGS, withAnnotations } from '../../cni/helpers';
import { UncopyableError } from '../../../src/errors';

const FAMILIES = ['ipv4', 'ipv6'] as const;
const RESTORE = { ipv4: 'iptables-nft-restore', ipv6: 'ip6tables-nft-restore' } as const;
const SAVE = { ipv4: 'iptables-nft-save', ipv6: 'ip6tables-nft-save' } as const;

/** What a family's tool prints, without its timestamped comments. */
const saved = (ns: string, family: (typeof FAMILIES)[number]) =>
  inNetns(ns, SAVE[family], [])
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .join('\n');
const ruleset = (ns: string) => inNetns(ns, 'nft', ['list', 'ruleset']);
const threadNetns = () => fs.readlinkSync('/proc/thread-self/ns/net');
const openFds = () => fs.readdirSync('/proc/self/fd').length;

function requireReplay(t: ExecutionContext): void {
  requireKernelTools(t);
  requireNft(t);
  t.teardown(() => {
    enableReplay(undefined, { MESH_CNI_IPTABLES: 'restore' });
    forgetTemplates();
  });
}

async function until(t: ExecutionContext, what: string, ready: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !ready(); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(ready(), what);
}

test.serial('for every golden case and both families, a replayed netns holds exactly what iptables-restore made', async (t) => {
  requireReplay(t);
  const made: string[] = [];
  const restoreOnly: string[] = [];
  for (const c of PLAN_CASES) {
    const plan = buildPlan(redirectConfigFromAnnotations(c.annotations, c.proxy));
    for (const family of FAMILIES) {
      if (plan[family].rules.length === 0) continue;
      const text = renderRestore(plan[family].rules);
      let template: ReplayTemplate;
      try {
        template = await captureTemplate(family, RESTORE[family], SAVE[family], text);
      } catch (err) {
        t.true(err instanceof UncopyableError, `${c.name} ${family}: only a faithful copy is refused: ${String(err)}`);
        restoreOnly.push(`${c.name} ${family}: ${(err as Error).message}`);
        continue;
      }
      const restored = createNetns(t, 'restored');
      const replayed = createNetns(t, 'replayed');
      inNetns(restored, RESTORE[family], ['--noflush'], text);
      t.deepEqual(replayTemplate(netnsPath(replayed), template), { ok: true }, `${c.name} ${family}`);
      t.is(saved(replayed, family), saved(restored, family), `${c.name} ${family}: iptables-save prints the same`);
      t.is(ruleset(replayed), ruleset(restored), `${c.name} ${family}: nft lists the same objects`);
      made.push(`${c.name} ${family}`);
    }
  }
  t.log(`templates: ${made.length}; restore-only: ${restoreOnly.length ? restoreOnly.join('; ') : 'none'}`);
  t.true(made.includes('basic ipv4') && made.includes('basic ipv6'), 'the default plan replays in both families');
  t.true(made.length >= restoreOnly.length, 'most plans replay');
});

test.serial('through the backend: the first fresh sandbox gets the restore, later ones the replay, and its rules redirect real TCP', async (t) => {
  requireReplay(t);
  t.true(enableReplay(undefined, {}));
  const config = redirectConfigFromAnnotations({});
  const first = createNetns(t, 'first');
  const viaRestore = await applyRedirect({ netns: netnsPath(first), backendInstance: new IptablesBackend('nft'), config, families: [...FAMILIES], verify: 'always' });
  t.is(viaRestore.via, 'iptables-restore');
  await until(t, 'both families have a template', () => replayCounts().ready === 2);

  const pair = createPodPeer(t);
  await listen(t, pair.pod, 'pod', ['15001', '15006', '8080']);
  await listen(t, pair.peer, 'peer', ['80']);
  const home = threadNetns();
  const report = await applyRedirect({ netns: pair.podPath, backendInstance: new IptablesBackend('nft'), config, families: [...FAMILIES], verify: 'always' });
  t.is(report.via, 'nf_tables replay', 'read back and compared with the plan (verify: always) after the replay');
  t.is(threadNetns(), home);
  for (const family of FAMILIES) t.is(saved(pair.pod, family), saved(first, family), `${family}: the same rules as the restore made`);
  expectDefaultRedirect(t, pair);
  t.deepEqual((await checkRedirect({ netns: pair.podPath, backendInstance: new IptablesBackend('nft'), config, families: [...FAMILIES] })).problems, []);
  t.true((await removeRedirect({ netns: pair.podPath, backendInstance: new IptablesBackend('nft') })).removed > 0);
  t.like(connect(pair.pod, pair.peerIp4, 80), { listener: 'peer', port: 80 }, 'outbound after remove');
});

test.serial('a netns already holding one of the tables refuses the replay untouched; the backend then goes through the restore', async (t) => {
  requireReplay(t);
  enableReplay(undefined, {});
  const config = redirectConfigFromAnnotations({});
  const plan = buildPlan(config);
  const text = renderRestore(plan.ipv4.rules);
  const template = await captureTemplate('ipv4', RESTORE.ipv4, SAVE.ipv4, text);

  // Our own rules from an earlier ADD, with another config: the replay would duplicate them.
  const ours = createNetns(t, 'ours');
  await applyRedirect({ netns: netnsPath(ours), backendInstance: new IptablesBackend('nft'), config: redirectConfigFromAnnotations({ 'traffic.sidecar.istio.io/excludeInboundPorts': '7777' }), families: ['ipv4'] });
  // Another tool's rule in the nat table and nothing of ours.
  const foreign = createNetns(t, 'foreign');
  inNetns(foreign, 'iptables-nft', ['-t', 'nat', '-A', 'POSTROUTING', '-p', 'udp', '-j', 'MASQUERADE']);
  for (const ns of [ours, foreign]) {
    const before = ruleset(ns);
    const r = replayTemplate(netnsPath(ns), template);
    t.deepEqual(r, { ok: false, errno: 17 }, 'EEXIST: the table is there');
    t.is(ruleset(ns), before, 'one transaction: nothing of the batch was committed');
  }

  // The backend's own template for this plan, made after a first restore ADD.
  t.is((await applyRedirect({ netns: netnsPath(createNetns(t, 'warm')), backendInstance: new IptablesBackend('nft'), config, families: ['ipv4'] })).via, 'iptables-restore');
  await until(t, 'the plan has its template', () => replayCounts().ready >= 2);
  for (const ns of [ours, foreign]) {
    const report = await applyRedirect({ netns: netnsPath(ns), backendInstance: new IptablesBackend('nft'), config, families: ['ipv4'], verify: 'always' });
    t.is(report.via, 'iptables-restore', 'the refused replay fell through to the restore');
    t.deepEqual((await checkRedirect({ netns: netnsPath(ns), backendInstance: new IptablesBackend('nft'), config, families: ['ipv4'] })).problems, []);
  }
  t.notRegex(saved(ours, 'ipv4'), /7777/, 'the earlier config was replaced, not added to');
  t.regex(saved(foreign, 'ipv4'), /-A POSTROUTING -p udp -j MASQUERADE/, "the other tool's rule stays");
  t.is(tryReplay(netnsPath(ours), RESTORE.ipv4, text), 'refused', 'and a later replay into it is refused again');
});

test.serial('a batch the kernel refuses commits nothing, and the thread comes back home', async (t) => {
  requireReplay(t);
  const text = renderRestore(buildPlan(redirectConfigFromAnnotations({})).ipv4.rules);
  const template = await captureTemplate('ipv4', RESTORE.ipv4, SAVE.ipv4, text);
  // The last rule jumps to ISTIO_REDIRECT; renamed to a chain no message creates, that rule is refused.
  const batch = Buffer.from(template.batch);
  const at = batch.lastIndexOf('ISTIO_REDIRECT');
  t.true(at > 0);
  batch.write('ISTIO_NOWHERE_', at);
  const ns = createNetns(t, 'pod');
  const home = threadNetns();
  const r = replayTemplate(netnsPath(ns), { ...template, batch });
  t.false(r.ok);
  t.is(threadNetns(), home);
  t.is(ruleset(ns), '', 'no table, no chain, no rule: the tables and chains before the bad rule went too');
  t.deepEqual(replayTemplate(netnsPath(ns), template), { ok: true }, 'the netns is as fresh as before');
});

test.serial('legacy iptables makes no nf_tables objects and gets no template; MESH_CNI_IPTABLES=restore turns replay off', async (t) => {
  requireReplay(t);
  const text = renderRestore(buildPlan(redirectConfigFromAnnotations({})).ipv4.rules);
  const err = await t.throwsAsync(captureTemplate('ipv4', 'iptables-legacy-restore', 'iptables-legacy-save', text), { instanceOf: UncopyableError });
  t.regex(err!.message, /made no nf_tables objects \(legacy iptables\)/);

  t.false(enableReplay(undefined, { MESH_CNI_IPTABLES: 'restore' }));
  const ns = createNetns(t, 'pod');
  const report = await applyRedirect({ netns: netnsPath(ns), backendInstance: new IptablesBackend('nft'), config: redirectConfigFromAnnotations({}), families: ['ipv4'] });
  t.is(report.via, 'iptables-restore');
  await new Promise((r) => setTimeout(r, 300));
  t.deepEqual(replayCounts(), { ready: 0, restoreOnly: 0 }, 'no template is made when replay is off');
  t.is(new IptablesBackend('nft').describeVia(), 'iptables-restore');
});

test.serial('making templates and replaying them leaves no descriptor, no netns and no process behind', async (t) => {
  requireReplay(t);
  const netnsBefore = sh('ip', ['netns', 'list']);
  const ns = createNetns(t, 'pod');
  // withNetns keeps one descriptor of the thread's own netns for good (the way home); open it before counting.
  withNetns(netnsPath(ns), () => undefined);
  const fdsBefore = openFds();
  const text = renderRestore(buildPlan(redirectConfigFromAnnotations({})).ipv6.rules);
  const template = await captureTemplate('ipv6', RESTORE.ipv6, SAVE.ipv6, text);
  for (let i = 0; i < 3; i++) {
    const r = replayTemplate(netnsPath(ns), template);
    t.deepEqual(r, i === 0 ? { ok: true } : { ok: false, errno: 17 });
  }
  t.is(tryInNetns(ns, SAVE.ipv6, []).status, 0);
  t.is(openFds(), fdsBefore, 'every scratch netns descriptor and netlink socket is closed');
  t.is(sh('ip', ['netns', 'list']).replace(/^mcni-t-.*pod.*\n?/gm, ''), netnsBefore.replace(/^mcni-t-.*pod.*\n?/gm, ''), 'scratch netns have no name to leave behind');
});

test.serial("through the agent, as an operator sees it: the plan's second sandbox is replayed, the request log says so, and traffic is redirected", async (t) => {
  requireReplay(t);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-cni-replay-'));
  const logFile = path.join(dir, 'cni.log');
  const agentLog: Array<Record<string, unknown>> = [];
  const agent = await startAgent({ socketPath: path.join(dir, 'agent.sock'), stateDir: dir, healthPort: 0, healthHost: '127.0.0.1', kubernetes: false, log: (l) => agentLog.push(l) });
  t.teardown(async () => {
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const stdin = Buffer.from(JSON.stringify(withAnnotations(INJECTED, { backend: 'iptables-nft', log_file: logFile, state_dir: dir })));
  const add = (netns: string, id: string) => callCniSocket(agent.socketPath, { env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_ARGS: POD_ARGS }, stdin }, 30_000);
  const vias = () => fs.readFileSync(logFile, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { via?: string }).via);

  const first = await add(netnsPath(createNetns(t, 'first')), 'c1');
  t.is(first.exitCode, 0, first.stdout);
  await until(t, 'the agent says the plan replays now', () => agentLog.some((l) => /nf_tables replay/.test(String(l.msg))));
  // IPv4 only, like the first netns: both ADDs program the same family, so the second has its template.
  const pair = createPodPeer(t, { ipv6: false });
  await listen(t, pair.pod, 'pod', ['15001']);
  await listen(t, pair.peer, 'peer', ['80']);
  const second = await add(pair.podPath, 'c2');
  t.is(second.exitCode, 0, second.stdout);
  await until(t, 'both ADDs are logged', () => fs.existsSync(logFile) && vias().length === 2);
  t.deepEqual(vias(), ['iptables-restore', 'nf_tables replay']);
  t.like(connect(pair.pod, pair.peerIp4, 80), { listener: 'pod', port: 15001 });
  t.like(connect(pair.pod, pair.peerIp4, 80, { uid: 1337 }), { listener: 'peer', port: 80 });
});
