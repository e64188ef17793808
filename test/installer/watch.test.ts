/**
 * Keeping the entry installed while the primary CNI rewrites its config: in place (truncate + write), by
 * rename over the file (Multus, Cilium), by a new file that sorts first, and by a .conf written again.
 * The repairs asserted here are the directory watch's: the periodic safety pass is set to ten minutes, so
 * only the watch's events can make them. How soon they come is a timing and belongs to the bench (bench/
 * reinsertion.ts, p50/p99 under a primary's rewrites); here the bound is generous, to hold on a busy machine.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync, mkdirSync, unlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseKubeconfig } from '../../src/kube/kubeconfig';
import { checkInstalled, uninstall, watchAndRepair, type InstallEvent, type InstallWatcher, PLUGIN_TYPE } from './helpers';
import { BRIDGE_CONF, CALICO_CONFLIST, FLANNEL_CONFLIST, INVALID_FIRST, makeNode, type Node } from './fixtures';

/** Generous: a loaded 2-core machine delays a pass by a second or more; the watch's events still make it. */
const LIMIT_MS = 15_000;
/** Longer than any test here: a repair seen within one was made by the watch, not by the periodic pass. */
const NO_PERIODIC_PASS_MS = 600_000;

function setup(t: ExecutionContext, files: Record<string, string>): { n: Node; events: InstallEvent[]; start: () => InstallWatcher } {
  const n = makeNode(files);
  const events: InstallEvent[] = [];
  let w: InstallWatcher | undefined;
  t.teardown(async () => {
    await w?.close();
    n.cleanup();
  });
  return { n, events, start: () => (w = watchAndRepair(n.options, (e) => events.push(e), { periodMs: NO_PERIODIC_PASS_MS })) };
}

async function hasEntryLast(path: string): Promise<boolean> {
  try {
    const list = JSON.parse(await readFile(path, 'utf8'));
    const ours = list.plugins.filter((p: { type: string }) => p.type === PLUGIN_TYPE).length;
    return ours === 1 && list.plugins.at(-1).type === PLUGIN_TYPE;
  } catch {
    return false;
  }
}

/** Milliseconds until `done` holds, polling every 2 ms; fails after `limit` ms. */
async function until(done: () => Promise<boolean> | boolean, limit = LIMIT_MS + 5000): Promise<number> {
  const start = performance.now();
  while (performance.now() - start < limit) {
    if (await done()) return performance.now() - start;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`not done within ${limit} ms`);
}

async function started(w: InstallWatcher): Promise<void> {
  await until(() => w.lastReport() !== undefined);
}

test('re-inserts on the watch\'s event after the primary CNI overwrites its config: 20 trials in a row', async (t) => {
  const { n, events, start } = setup(t, { '00-invalid.conflist': INVALID_FIRST, '10-calico.conflist': CALICO_CONFLIST });
  const path = join(n.confDir, '10-calico.conflist');
  const w = start();
  await started(w);
  t.true(w.ready());
  const times: number[] = [];
  for (let trial = 0; trial < 20; trial++) {
    if (trial % 2 === 0) {
      // In place, as a plain `cat > file` or an fs.writeFile does.
      writeFileSync(path, CALICO_CONFLIST);
    } else {
      // Replaced by rename, as Multus and Cilium write their configs.
      writeFileSync(`${path}.tmp`, CALICO_CONFLIST);
      renameSync(`${path}.tmp`, path);
    }
    const ms = await until(() => hasEntryLast(path));
    times.push(ms);
    t.true(ms <= LIMIT_MS, `trial ${trial}: re-inserted after ${ms.toFixed(1)} ms`);
  }
  const max = Math.max(...times);
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  t.log(`re-insert after overwrite, 20 trials: max ${max.toFixed(1)} ms, mean ${mean.toFixed(1)} ms, all: ${times.map((x) => x.toFixed(0)).join(' ')}`);
  // The event of the last pass is sent after its write; wait for that pass to end.
  await w.nextPass();
  t.true(w.ready());
  const reinsertions = events.filter((e) => e.type === 'pass' && e.report.config.action === 'reinserted').length;
  t.true(reinsertions >= 20, `${reinsertions} reinsertion events reported`);
  t.false(events.some((e) => e.type === 'error'));
});

test('waits for the primary config, then inserts on the watch\'s event when it appears', async (t) => {
  const { n, start } = setup(t, { '00-invalid.conflist': INVALID_FIRST });
  const w = start();
  await started(w);
  t.false(w.ready());
  t.is(w.lastReport()?.config.action, 'waiting');
  writeFileSync(join(n.confDir, '10-flannel.conflist'), FLANNEL_CONFLIST);
  const ms = await until(() => hasEntryLast(join(n.confDir, '10-flannel.conflist')));
  t.log(`inserted ${ms.toFixed(1)} ms after the primary config appeared`);
  t.true(ms <= LIMIT_MS);
  await until(() => w.ready());
  t.pass();
});

test('a .conf written again by the primary CNI is converted again; uninstall restores its latest bytes', async (t) => {
  const { n, start } = setup(t, { '10-bridge.conf': BRIDGE_CONF });
  const conflist = join(n.confDir, '10-bridge.conflist');
  const w = start();
  await started(w);
  t.true(w.ready());
  const rewritten = BRIDGE_CONF.replace('10.22.0.0/16', '10.23.0.0/16');
  writeFileSync(join(n.confDir, '10-bridge.conf'), rewritten);
  const ms = await until(async () => !existsSync(join(n.confDir, '10-bridge.conf')) && (await readFile(conflist, 'utf8')).includes('10.23.0.0/16') && (await hasEntryLast(conflist)));
  t.true(ms <= LIMIT_MS, `reconverted after ${ms.toFixed(1)} ms`);
  await w.close();
  await uninstall(n.options);
  t.is(readFileSync(join(n.confDir, '10-bridge.conf'), 'utf8'), rewritten);
  t.false(existsSync(conflist));
});

test('Cilium style: a new config sorts first and the old one is renamed away; the entry follows, uninstall restores', async (t) => {
  const { n, start } = setup(t, { '10-flannel.conflist': FLANNEL_CONFLIST });
  const w = start();
  await started(w);
  const cilium = join(n.confDir, '05-cilium.conflist');
  const CILIUM = '{\n  "cniVersion": "0.3.1",\n  "name": "cilium",\n  "plugins": [\n    {\n      "type": "cilium-cni",\n      "enable-debug": false\n    }\n  ]\n}\n';
  writeFileSync(cilium, CILIUM);
  renameSync(join(n.confDir, '10-flannel.conflist'), join(n.confDir, '10-flannel.conflist.cilium_bak'));
  const ms = await until(() => hasEntryLast(cilium));
  t.true(ms <= LIMIT_MS, `moved after ${ms.toFixed(1)} ms`);
  await until(() => w.ready());
  await w.close();
  const report = await uninstall(n.options);
  t.is(readFileSync(cilium, 'utf8'), CILIUM);
  t.false(existsSync(join(n.confDir, '10-flannel.conflist')), 'the renamed-away file is not recreated');
  t.false(report.actions.some((a) => a.action !== 'delete-file' && !a.path.startsWith(cilium)), 'only the active config and our own files are touched');
});

test('Multus style: a config that sorts first appears; ours leaves the old file (restored exactly) for the new one', async (t) => {
  const { n, start } = setup(t, { '10-calico.conflist': CALICO_CONFLIST });
  const w = start();
  await started(w);
  const multus = join(n.confDir, '00-multus.conf');
  const MULTUS = JSON.stringify({ cniVersion: '0.3.1', name: 'multus-cni-network', type: 'multus', kubeconfig: '/etc/cni/net.d/multus.d/multus.kubeconfig', delegates: [JSON.parse(CALICO_CONFLIST)] }, null, 2);
  writeFileSync(multus, MULTUS);
  const ms = await until(async () => !existsSync(multus) && (await hasEntryLast(join(n.confDir, '00-multus.conflist'))));
  t.true(ms <= LIMIT_MS, `moved after ${ms.toFixed(1)} ms`);
  await until(async () => (await readFile(join(n.confDir, '10-calico.conflist'), 'utf8')) === CALICO_CONFLIST);
  await w.close();
  await uninstall(n.options);
  t.is(readFileSync(multus, 'utf8'), MULTUS);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  t.false(existsSync(join(n.confDir, '00-multus.conflist')));
});

test('a deleted shim is put back on the watch\'s event; without the watcher, readiness reports it missing', async (t) => {
  const { n, events, start } = setup(t, { '10-calico.conflist': CALICO_CONFLIST });
  const w = start();
  await started(w);
  t.true(w.ready());
  unlinkSync(join(n.binDir, 'mesh-cni'));
  const ms = await until(() => existsSync(join(n.binDir, 'mesh-cni')));
  t.true(ms <= LIMIT_MS, `shim restored after ${ms.toFixed(1)} ms`);
  await w.nextPass();
  t.true(w.ready());
  t.true(events.some((e) => e.type === 'pass' && e.report.binaries.some((b) => b.action === 'written') && e.trigger !== 'start'));
  await w.close();
  unlinkSync(join(n.binDir, 'mesh-cni'));
  const status = await checkInstalled(n.options);
  t.false(status.ready);
  t.true(status.entryInActiveConfig);
  t.deepEqual(status.binaries.map((b) => b.inPlace), [false, true]);
});

test('token rotated by a symlink swap (as projected volumes do) rewrites the kubeconfig', async (t) => {
  const { n, start } = setup(t, { '10-calico.conflist': CALICO_CONFLIST });
  // kubelet's layout: token -> ..data/token, ..data -> ..2024_01_01; rotation swaps ..data.
  const sa = join(n.root, 'projected');
  mkdirSync(join(sa, '..v1'), { recursive: true });
  mkdirSync(join(sa, '..v2'), { recursive: true });
  writeFileSync(join(sa, '..v1', 'token'), 'token-v1');
  writeFileSync(join(sa, '..v2', 'token'), 'token-v2');
  symlinkSync('..v1', join(sa, '..data'));
  symlinkSync('..data/token', join(sa, 'token'));
  n.options.kubeconfig = { ...n.options.kubeconfig!, tokenPath: join(sa, 'token') };
  const w = start();
  await started(w);
  const token = () => parseKubeconfig(readFileSync(n.kubeconfigPath, 'utf8'), n.kubeconfigPath).token;
  t.is(token(), 'token-v1');
  symlinkSync('..v2', join(sa, '..data_tmp'));
  renameSync(join(sa, '..data_tmp'), join(sa, '..data'));
  const ms = await until(() => token() === 'token-v2');
  t.true(ms <= LIMIT_MS, `kubeconfig rewritten after ${ms.toFixed(1)} ms`);
});

test('a conf dir replaced by a new one is watched again; the periodic pass covers the gap', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST });
  // The watch follows the old directory's inode, so the first write into the new one raises no event.
  const w = watchAndRepair(n.options, () => {}, { periodMs: 200 });
  t.teardown(async () => {
    await w.close();
    n.cleanup();
  });
  await started(w);
  const moved = `${n.confDir}.old`;
  renameSync(n.confDir, moved);
  mkdirSync(n.confDir);
  writeFileSync(join(n.confDir, '10-calico.conflist'), CALICO_CONFLIST);
  rmSync(moved, { recursive: true });
  const ms = await until(() => hasEntryLast(join(n.confDir, '10-calico.conflist')));
  t.true(ms <= LIMIT_MS, `repaired after ${ms.toFixed(1)} ms`);
  // And the new directory stays repaired (by its new watch, or at worst the next period).
  await w.nextPass();
  writeFileSync(join(n.confDir, '10-calico.conflist'), CALICO_CONFLIST);
  const again = await until(() => hasEntryLast(join(n.confDir, '10-calico.conflist')));
  t.true(again <= LIMIT_MS, `re-inserted after ${again.toFixed(1)} ms`);
});

test('close() stops all work: no pass runs after it', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST });
  t.teardown(n.cleanup);
  const w = watchAndRepair(n.options, () => {}, { periodMs: 50 });
  await started(w);
  await w.close();
  writeFileSync(join(n.confDir, '10-calico.conflist'), CALICO_CONFLIST);
  await new Promise((r) => setTimeout(r, 300));
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
});

/** The periodic pass on its own: the directory watch's events wait ten minutes, so only the periodic pass can repair. */
function setupPeriodic(t: ExecutionContext, files: Record<string, string>, periodMs: number): { n: Node; start: () => InstallWatcher } {
  const n = makeNode(files);
  let w: InstallWatcher | undefined;
  t.teardown(async () => {
    await w?.close();
    n.cleanup();
  });
  return { n, start: () => (w = watchAndRepair(n.options, () => {}, { periodMs, debounceMs: NO_PERIODIC_PASS_MS })) };
}

test('the periodic pass skips when nothing in the watched dirs moved: no install pass runs over an idle node', async (t) => {
  const { n, start } = setupPeriodic(t, { '10-calico.conflist': CALICO_CONFLIST }, 50);
  const w = start();
  await started(w);
  // The pass after the first one's own writes runs (their stamp differs); after it, nothing moves.
  await until(async () => (await hasEntryLast(join(n.confDir, '10-calico.conflist'))) && w.ready());
  await new Promise((r) => setTimeout(r, 500));
  const settled = w.lastReport();
  // Forty periods: each one that ran a pass would leave a new report.
  await new Promise((r) => setTimeout(r, 2000));
  t.is(w.lastReport(), settled, 'no pass ran while nothing changed');
  t.true(w.ready());
});

test('the periodic pass still repairs what the directory watch missed: a rewrite of the primary, a deleted shim', async (t) => {
  const { n, start } = setupPeriodic(t, { '10-calico.conflist': CALICO_CONFLIST }, 100);
  const path = join(n.confDir, '10-calico.conflist');
  const w = start();
  await started(w);
  await until(() => hasEntryLast(path));
  writeFileSync(path, CALICO_CONFLIST);
  await until(() => hasEntryLast(path));
  const shim = join(n.binDir, 'mesh-cni');
  unlinkSync(shim);
  await until(() => existsSync(shim));
  t.true(await hasEntryLast(path));
  await until(() => w.ready());
  t.pass();
});
