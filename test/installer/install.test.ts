/**
 * One install pass and uninstall, on temp dirs holding real-world primary configs.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync, rmSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { pluginEntry } from '../../src/installer';
import { checkInstalled, findPrimaryConfig, install, uninstall, PLUGIN_TYPE, STATE_FILE_FOR_TESTS } from './helpers';
import { parseKubeconfig } from '../../src/kube/kubeconfig';
import { BRIDGE_CONF, CALICO_CONFLIST, FLANNEL_CONFLIST, INVALID_FIRST, makeNode, REAL_WORLD, type Node } from './fixtures';

function node(t: ExecutionContext, files: Record<string, string> = {}, extra = {}): Node {
  const n = makeNode(files, extra);
  t.teardown(n.cleanup);
  return n;
}

function plugins(path: string): Array<Record<string, unknown>> {
  return (JSON.parse(readFileSync(path, 'utf8')) as { plugins: Array<Record<string, unknown>> }).plugins;
}

/** Every file under the node's dirs: bytes, mode, inode and mtime, to prove a dry run touches nothing. */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isSymbolicLink()) out[p] = `-> ${readlinkSync(p)}`;
      else {
        const st = statSync(p);
        out[p] = `${readFileSync(p).toString('base64')} ${st.mode} ${st.ino} ${st.mtimeMs}`;
      }
    }
  };
  walk(root);
  return out;
}

test('findPrimaryConfig skips invalid files as kubelet does and ignores other extensions', async (t) => {
  const n = node(t, {
    '00-broken.conflist': INVALID_FIRST,
    '01-empty.conflist': '{"cniVersion":"0.3.1","name":"empty","plugins":[]}',
    '02-notype.conf': '{"cniVersion":"0.3.1","name":"notype"}',
    '03-unnamed.conflist': '{"cniVersion":"0.3.1","plugins":[{"type":"x"}]}',
    '05-aaa.conf.bak': BRIDGE_CONF,
    '10-calico.conflist': CALICO_CONFLIST,
    '20-bridge.conf': BRIDGE_CONF,
  });
  const primary = await findPrimaryConfig(n.confDir);
  t.is(primary?.path, join(n.confDir, '10-calico.conflist'));
  t.is(primary?.kind, 'conflist');
  t.deepEqual(
    primary?.skipped.map((s) => [s.path.slice(n.confDir.length + 1), s.reason.split(':')[0]]),
    [
      ['00-broken.conflist', 'not JSON'],
      ['01-empty.conflist', 'no plugins in list'],
      ['02-notype.conf', "missing 'type'"],
      ['03-unnamed.conflist', 'no name'],
    ],
  );
  t.is(await findPrimaryConfig(join(n.root, 'nonexistent')), undefined);
});

test('lexical order is byte order, as Go sorts: uppercase before lowercase', async (t) => {
  const n = node(t, { 'a.conf': BRIDGE_CONF, 'B.conflist': FLANNEL_CONFLIST });
  t.is((await findPrimaryConfig(n.confDir))?.path, join(n.confDir, 'B.conflist'));
});

for (const fixture of REAL_WORLD) {
  test(`${fixture.title}: inserted last, the rest kept, formatting kept, one entry after repeated installs`, async (t) => {
    const n = node(t, { '00-invalid.conflist': INVALID_FIRST, [fixture.file]: fixture.text });
    const path = join(n.confDir, fixture.file);
    const first = await install(n.options);
    t.is(first.config.action, 'inserted');
    t.true(first.status.ready);
    const after = plugins(path);
    t.deepEqual(after.slice(0, -1), JSON.parse(fixture.text).plugins);
    t.like(after.at(-1), { type: PLUGIN_TYPE });
    // The invalid file before it is left alone.
    t.is(readFileSync(join(n.confDir, '00-invalid.conflist'), 'utf8'), INVALID_FIRST);
    const text = readFileSync(path, 'utf8');
    t.true(text.startsWith('{\n  "name"'), 'key order and two-space indent kept');
    t.true(text.endsWith('}\n'), 'final newline kept');

    const inode = statSync(path).ino;
    for (let i = 0; i < 5; i++) t.is((await install(n.options)).config.action, 'unchanged');
    t.is(plugins(path).filter((p) => p.type === PLUGIN_TYPE).length, 1);
    t.is(statSync(path).ino, inode, 'an unchanged config is not rewritten');
  });

  test(`${fixture.title}: uninstall restores the original bytes`, async (t) => {
    const n = node(t, { [fixture.file]: fixture.text });
    await install(n.options);
    await install(n.options);
    const report = await uninstall(n.options);
    t.false(report.dryRun);
    t.true(readFileSync(join(n.confDir, fixture.file)).equals(Buffer.from(fixture.text)));
    t.deepEqual(readdirSync(n.confDir), [fixture.file], 'kubeconfig gone, nothing else left');
    t.deepEqual(readdirSync(n.binDir), [], 'binaries gone');
    t.false(existsSync(join(n.options.stateDir, STATE_FILE_FOR_TESTS)));
  });
}

test('an older entry of ours is replaced and moved last, not duplicated', async (t) => {
  const old = JSON.parse(CALICO_CONFLIST);
  old.plugins.splice(1, 0, { type: PLUGIN_TYPE, log_level: 'debug', backend: 'iptables-legacy' });
  const n = node(t, { '10-calico.conflist': JSON.stringify(old, null, 2) });
  await install(n.options);
  const after = plugins(join(n.confDir, '10-calico.conflist'));
  t.deepEqual(after.map((p) => p.type), ['calico', 'bandwidth', 'portmap', PLUGIN_TYPE]);
  t.deepEqual(after[3], n.options.pluginConfig);
});

test('bridge .conf: converted to a .conflist (name and version kept), and the conversion reversed on uninstall', async (t) => {
  const n = node(t, { '00-invalid.conflist': INVALID_FIRST, '10-bridge.conf': BRIDGE_CONF });
  chmodSync(join(n.confDir, '10-bridge.conf'), 0o600);
  const report = await install(n.options);
  t.like(report.config, { action: 'inserted', path: join(n.confDir, '10-bridge.conflist'), convertedFrom: join(n.confDir, '10-bridge.conf') });
  t.false(existsSync(join(n.confDir, '10-bridge.conf')), 'the .conf would sort first and hide the conflist');
  const list = JSON.parse(readFileSync(join(n.confDir, '10-bridge.conflist'), 'utf8'));
  t.is(list.cniVersion, '0.4.0');
  t.is(list.name, 'mynet');
  t.deepEqual(list.plugins[0], JSON.parse(BRIDGE_CONF));
  t.like(list.plugins[1], { type: PLUGIN_TYPE });
  t.true(readFileSync(join(n.confDir, '10-bridge.conflist'), 'utf8').includes('\n\t"cniVersion"'), 'tab indentation kept');
  t.is((await findPrimaryConfig(n.confDir))?.path, join(n.confDir, '10-bridge.conflist'));
  t.is((await install(n.options)).config.action, 'unchanged', 'the converted file is recognised as ours');

  await uninstall(n.options);
  t.true(readFileSync(join(n.confDir, '10-bridge.conf')).equals(Buffer.from(BRIDGE_CONF)));
  t.is(statSync(join(n.confDir, '10-bridge.conf')).mode & 0o777, 0o600, 'mode restored');
  t.false(existsSync(join(n.confDir, '10-bridge.conflist')));
  t.deepEqual(readdirSync(n.confDir).sort(), ['00-invalid.conflist', '10-bridge.conf']);
});

test('a .conf whose .conflist name is taken by someone else gets a name that still sorts first', async (t) => {
  const n = node(t, { '10-bridge.conf': BRIDGE_CONF, '10-bridge.conflist': FLANNEL_CONFLIST });
  const report = await install(n.options);
  t.like(report.config, { path: join(n.confDir, '10-bridge-mesh-cni.conflist') });
  t.is((await findPrimaryConfig(n.confDir))?.path, join(n.confDir, '10-bridge-mesh-cni.conflist'));
  t.is(readFileSync(join(n.confDir, '10-bridge.conflist'), 'utf8'), FLANNEL_CONFLIST);
  await uninstall(n.options);
  t.deepEqual(readdirSync(n.confDir).sort(), ['10-bridge.conf', '10-bridge.conflist']);
  t.is(readFileSync(join(n.confDir, '10-bridge.conf'), 'utf8'), BRIDGE_CONF);
});

test('uninstall removes the attachment records ADD left under the state dir (also a state_dir of the entry)', async (t) => {
  const entryState = join(tmpdir(), `mesh-cni-entry-state-${process.pid}-${Date.now()}`);
  t.teardown(() => rmSync(entryState, { recursive: true, force: true }));
  const n = node(t, { '10-flannel.conflist': FLANNEL_CONFLIST }, { pluginConfig: pluginEntry({ stateDir: entryState }) });
  await install(n.options);
  // What the plugin writes on ADD (AttachmentStore): one JSON file per attachment.
  for (const dir of [join(n.options.stateDir, 'attachments'), join(entryState, 'attachments')]) {
    mkdirSync(dir, { recursive: true });
    for (const id of ['c1', 'c2']) writeFileSync(join(dir, `${id}_eth0.json`), '{"containerId":"c1"}\n');
  }
  const dry = await uninstall(n.options, { dryRun: true });
  t.true(dry.actions.some((a) => a.path === join(n.options.stateDir, 'attachments') && /2 files/.test(a.detail)));
  await uninstall(n.options);
  t.false(existsSync(join(n.options.stateDir, 'attachments')));
  t.false(existsSync(join(entryState, 'attachments')));
  t.deepEqual(readdirSync(n.options.stateDir), [], 'nothing of ours left in the state dir');
});

test('dry run changes nothing and lists what it would do', async (t) => {
  const n = node(t, { '10-bridge.conf': BRIDGE_CONF, '20-calico.conflist': CALICO_CONFLIST });
  await install(n.options);
  const before = snapshot(n.root);
  const report = await uninstall(n.options, { dryRun: true });
  t.deepEqual(snapshot(n.root), before);
  t.true(report.dryRun);
  const shown = report.actions.map((a) => [a.action, a.path.slice(n.root.length + 1)]);
  t.deepEqual(shown, [
    ['restore-conf', 'host/etc/cni/net.d/10-bridge.conf'],
    ['delete-file', 'host/etc/cni/net.d/10-bridge.conflist'],
    ['delete-file', 'host/opt/cni/bin/mesh-cni'],
    ['delete-file', 'host/etc/cni/net.d/mesh-cni-kubeconfig'],
    ['delete-file', 'host/opt/cni/bin/mesh-cni.d'],
  ]);
  for (const a of report.actions) t.true(a.detail.length > 0);
  // The real run does what the dry run said.
  const real = await uninstall(n.options);
  t.deepEqual(real.actions, report.actions);
  t.is(readFileSync(join(n.confDir, '10-bridge.conf'), 'utf8'), BRIDGE_CONF);
});

test('a config someone else changed after install only loses our entry', async (t) => {
  const n = node(t, { '10-calico.conflist': CALICO_CONFLIST });
  await install(n.options);
  const path = join(n.confDir, '10-calico.conflist');
  const edited = JSON.parse(readFileSync(path, 'utf8'));
  edited.plugins[0].mtu = 1450;
  writeFileSync(path, JSON.stringify(edited, null, 2));
  const report = await uninstall(n.options);
  t.like(report.actions[0], { action: 'remove-entry', path });
  const after = JSON.parse(readFileSync(path, 'utf8'));
  t.is(after.plugins[0].mtu, 1450, 'their change kept');
  t.deepEqual(after.plugins.map((p: { type: string }) => p.type), ['calico', 'bandwidth', 'portmap']);
});

test('with the state record lost, uninstall still finds and removes our entry', async (t) => {
  const n = node(t, { '10-flannel.conflist': FLANNEL_CONFLIST });
  await install(n.options);
  rmSync(n.options.stateDir, { recursive: true });
  const report = await uninstall(n.options);
  t.like(report.actions[0], { action: 'remove-entry' });
  t.deepEqual(JSON.parse(readFileSync(join(n.confDir, '10-flannel.conflist'), 'utf8')), JSON.parse(FLANNEL_CONFLIST));
  t.false(existsSync(join(n.binDir, 'mesh-cni')));
});

test('a restarted agent with its state lost keeps the entry and reports it unchanged', async (t) => {
  const n = node(t, { '10-calico.conflist': CALICO_CONFLIST });
  await install(n.options);
  rmSync(n.options.stateDir, { recursive: true });
  t.is((await install(n.options)).config.action, 'unchanged');
  await uninstall(n.options);
  // Not exact (no record of the original bytes), but the same config.
  t.deepEqual(JSON.parse(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8')), JSON.parse(CALICO_CONFLIST));
});

test('kubeconfig: mode 0600, readable by the plugin, rewritten when the token rotates', async (t) => {
  const n = node(t, { '10-calico.conflist': CALICO_CONFLIST });
  const first = await install(n.options);
  t.deepEqual(first.kubeconfig, { path: n.kubeconfigPath, action: 'written' });
  t.is(statSync(n.kubeconfigPath).mode & 0o777, 0o600);
  const endpoint = parseKubeconfig(readFileSync(n.kubeconfigPath, 'utf8'), n.kubeconfigPath);
  t.is(endpoint.server.href, 'https://10.96.0.1/');
  t.is(endpoint.token, 'eyJhbGciOiJSUzI1NiJ9.first-token.sig');
  t.true(endpoint.ca?.toString().includes('MIIBfake'));

  t.is((await install(n.options)).kubeconfig?.action, 'unchanged');
  writeFileSync(n.tokenPath, 'eyJhbGciOiJSUzI1NiJ9.rotated.sig\n');
  t.is((await install(n.options)).kubeconfig?.action, 'written');
  t.is(parseKubeconfig(readFileSync(n.kubeconfigPath, 'utf8'), n.kubeconfigPath).token, 'eyJhbGciOiJSUzI1NiJ9.rotated.sig');
  t.is(statSync(n.kubeconfigPath).mode & 0o777, 0o600);
});

test('kubeconfig: an IPv6 API server address is bracketed', async (t) => {
  const n = node(t, { '10-calico.conflist': CALICO_CONFLIST });
  n.options.kubeconfig = { ...n.options.kubeconfig!, host: 'fd00::1', port: '6443' };
  await install(n.options);
  t.is(parseKubeconfig(readFileSync(n.kubeconfigPath, 'utf8'), n.kubeconfigPath).server.host, '[fd00::1]:6443');
});

test('binaries are copied only when their content changed (inode and mtime kept otherwise)', async (t) => {
  const n = node(t, { '10-calico.conflist': CALICO_CONFLIST });
  const first = await install(n.options);
  t.deepEqual(first.binaries.map((b) => b.action), ['written', 'written']);
  const shim = join(n.binDir, 'mesh-cni');
  const engineLink = join(n.binDir, 'mesh-cni.d');
  const engine = join(engineLink, 'src', 'main.js');
  t.is(statSync(shim).mode & 0o777, 0o755);
  t.is(statSync(engine).mode & 0o777, 0o644);
  t.is(readFileSync(join(engineLink, 'mesh-cni.js'), 'utf8'), "require('./src/main.js');\n");
  const before = [statSync(shim), statSync(engine)].map((s) => [s.ino, s.mtimeMs]);
  const firstVersion = readlinkSync(engineLink);
  await new Promise((r) => setTimeout(r, 20));
  const second = await install(n.options);
  t.deepEqual(second.binaries.map((b) => b.action), ['unchanged', 'unchanged']);
  t.false(second.changed);
  t.true(second.status.ready);
  t.deepEqual([statSync(shim), statSync(engine)].map((s) => [s.ino, s.mtimeMs]), before);

  writeFileSync(join(n.options.enginePath, 'src', 'main.js'), '// engine v2\n');
  const third = await install(n.options);
  t.deepEqual(third.binaries.map((b) => b.action), ['unchanged', 'written']);
  t.is(readFileSync(engine, 'utf8'), '// engine v2\n');
  t.not(readlinkSync(engineLink), firstVersion, 'a new version directory, swapped in by renaming the link');
  t.true(existsSync(join(n.binDir, firstVersion)), 'the previous version stays for engines that started from it');
  t.is(statSync(shim).ino, before[0]![0]);
  t.false(readdirSync(n.binDir).some((f) => f.includes('tmp') || f.includes('.link-')), 'no temp files left');

  writeFileSync(join(n.options.enginePath, 'src', 'main.js'), '// engine v3\n');
  await install(n.options);
  t.false(existsSync(join(n.binDir, firstVersion)), 'only the current and the previous version are kept');
  t.is(readdirSync(n.binDir).filter((f) => f.startsWith('.mesh-cni.d-')).length, 2);

  // Changed by hand on the node: put back.
  writeFileSync(engine, '// tampered\n');
  t.false((await checkInstalled(n.options)).binaries[1]!.inPlace);
  t.deepEqual((await install(n.options)).binaries.map((b) => b.action), ['unchanged', 'written']);
  t.is(readFileSync(engine, 'utf8'), '// engine v3\n');

  await uninstall(n.options);
  t.deepEqual(readdirSync(n.binDir), [], 'uninstall removes the link and every version');
});

test('an engine file from an earlier install is replaced by the engine directory', async (t) => {
  const n = node(t, { '10-calico.conflist': CALICO_CONFLIST });
  const legacy = join(n.binDir, 'mesh-cni.js');
  writeFileSync(legacy, '// old single-file engine\n');
  mkdirSync(n.options.stateDir, { recursive: true });
  writeFileSync(join(n.options.stateDir, 'install-state.json'), JSON.stringify({ version: 1, configs: [], ownedFiles: [legacy] }));
  await install(n.options);
  t.false(existsSync(legacy));
  t.true(existsSync(join(n.binDir, 'mesh-cni.d', 'mesh-cni.js')));
});

test('no primary config yet: binaries installed, config waiting, not ready', async (t) => {
  const n = node(t, { '00-invalid.conflist': INVALID_FIRST });
  const report = await install(n.options);
  t.is(report.config.action, 'waiting');
  t.false(report.status.ready);
  t.true(existsSync(join(n.binDir, 'mesh-cni')));
});

test('standalone conf: our own conflist, removed on uninstall', async (t) => {
  const n = node(t, {}, { standaloneConf: true, standalonePlugins: [{ type: 'bridge', bridge: 'mesh0', ipam: { type: 'host-local', subnet: '10.99.0.0/24' } }] });
  const report = await install(n.options);
  t.like(report.config, { action: 'inserted', path: join(n.confDir, '10-mesh-cni.conflist') });
  t.true(report.status.ready);
  t.deepEqual(plugins(join(n.confDir, '10-mesh-cni.conflist')).map((p) => p.type), ['bridge', PLUGIN_TYPE]);
  t.is((await install(n.options)).config.action, 'unchanged');
  await uninstall(n.options);
  t.deepEqual(readdirSync(n.confDir), []);
});

test('a pluginConfig of another type is refused', async (t) => {
  const n = node(t, { '10-calico.conflist': CALICO_CONFLIST });
  await t.throwsAsync(install({ ...n.options, pluginConfig: { type: 'istio-cni' } }), { message: /must be "mesh-cni"/ });
});
