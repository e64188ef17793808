/**
 * Standalone mode (Istio's chained: false): our own config file holding only mesh-cni, the primary's file never
 * touched; readiness while our file is in place; uninstall removes our file and nothing else; switching modes
 * leaves no stale file and no entry in the primary. Temp node dirs only.
 */
import test from 'ava';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkInstalled, install, OWNED_CONF_NAME, uninstall } from './helpers';
import { DEFAULT_STANDALONE_CONF_NAME } from '../../src/installer/standalone-config';
import { CALICO_CONFLIST, FLANNEL_CONFLIST, makeNode } from './fixtures';

const read = (path: string) => JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown> & { plugins?: Array<{ type: string }> };

test('chained: false writes zzz-mesh-cni.conflist holding only our entry, network istio-cni (the NAD that Istio\'s injector names); the primary is untouched; uninstall removes only ours', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST }, { chained: false });
  t.teardown(n.cleanup);
  const report = await install(n.options);
  const ours = join(n.confDir, DEFAULT_STANDALONE_CONF_NAME);
  t.like(report.config, { action: 'inserted', path: ours });
  const list = read(ours);
  t.is(list.name, 'istio-cni');
  t.deepEqual(list.plugins?.map((p) => p.type), ['mesh-cni']);
  t.deepEqual(list.plugins?.[0], n.options.pluginConfig);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  t.true(report.status.ready);
  t.is(report.status.activeConfig, ours);
  // The runtime reads files in byte order: ours sorts after the primary's, so it never becomes the pod network.
  t.deepEqual(readdirSync(n.confDir).filter((f) => /\.conf(list)?$/.test(f)).sort(), ['10-calico.conflist', DEFAULT_STANDALONE_CONF_NAME]);
  t.true(DEFAULT_STANDALONE_CONF_NAME > 'calico.conflist' && DEFAULT_STANDALONE_CONF_NAME > 'flannel.conf');
  t.is((await install(n.options)).config.action, 'unchanged');

  await uninstall(n.options);
  t.false(existsSync(ours));
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  t.deepEqual(readdirSync(n.confDir), ['10-calico.conflist']);
});

test('no primary needed: standalone is ready with our file alone (Multus conf dir); removed file is put back and readiness follows it', async (t) => {
  const n = makeNode({}, { chained: false, cniConfFileName: 'mesh-cni.conflist' });
  t.teardown(n.cleanup);
  const ours = join(n.confDir, 'mesh-cni.conflist');
  t.true((await install(n.options)).status.ready);
  rmSync(ours);
  const status = await checkInstalled(n.options);
  t.false(status.ready);
  t.false(status.entryInActiveConfig);
  t.is(status.activeConfig, ours);
  t.is((await install(n.options)).config.action, 'inserted');
  writeFileSync(ours, '{"name": "mesh-cni", "plugins": [');
  t.false((await checkInstalled(n.options)).ready);
  t.is((await install(n.options)).config.action, 'reinserted');
  t.true((await checkInstalled(n.options)).ready);
});

test('a .conf name (as OpenShift uses) gets a single plugin config, which libcni reads as one plugin', async (t) => {
  const n = makeNode({}, { chained: false, cniConfFileName: 'mesh-cni.conf' });
  t.teardown(n.cleanup);
  const report = await install(n.options);
  t.true(report.status.ready);
  const conf = read(join(n.confDir, 'mesh-cni.conf'));
  t.like(conf, { name: 'istio-cni', type: 'mesh-cni', cniVersion: '1.0.0' });
  t.is(conf.plugins, undefined);
  await uninstall(n.options);
  t.deepEqual(readdirSync(n.confDir), []);
});

test("cniConfFileName naming the primary's file with chained: false: the primary is never overwritten; the pass waits and says why", async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST }, { chained: false, cniConfFileName: '10-calico.conflist' });
  t.teardown(n.cleanup);
  const report = await install(n.options);
  t.is(report.config.action, 'waiting');
  t.regex(report.config.action === 'waiting' ? report.config.reason : '', /holds another network's config; with chained: false/);
  t.false(report.status.ready);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  await uninstall(n.options);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  for (const bad of ['../x.conflist', 'mesh-cni.yaml']) {
    const r = await install({ ...n.options, cniConfFileName: bad });
    t.is(r.config.action, 'waiting', bad);
    t.false(r.status.ready, bad);
  }
});

test('chained -> standalone takes our entry out of the primary (byte for byte); standalone -> chained removes our file', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST, '20-flannel.conflist': FLANNEL_CONFLIST });
  t.teardown(n.cleanup);
  t.is((await install(n.options)).config.action, 'inserted');
  t.not(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  const standalone = await install({ ...n.options, chained: false });
  t.like(standalone.config, { action: 'inserted', released: [join(n.confDir, '10-calico.conflist')] });
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  t.true(existsSync(join(n.confDir, DEFAULT_STANDALONE_CONF_NAME)));
  // A new name: the old file goes.
  await install({ ...n.options, chained: false, cniConfFileName: 'mesh-cni.conf' });
  t.false(existsSync(join(n.confDir, DEFAULT_STANDALONE_CONF_NAME)));
  t.true(existsSync(join(n.confDir, 'mesh-cni.conf')));
  const chained = await install(n.options);
  t.true(chained.changed);
  t.false(existsSync(join(n.confDir, 'mesh-cni.conf')));
  t.true(chained.status.ready);
  await uninstall(n.options);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  t.is(readFileSync(join(n.confDir, '20-flannel.conflist'), 'utf8'), FLANNEL_CONFLIST);
  t.deepEqual(readdirSync(n.confDir).sort(), ['10-calico.conflist', '20-flannel.conflist']);
});

test('uninstall after the record was lost (a reboot emptied /var/run) still removes our standalone file, and only while it is ours', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST }, { chained: false });
  t.teardown(n.cleanup);
  await install(n.options);
  rmSync(n.options.stateDir, { recursive: true, force: true });
  const plan = await uninstall(n.options, { dryRun: true });
  t.true(plan.actions.some((a) => a.action === 'delete-file' && a.path === join(n.confDir, DEFAULT_STANDALONE_CONF_NAME)));
  t.false(plan.actions.some((a) => a.path === join(n.confDir, '10-calico.conflist')));
  await uninstall(n.options);
  t.deepEqual(readdirSync(n.confDir), ['10-calico.conflist']);
  // Someone else's file under our name is not ours to delete.
  writeFileSync(join(n.confDir, DEFAULT_STANDALONE_CONF_NAME), FLANNEL_CONFLIST);
  await uninstall(n.options);
  t.is(readFileSync(join(n.confDir, DEFAULT_STANDALONE_CONF_NAME), 'utf8'), FLANNEL_CONFLIST);
});

test('chained: false with the owned config is refused before anything is written; owned -> standalone drops our owned config, the primary byte for byte', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST });
  t.teardown(n.cleanup);
  const err = await t.throwsAsync(install({ ...n.options, chained: false, ownedConfig: true }));
  t.regex(err!.message, /chained: false and the owned config .* both ask for a config file of our own/);
  t.deepEqual(readdirSync(n.confDir), ['10-calico.conflist']);
  t.false(existsSync(n.options.cniBinDir + '/mesh-cni'), 'refused before the binaries too: nothing half-applied');

  const owned = await install({ ...n.options, ownedConfig: true });
  t.true(owned.status.ready);
  t.true(existsSync(join(n.confDir, OWNED_CONF_NAME)));
  const standalone = await install({ ...n.options, chained: false });
  t.true(standalone.status.ready);
  t.true('released' in standalone.config && standalone.config.released.includes(join(n.confDir, OWNED_CONF_NAME)));
  t.deepEqual(readdirSync(n.confDir).filter((f) => /\.conf(list)?$/.test(f)).sort(), ['10-calico.conflist', DEFAULT_STANDALONE_CONF_NAME]);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  t.false((await install({ ...n.options, chained: false })).changed, 'a second pass changes nothing');
});

test('standalone -> owned: our standalone file is never copied as the primary, and goes once the owned config is in force', async (t) => {
  const n = makeNode({}, { chained: false });
  t.teardown(n.cleanup);
  t.true((await install(n.options)).status.ready);
  // No primary at all: our own standalone file (only mesh-cni) must not be taken for one.
  const waiting = await install({ ...n.options, chained: true, ownedConfig: true });
  t.is(waiting.config.action, 'waiting');
  t.false(existsSync(join(n.confDir, OWNED_CONF_NAME)));
  writeFileSync(join(n.confDir, '10-calico.conflist'), CALICO_CONFLIST);
  const owned = await install({ ...n.options, chained: true, ownedConfig: true });
  t.true(owned.status.ready);
  t.deepEqual(read(join(n.confDir, OWNED_CONF_NAME)).plugins?.map((p) => p.type), [...(JSON.parse(CALICO_CONFLIST).plugins as Array<{ type: string }>).map((p) => p.type), 'mesh-cni']);
  t.false(existsSync(join(n.confDir, DEFAULT_STANDALONE_CONF_NAME)));
  t.false((await install({ ...n.options, chained: true, ownedConfig: true })).changed, 'a second pass changes nothing');
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
});
