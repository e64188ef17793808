/**
 * nftables in-process: the backend's libnftables path against the kernel. Rules it applies in a fresh netns
 * redirect real TCP; it and the `nft` process fallback leave the same ruleset and read it back alike (JSON
 * listing against the text parser) for every golden case; a transaction nft refuses fails with nft's error
 * text as a CNI error and leaves nothing; and the main thread is back in its own netns after every call,
 * failed ones included, with no netlink socket of the library left open.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import { applyPlan, applyRedirect, checkRedirect, removeRedirect } from '../../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../../src/redirect/config';
import { buildPlan, type Plan, type Rule } from '../../../src/redirect/plan';
import { NftablesBackend, nftProgram } from '../../../src/redirect/nftables/backend';
import { libnftablesUnavailable, nftSession, runNft, socketsClosed } from '../../../src/redirect/nftables/libnftables';
import { renderNftScript } from '../../../src/redirect/nftables/render';
import { CommandFailedError } from '../../../src/errors';
import { toCniError, CniCode } from '../../../src/errors';
import { createNetns, createPodPeer, inNetns, netnsPath, sh } from '../../support/netns';
import { mesh } from '../../support/cli';
import { loadLibc } from '../../../src/netns/native';
import { connect, expectDefaultRedirect, listen } from '../../support/traffic';
import { requireKernelTools, requireNft } from '../../support/require';
import { diffRules } from '../../../src/redirect/rule-state';
import { PLAN_CASES } from '../cases';

const FAMILIES = ['ipv4', 'ipv6'] as const;

/** The library path; its nft is a path that does not exist, so a spawned process could only fail. */
const library = () => new NftablesBackend({ mode: 'library', nft: '/nonexistent/nft' });
const processPath = () => new NftablesBackend({ mode: 'process' });

function requireLibrary(t: ExecutionContext): void {
  requireKernelTools(t);
  requireNft(t);
  const why = libnftablesUnavailable();
  if (why) throw new Error(`${why}: install the libnftables1 package`);
}

function ourTables(netns: string): string[] {
  return inNetns(netns, nftProgram(), ['list', 'tables'])
    .split('\n')
    .filter((l) => l.includes('mesh-cni-'));
}

const threadNetns = () => fs.readlinkSync('/proc/thread-self/ns/net');

/**
 * This process's open netfilter netlink sockets, in whatever netns they were opened (so asked of each
 * descriptor, not read from /proc/self/net/netlink, which lists the current netns only).
 */
function openNetfilterSockets(): number {
  const option = (fd: number, name: number) => {
    const value = Buffer.alloc(4);
    const length = Buffer.alloc(4);
    length.writeUInt32LE(4);
    return loadLibc().getsockopt(fd, 1 /* SOL_SOCKET */, name, value, length) === 0 ? value.readInt32LE(0) : undefined;
  };
  return fs.readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:') && option(Number(fd), 39 /* SO_DOMAIN */) === 16 && option(Number(fd), 38 /* SO_PROTOCOL */) === 12;
    } catch {
      return false;
    }
  }).length;
}

/** A plan the kernel refuses: a TPROXY rule in an output chain (tproxy is only valid in prerouting). */
function planTheKernelRejects(): Plan {
  const plan = buildPlan(redirectConfigFromAnnotations({ 'sidecar.istio.io/interceptionMode': 'TPROXY' }, { dnsCapture: true }));
  const bad: Rule = { table: 'mangle', chain: 'OUTPUT', matches: [{ kind: 'protocol', protocol: 'tcp' }], target: { kind: 'tproxy', port: 15006, mark: 1337 }, purpose: 'kernel-rejects-this' };
  return { ...plan, ipv4: { ...plan.ipv4, rules: [...plan.ipv4.rules, bad] } };
}

test.serial('libnftables: rules applied in-process into a fresh netns redirect real TCP, and removing them restores direct traffic', async (t) => {
  requireLibrary(t);
  const pair = createPodPeer(t);
  await listen(t, pair.pod, 'pod', ['15001', '15006', '8080']);
  await listen(t, pair.peer, 'peer', ['80']);
  const backend = library();
  t.is(backend.via, 'libnftables');
  const home = threadNetns();
  await applyRedirect({ netns: pair.podPath, backendInstance: backend, config: redirectConfigFromAnnotations({}), families: [...FAMILIES], verify: 'always' });
  t.is(threadNetns(), home);
  expectDefaultRedirect(t, pair);
  const { removed } = await removeRedirect({ netns: pair.podPath, backendInstance: backend });
  t.true(removed > 0);
  t.deepEqual(ourTables(pair.pod), []);
  t.like(connect(pair.pod, pair.peerIp4, 80), { listener: 'peer', port: 80 }, 'outbound after remove');
});

test.serial('libnftables and the nft process leave the same ruleset and read it back alike, for every golden case', async (t) => {
  requireLibrary(t);
  const viaLibrary = createNetns(t, 'lib');
  const viaProcess = createNetns(t, 'proc');
  const lib = library();
  const proc = processPath();
  for (const c of PLAN_CASES) {
    const plan = buildPlan(redirectConfigFromAnnotations(c.annotations, c.proxy));
    await lib.apply(netnsPath(viaLibrary), plan, FAMILIES);
    await proc.apply(netnsPath(viaProcess), plan, FAMILIES);
    const listed = (ns: string) => inNetns(ns, nftProgram(), ['list', 'ruleset', 'inet']);
    t.is(listed(viaLibrary), listed(viaProcess), `${c.name}: the kernel holds the same ruleset`);
    // The JSON listing (library) and the text listing (process) of the same netns give the same rules.
    const fromJson = await lib.observeFamilies(netnsPath(viaLibrary), FAMILIES);
    const fromText = await proc.observeFamilies(netnsPath(viaLibrary), FAMILIES);
    const shape = (rules: typeof fromJson) => rules.map((r) => `${r.family} ${r.table}/${r.chain} ${r.signature} ${r.target ?? '-'} ${r.packets}`);
    t.deepEqual(shape(fromJson), shape(fromText), `${c.name}: JSON and text listings`);
    for (const family of FAMILIES) t.deepEqual(diffRules(lib.expected(family, plan[family].rules), fromJson.filter((r) => r.family === family)), [], `${c.name} ${family}: as planned`);
  }
  const config = redirectConfigFromAnnotations({ 'sidecar.istio.io/interceptionMode': 'TPROXY' }, { dnsCapture: true });
  t.deepEqual((await checkRedirect({ netns: netnsPath(viaProcess), backendInstance: lib, config: redirectConfigFromAnnotations(PLAN_CASES.at(-1)!.annotations, PLAN_CASES.at(-1)!.proxy), families: [...FAMILIES] })).problems, [], 'the library checks what the process applied');
  t.not((await checkRedirect({ netns: netnsPath(viaProcess), backendInstance: lib, config, families: [...FAMILIES] })).problems.length, 0, 'and sees a difference where there is one');
});

test.serial('libnftables: a transaction the kernel refuses fails with nft\'s error as a CNI error, and leaves no table', async (t) => {
  requireLibrary(t);
  const ns = createNetns(t, 'pod');
  const home = threadNetns();
  await applyRedirect({ netns: netnsPath(ns), backendInstance: library(), config: redirectConfigFromAnnotations({}), families: [...FAMILIES] });
  const err = await t.throwsAsync(applyPlan({ netns: netnsPath(ns), backendInstance: library(), plan: planTheKernelRejects(), families: [...FAMILIES] }), { instanceOf: CommandFailedError });
  t.regex(err!.message, /libnftables.*Operation not supported/s);
  t.regex(err!.message, /<rules>:\d+:\d+-\d+: Error: .*\nadd rule inet mesh-cni-mangle output .*tproxy .*\n\s*\^+/, 'nft names and marks the offending line, as the process prints it');
  t.is(threadNetns(), home, 'the main thread is back in its own netns');
  t.deepEqual(ourTables(ns), [], 'fail closed: the old rules are removed as well');
  const cni = toCniError(err).toJson('1.0.0');
  t.is(cni.code, CniCode.RedirectFailed);
  t.regex(cni.msg, /Operation not supported/);

  // A script nft cannot parse: the syntax error comes back as text, nothing is applied.
  const [result] = runNft(netnsPath(ns), [{ script: 'add table inet mesh-cni-nat\nadd chain inet mesh-cni-nat output { type nat hook nowhere priority 0 ; }\n' }]);
  t.false(result!.ok);
  t.regex(result!.error, /^<rules>:2:\d+-\d+: Error: unknown chain hook\n.*hook nowhere/);
  t.deepEqual(ourTables(ns), [], 'one transaction: the table before the bad line was not created either');
  t.is(threadNetns(), home);
});

test.serial('libnftables: each call programs the netns it names and the thread always returns home; no socket is left open', async (t) => {
  requireLibrary(t);
  const a = createNetns(t, 'a');
  const b = createNetns(t, 'b');
  const home = threadNetns();
  await socketsClosed();
  const socketsBefore = openNetfilterSockets();
  const lib = library();
  const plan = buildPlan(redirectConfigFromAnnotations({}));
  await t.throwsAsync(lib.apply(netnsPath(a), planTheKernelRejects(), FAMILIES));
  t.is(threadNetns(), home);
  await lib.apply(netnsPath(b), plan, FAMILIES);
  t.is(threadNetns(), home);
  t.deepEqual(ourTables(a), [], 'nothing in the netns whose transaction failed');
  t.deepEqual(ourTables(b), ['table inet mesh-cni-nat'], 'the next call went where it was told, not where the last one was');
  t.deepEqual(ourTables(createNetns(t, 'elsewhere')), []);
  // A JavaScript error thrown while in the netns (here: a command that is not text) still brings the thread back.
  t.throws(() => runNft(netnsPath(a), [{ script: 'list tables' }, { script: undefined as unknown as string }]), { instanceOf: TypeError });
  t.is(threadNetns(), home);
  t.notRegex(sh(nftProgram(), ['list', 'tables']), /mesh-cni-/, 'nothing of ours in the netns the thread came from');
  await socketsClosed();
  t.is(openNetfilterSockets(), socketsBefore, 'every context\'s socket is closed once its close has run');
});

test.serial('libnftables and the process render one transaction for both families', async (t) => {
  requireLibrary(t);
  const ns = createNetns(t, 'pod');
  const plan = buildPlan(redirectConfigFromAnnotations({}));
  const script = renderNftScript(plan, FAMILIES);
  // One command in, one transaction: the listing shows both families' rules in the one nat table.
  const [applied, listed] = runNft(netnsPath(ns), [{ script }, { script: 'list table inet mesh-cni-nat' }]);
  t.true(applied!.ok, applied!.error);
  t.regex(listed!.output, /ip saddr 127\.0\.0\.6/);
  t.regex(listed!.output, /ip6 saddr ::6/);
});

test.serial('where libnftables cannot be loaded, the backend spawns nft instead and says so; MESH_CNI_NFTABLES=library refuses to', (t) => {
  requireLibrary(t);
  const ns = createNetns(t, 'pod');
  const absent = { MESH_CNI_LIBNFTABLES: '/nonexistent/libnftables.so.1' };
  const applied = mesh(['apply', '--netns', netnsPath(ns), '--backend', 'nftables'], absent);
  t.is(applied.code, 0, applied.stderr);
  t.regex(applied.stdout, /with nftables via the nft program \(\/nonexistent\/libnftables\.so\.1 could not be loaded: .*; spawning nft instead\)/);
  t.deepEqual(ourTables(ns), ['table inet mesh-cni-nat']);
  t.regex(mesh(['status', '--backend', 'nftables'], absent).stdout, /backend\s+nftables .*via the nft program/);
  t.regex(mesh(['status', '--backend', 'nftables']).stdout, /backend\s+nftables .*via libnftables in-process/);

  const refused = mesh(['remove', '--netns', netnsPath(ns), '--backend', 'nftables'], { ...absent, MESH_CNI_NFTABLES: 'library' });
  t.not(refused.code, 0);
  t.regex(refused.stderr, /could not be loaded/);
  t.deepEqual(ourTables(ns), ['table inet mesh-cni-nat'], 'nothing was done the other way');
});

test.serial('a statement our renderer never writes, added to one of our chains, is a difference through the JSON listing as through the text one', async (t) => {
  requireLibrary(t);
  const ns = createNetns(t, 'pod');
  const config = redirectConfigFromAnnotations({});
  await applyRedirect({ netns: netnsPath(ns), backendInstance: library(), config, families: ['ipv4'] });
  inNetns(ns, nftProgram(), ['add', 'rule', 'inet', 'mesh-cni-nat', 'output', 'meta', 'l4proto', 'tcp', 'log', 'prefix', '"someone-else "', 'counter', 'accept']);
  const viaLibrary = await checkRedirect({ netns: netnsPath(ns), backendInstance: library(), config, families: ['ipv4'] });
  const viaProcess = await checkRedirect({ netns: netnsPath(ns), backendInstance: processPath(), config, families: ['ipv4'] });
  t.false(viaProcess.ok);
  t.false(viaLibrary.ok);
  t.is(viaLibrary.problems.length, viaProcess.problems.length, viaLibrary.problems.join('\n'));
  t.regex(viaLibrary.problems.join('\n'), /unexpected in ipv4 nat\/output: .*"log"/, 'shown as the JSON nft gave, not dropped');
});

const TPROXY = () => redirectConfigFromAnnotations({ 'sidecar.istio.io/interceptionMode': 'TPROXY' }, { dnsCapture: true });

test.serial('libnftables, as an ADD applies (no read-back): a fresh netns gets the ruleset the replacing script gives, and tables of ours left behind are replaced, even ones the plan does not use', async (t) => {
  requireLibrary(t);
  const listed = (ns: string) => inNetns(ns, nftProgram(), ['list', 'ruleset', 'inet']);
  for (const config of [redirectConfigFromAnnotations({}), TPROXY()]) {
    const fresh = createNetns(t, 'fresh');
    const replaced = createNetns(t, 'repl');
    // Someone else's table: a netns with it is still fresh for us, and it is left alone.
    inNetns(fresh, nftProgram(), ['add', 'table', 'inet', 'theirs']);
    inNetns(replaced, nftProgram(), ['add', 'table', 'inet', 'theirs']);
    await applyRedirect({ netns: netnsPath(fresh), backendInstance: library(), config, families: [...FAMILIES], verify: 'when-replacing' });
    // The process path always runs the replacing script.
    await applyRedirect({ netns: netnsPath(replaced), backendInstance: processPath(), config, families: [...FAMILIES], verify: 'when-replacing' });
    t.is(listed(fresh), listed(replaced), 'the fresh script defines what the replacing one does');
    t.deepEqual((await checkRedirect({ netns: netnsPath(fresh), backendInstance: library(), config, families: [...FAMILIES] })).problems, []);
  }

  // TPROXY's three tables, then the nat table taken away: only tables the REDIRECT plan does not use are left.
  const ns = createNetns(t, 'stale');
  await applyRedirect({ netns: netnsPath(ns), backendInstance: library(), config: TPROXY(), families: [...FAMILIES], verify: 'when-replacing' });
  inNetns(ns, nftProgram(), ['delete', 'table', 'inet', 'mesh-cni-nat']);
  t.deepEqual(ourTables(ns), ['table inet mesh-cni-mangle', 'table inet mesh-cni-raw']);
  await applyRedirect({ netns: netnsPath(ns), backendInstance: library(), config: redirectConfigFromAnnotations({}), families: [...FAMILIES], verify: 'when-replacing' });
  t.deepEqual(ourTables(ns), ['table inet mesh-cni-nat'], 'the stale mangle and raw tables are gone: the netns was not taken for fresh');
  t.deepEqual((await checkRedirect({ netns: netnsPath(ns), backendInstance: library(), config: redirectConfigFromAnnotations({}), families: [...FAMILIES] })).problems, []);
});

test.serial('libnftables, as an ADD applies (no read-back): a transaction the kernel refuses in a fresh netns fails closed, with nft\'s error', async (t) => {
  requireLibrary(t);
  const ns = createNetns(t, 'pod');
  const home = threadNetns();
  const err = await t.throwsAsync(applyPlan({ netns: netnsPath(ns), backendInstance: library(), plan: planTheKernelRejects(), families: [...FAMILIES], verify: 'when-replacing' }), { instanceOf: CommandFailedError });
  t.regex(err!.message, /<rules>:\d+:\d+-\d+: Error: .*\nadd rule inet mesh-cni-mangle output .*tproxy .*\n\s*\^+/, 'nft names and marks the offending line');
  t.is(toCniError(err).toJson('1.0.0').code, CniCode.RedirectFailed);
  t.deepEqual(ourTables(ns), [], 'not even the nat table, whose lines came first and were valid');
  t.is(threadNetns(), home);
});

test.serial('the fresh script fails whole when a table of ours exists by the time it runs, and leaves that table as it was', (t) => {
  requireLibrary(t);
  const ns = createNetns(t, 'pod');
  const fresh = renderNftScript(buildPlan(TPROXY()), FAMILIES, { fresh: true });
  const [listing, late, applied] = nftSession(netnsPath(ns), (run) => [
    run({ script: 'list tables inet', json: true }),
    // Another transaction in between (here through the same context): an empty mangle table.
    run({ script: 'add table inet mesh-cni-mangle' }),
    run({ script: fresh }),
  ]);
  t.true(listing!.ok && late!.ok);
  t.notRegex(listing!.output, /mesh-cni-/);
  t.false(applied!.ok);
  t.regex(applied!.error, /File exists/);
  t.deepEqual(ourTables(ns), ['table inet mesh-cni-mangle'], 'neither nat nor raw was created');
  t.notRegex(inNetns(ns, nftProgram(), ['list', 'table', 'inet', 'mesh-cni-mangle']), /chain/, 'and nothing was added to the table that was there');
});

test.serial('signals arriving while libnftables waits for the kernel do not fail its transactions', async (t) => {
  requireLibrary(t);
  // A handled signal interrupts libnftables' select() for the kernel's answers; unblocked, some 5% of
  // these transactions failed with "Interrupted system call".
  const handler = () => undefined;
  process.on('SIGUSR2', handler);
  const sender = spawn('bash', ['-c', `while kill -USR2 ${process.pid}; do :; done`], { stdio: 'ignore' });
  t.teardown(() => {
    sender.kill('SIGKILL');
    process.off('SIGUSR2', handler);
  });
  const script = renderNftScript(buildPlan(redirectConfigFromAnnotations({})), ['ipv4'], { fresh: true });
  const failures: string[] = [];
  for (let i = 0; i < 150; i++) {
    const ns = createNetns(t, `sig${i}`);
    const [result] = runNft(netnsPath(ns), [{ script }]);
    if (!result!.ok) failures.push(result!.error);
    // Back to the event loop each time, so the signals' handler runs and libuv's signal pipe never fills.
    await new Promise((resolve) => setImmediate(resolve));
  }
  t.is(sender.exitCode, null, 'signals were being sent all along');
  t.deepEqual(failures, []);
});
