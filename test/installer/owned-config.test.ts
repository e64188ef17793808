/**
 * The owned config (Istio's istioOwnedCNIConfig; src/installer/owned-config.ts), on temp node dirs: our own
 * conflist, sorting first, holding the primary's plugins and then ours; the primary's file never written
 * (its sha256 before and after); the primary's rewrites copied; the primary's file gone or invalid: ours
 * removed and the pass waiting (fail closed); uninstall and the switches between chained and owned leave
 * nothing of ours behind. The watch's part: a rewrite of the primary reaches ours with no periodic pass,
 * and the fight guard never takes the primary's rewrites for removals.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkInstalled, install, OWNED_CONF_NAME, PLUGIN_TYPE, scanConfDir, uninstall, watchAndRepair, type InstallEvent, type InstallWatcher } from './helpers';
import { listConfFiles } from '../../src/installer/primary-config';
import { BRIDGE_CONF, CALICO_CONFLIST, FLANNEL_CONFLIST, INVALID_FIRST, makeNode, type Node } from './fixtures';
import type { InstallOptions } from '../../src/installer';

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
const parsed = (path: string) => JSON.parse(readFileSync(path, 'utf8')) as { name: string; cniVersion: string; plugins: Array<Record<string, unknown>> };
const types = (path: string) => parsed(path).plugins.map((p) => p.type);

/** Every file of the dir, name and bytes (the node as the runtime and an operator see it). */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir).sort()) out[name] = readFileSync(join(dir, name)).toString('base64');
  return out;
}

function ownedNode(t: ExecutionContext, files: Record<string, string>, extra: Partial<InstallOptions> = {}): Node & { owned: string } {
  const n = makeNode(files, { ownedConfig: true, ...extra });
  t.teardown(n.cleanup);
  return { ...n, owned: join(n.confDir, extra.ownedConfigFileName ?? OWNED_CONF_NAME) };
}

test("ours holds the primary's plugins in order, then ours, with the primary's name and cniVersion; it sorts first; the primary's bytes are unchanged", async (t) => {
  const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST });
  const primary = join(n.confDir, '10-calico.conflist');
  const before = sha(primary);
  const report = await install(n.options);
  t.is(report.config.action, 'inserted');
  t.is(report.config.action !== 'waiting' && report.config.action !== 'held' ? report.config.path : '', n.owned);
  t.deepEqual(types(n.owned), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE]);
  const ours = parsed(n.owned);
  const theirs = parsed(primary);
  t.is(ours.name, theirs.name);
  t.is(ours.cniVersion, theirs.cniVersion);
  t.deepEqual(ours.plugins.slice(0, -1), theirs.plugins);
  // As libcni's ConfFiles sorted (Go's sort.Strings), ours is the first file, and the first valid: the runtime's.
  t.deepEqual(await listConfFiles(n.confDir), [OWNED_CONF_NAME, '10-calico.conflist']);
  t.is((await scanConfDir(n.confDir)).primary?.path, n.owned);
  t.is(sha(primary), before, "the primary's file is never written");
  t.true(report.status.ready);
  t.is(report.status.activeConfig, n.owned);
  t.deepEqual(report.status.ownedConfig, { path: n.owned, primary, written: true });
  // A second pass writes nothing.
  const again = await install(n.options);
  t.is(again.config.action, 'unchanged');
  t.false(again.changed);
});

test("a rewrite of the primary is copied into ours on the next pass; the primary's file stays as the primary wrote it", async (t) => {
  const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST });
  const primary = join(n.confDir, '10-calico.conflist');
  await install(n.options);
  const rewritten = CALICO_CONFLIST.replace('"mtu": 0', '"mtu": 1450').replace(/,\n    \{\n      "type": "bandwidth",[^}]*\}\n    \}/, '');
  writeFileSync(primary, rewritten);
  const before = sha(primary);
  const report = await install(n.options);
  t.is(report.config.action, 'inserted');
  t.deepEqual(types(n.owned), ['calico', 'portmap', PLUGIN_TYPE]);
  t.is(parsed(n.owned).plugins[0]?.mtu, 1450);
  t.is(sha(primary), before);
  t.is(readFileSync(primary, 'utf8'), rewritten);
});

test("the primary's file removed: ours is removed too, the pass waits and says why, not ready; back: ours again", async (t) => {
  const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST });
  const primary = join(n.confDir, '10-calico.conflist');
  await install(n.options);
  unlinkSync(primary);
  const report = await install(n.options);
  t.is(report.config.action, 'waiting');
  t.regex(report.config.action === 'waiting' ? report.config.reason : '', /no valid network config .*: removed our owned config .*02-mesh-cni\.conflist so the runtime does not keep a stale copy/);
  t.false(existsSync(n.owned), 'no stale copy: the runtime has no network config, as the primary left it');
  t.false(report.status.ready);
  t.deepEqual(report.status.ownedConfig, { path: n.owned, primary: undefined, written: false });
  // A pass while still absent changes nothing.
  t.false((await install(n.options)).changed);
  writeFileSync(primary, CALICO_CONFLIST);
  const back = await install(n.options);
  t.is(back.config.action, 'inserted');
  t.true(back.status.ready);
  t.deepEqual(types(n.owned), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE]);
});

test("the primary's file invalid (half written): ours is removed and the pass waits; with cniConfFileName, it names the file", async (t) => {
  const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST }, { cniConfFileName: '10-calico.conflist' });
  const primary = join(n.confDir, '10-calico.conflist');
  await install(n.options);
  writeFileSync(primary, INVALID_FIRST);
  const report = await install(n.options);
  t.is(report.config.action, 'waiting');
  t.regex(report.config.action === 'waiting' ? report.config.reason : '', /10-calico\.conflist, is not a valid conflist: not JSON.*removed our owned config/);
  t.false(existsSync(n.owned));
  t.false((await checkInstalled(n.options)).ready);
  t.is(readFileSync(primary, 'utf8'), INVALID_FIRST, 'the invalid file is left as it is');
  writeFileSync(primary, CALICO_CONFLIST);
  t.true((await install(n.options)).status.ready);
});

test('the primary invalid with another valid config after it: ours copies that one, the one the runtime would use without us', async (t) => {
  const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST, '20-flannel.conflist': FLANNEL_CONFLIST });
  await install(n.options);
  t.deepEqual(types(n.owned), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE]);
  writeFileSync(join(n.confDir, '10-calico.conflist'), INVALID_FIRST);
  const report = await install(n.options);
  t.deepEqual(types(n.owned), ['flannel', 'portmap', PLUGIN_TYPE]);
  t.is(parsed(n.owned).name, 'cbr0');
  t.deepEqual(report.status.ownedConfig?.primary, join(n.confDir, '20-flannel.conflist'));
});

test('a lone .conf primary: ours is its conflist (libcni ConfListFromConf) with ours last; the .conf stays in place, untouched', async (t) => {
  const n = ownedNode(t, { '10-bridge.conf': BRIDGE_CONF });
  const conf = join(n.confDir, '10-bridge.conf');
  const before = sha(conf);
  await install(n.options);
  t.deepEqual(types(n.owned), ['bridge', PLUGIN_TYPE]);
  t.is(parsed(n.owned).name, 'mynet');
  t.is(parsed(n.owned).cniVersion, '0.4.0');
  t.is(sha(conf), before);
  t.false(existsSync(join(n.confDir, '10-bridge.conflist')));
});

test('uninstall removes ours and nothing else: the conf dir is as before, byte for byte; also when the install record was lost (a reboot)', async (t) => {
  for (const lost of [false, true]) {
    const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST, '20-flannel.conflist': FLANNEL_CONFLIST });
    const before = snapshot(n.confDir);
    await install(n.options);
    t.true(existsSync(n.owned));
    if (lost) rmSync(n.options.stateDir, { recursive: true, force: true });
    const report = await uninstall(n.options);
    t.true(report.actions.some((a) => a.action === 'delete-file' && a.path === n.owned), `${lost}: ${JSON.stringify(report.actions)}`);
    t.false(report.actions.some((a) => a.path.endsWith('10-calico.conflist') || a.path.endsWith('20-flannel.conflist')), 'the primary files are not in the plan');
    t.deepEqual(snapshot(n.confDir), before, lost ? 'record lost' : 'with the record');
  }
});

test('chained -> owned: the primary gets its original bytes back once ours is in force; owned -> chained: ours goes; no stale entry either way', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST });
  t.teardown(n.cleanup);
  const primary = join(n.confDir, '10-calico.conflist');
  const owned = join(n.confDir, OWNED_CONF_NAME);
  const before = snapshot(n.confDir);

  const chained = await install(n.options);
  t.is(chained.config.action, 'inserted');
  t.deepEqual(types(primary), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE]);

  const toOwned = await install({ ...n.options, ownedConfig: true });
  t.is(toOwned.config.action, 'inserted');
  t.deepEqual(toOwned.config.action === 'inserted' ? toOwned.config.released : [], [primary]);
  t.is(readFileSync(primary, 'utf8'), CALICO_CONFLIST, "the primary's original bytes");
  t.deepEqual(types(owned), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE], 'ours copies the primary without our old entry: one entry, last');
  t.true(toOwned.status.ready);

  const toChained = await install(n.options);
  t.deepEqual(types(primary), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE]);
  t.false(existsSync(owned), 'our owned file goes once the entry is in the primary');
  t.true(toChained.status.ready);
  t.is(toChained.status.activeConfig, primary);
  t.deepEqual(toChained.config.action === 'reinserted' || toChained.config.action === 'inserted' ? toChained.config.released : [], [owned]);

  // And back to owned, then uninstall: nothing of ours anywhere.
  await install({ ...n.options, ownedConfig: true });
  t.is(readFileSync(primary, 'utf8'), CALICO_CONFLIST);
  await uninstall({ ...n.options, ownedConfig: true });
  t.deepEqual(snapshot(n.confDir), before);
});

test('owned -> chained with the install record lost: the chained pass does not take our owned file for the primary, and removes it', async (t) => {
  const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST });
  const primary = join(n.confDir, '10-calico.conflist');
  await install(n.options);
  rmSync(n.options.stateDir, { recursive: true, force: true });
  const report = await install({ ...n.options, ownedConfig: false });
  t.is(report.config.action !== 'waiting' && report.config.action !== 'held' ? report.config.path : '', primary);
  t.false(existsSync(n.owned));
  t.deepEqual(types(primary), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE]);
});

test('an owned name that sorts after the primary: written, but the pass waits and says to rename it; an entry chained before stays until then', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST });
  t.teardown(n.cleanup);
  const primary = join(n.confDir, '10-calico.conflist');
  await install(n.options);
  const report = await install({ ...n.options, ownedConfig: true, ownedConfigFileName: '99-mesh-cni.conflist' });
  t.is(report.config.action, 'waiting');
  t.regex(report.config.action === 'waiting' ? report.config.reason : '', /runtime reads .*10-calico\.conflist first: give istioOwnedCNIConfigFileName a name that sorts before it/);
  t.false(report.status.ready);
  t.deepEqual(types(primary), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE], 'the chained entry is not taken out while ours is not in force');
});

test("names that cannot work are refused with a reason: a path, a .conf, and cniConfFileName naming our owned file", async (t) => {
  for (const [extra, pattern] of [
    [{ ownedConfigFileName: '../02-mesh-cni.conflist' }, /must be a file name, not a path/],
    [{ ownedConfigFileName: '02-mesh-cni.conf' }, /must end in \.conflist/],
    [{ cniConfFileName: OWNED_CONF_NAME }, /is mesh-cni's own owned config/],
  ] as const) {
    const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST }, extra);
    const report = await install(n.options);
    t.is(report.config.action, 'waiting');
    t.regex(report.config.action === 'waiting' ? report.config.reason : '', pattern);
    t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  }
});

/** Milliseconds until `done` holds, polling every 2 ms. */
async function until(done: () => boolean, limit = 20_000): Promise<number> {
  const start = performance.now();
  while (performance.now() - start < limit) {
    if (done()) return performance.now() - start;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`not done within ${limit} ms`);
}

const copies = (owned: string, primaryText: string) => () => {
  try {
    const ours = JSON.parse(readFileSync(owned, 'utf8')) as { plugins: unknown[] };
    return JSON.stringify(ours.plugins.slice(0, -1)) === JSON.stringify((JSON.parse(primaryText) as { plugins: unknown[] }).plugins);
  } catch {
    return false;
  }
};

test("the agent's watch: each rewrite of the primary (in place and by rename) reaches ours with no periodic pass; the fight guard never holds", async (t) => {
  const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST });
  const primary = join(n.confDir, '10-calico.conflist');
  const events: InstallEvent[] = [];
  let w: InstallWatcher | undefined;
  t.teardown(() => w?.close());
  // A strict guard: 2 removals in a minute would hold. The primary's rewrites must never count as removals.
  w = watchAndRepair(n.options, (e) => events.push(e), { periodMs: 600_000, fight: { removals: 2, windowMs: 60_000, quietMs: 60_000, maxQuietMs: 60_000 } });
  await until(() => w!.ready());
  for (let i = 1; i <= 10; i++) {
    const text = CALICO_CONFLIST.replace('"mtu": 0', `"mtu": ${1400 + i}`);
    if (i % 2 === 0) {
      writeFileSync(`${primary}.tmp`, text);
      renameSync(`${primary}.tmp`, primary);
    } else {
      writeFileSync(primary, text);
    }
    await until(copies(n.owned, text));
    t.is(readFileSync(primary, 'utf8'), text, `rewrite ${i}: the primary's file is as the primary wrote it`);
  }
  t.is(w.held(), undefined);
  t.false(events.some((e) => e.type === 'held' || e.type === 'error'), JSON.stringify(events.filter((e) => e.type !== 'pass')));
  // The primary goes: the watch removes ours and turns not ready, with the reason; it comes back: ready again.
  unlinkSync(primary);
  await until(() => !existsSync(n.owned) && !w!.ready());
  const last = w.lastReport()?.config;
  t.is(last?.action, 'waiting');
  writeFileSync(primary, CALICO_CONFLIST);
  await until(() => w!.ready() && copies(n.owned, CALICO_CONFLIST)());
  t.is(w.held(), undefined);
});

test('the fight guard hears removals of our owned file (an exclusive primary renames it away), once each, and never the primary rewriting its own', async (t) => {
  const n = ownedNode(t, { '10-calico.conflist': CALICO_CONFLIST });
  const primary = join(n.confDir, '10-calico.conflist');
  const heard: string[][] = [];
  const hold = (removed: string[]) => (heard.push(removed), false);
  await install(n.options, { hold });
  writeFileSync(primary, CALICO_CONFLIST.replace('"mtu": 0', '"mtu": 1400'));
  await install(n.options, { hold });
  renameSync(n.owned, `${n.owned}.cilium_bak`);
  const back = await install(n.options, { hold });
  t.is(back.config.action, 'reinserted');
  await install(n.options, { hold });
  t.deepEqual(heard, [[], [], [n.owned], []]);
  // Held: ours is left away, the pass says held and readiness is false.
  renameSync(n.owned, `${n.owned}.cilium_bak`);
  const held = await install(n.options, { hold: () => true });
  t.is(held.config.action, 'held');
  t.false(existsSync(n.owned));
  t.false(held.status.ready);
  t.is(readFileSync(primary, 'utf8'), CALICO_CONFLIST.replace('"mtu": 0', '"mtu": 1400'));
});
