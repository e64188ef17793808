/**
 * Istio's cniConfFileName: on a node with several conflists, the entry goes into the named one, not into the
 * first valid config; while the named file is absent (or invalid) the pass waits, says which file and why,
 * and inserts once it appears. Temp node dirs only.
 */
import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkInstalled, install, uninstall } from './helpers';
import { CALICO_CONFLIST, FLANNEL_CONFLIST, makeNode } from './fixtures';

const types = (path: string) => (JSON.parse(readFileSync(path, 'utf8')) as { plugins: Array<{ type: string }> }).plugins.map((p) => p.type);

test('the entry goes into the named file, not the first valid one; uninstall gives both back byte for byte', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST, '20-flannel.conflist': FLANNEL_CONFLIST }, { cniConfFileName: '20-flannel.conflist' });
  t.teardown(n.cleanup);
  const report = await install(n.options);
  t.is(report.config.action, 'inserted');
  t.deepEqual(types(join(n.confDir, '20-flannel.conflist')), ['flannel', 'portmap', 'mesh-cni']);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  t.true(report.status.ready);
  t.is(report.status.activeConfig, join(n.confDir, '20-flannel.conflist'));
  await uninstall(n.options);
  t.is(readFileSync(join(n.confDir, '20-flannel.conflist'), 'utf8'), FLANNEL_CONFLIST);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
});

test('while the named file is absent the pass waits and names it; another config is not touched; once it appears the entry goes in', async (t) => {
  const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST }, { cniConfFileName: '20-flannel.conflist' });
  t.teardown(n.cleanup);
  const waiting = await install(n.options);
  t.is(waiting.config.action, 'waiting');
  t.regex(waiting.config.action === 'waiting' ? waiting.config.reason : '', /cniConfFileName, .*20-flannel\.conflist, does not exist yet/);
  t.false(waiting.status.ready);
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
  writeFileSync(join(n.confDir, '20-flannel.conflist'), '{"name": "cbr0", "plugins": [');
  const invalid = await install(n.options);
  t.regex(invalid.config.action === 'waiting' ? invalid.config.reason : '', /is not a valid conflist: not JSON/);
  writeFileSync(join(n.confDir, '20-flannel.conflist'), FLANNEL_CONFLIST);
  t.is((await install(n.options)).config.action, 'inserted');
  t.true((await checkInstalled(n.options)).ready);
});

test('a path or a name the runtime never reads is refused with a reason, and nothing is written', async (t) => {
  for (const name of ['/etc/cni/net.d/10-calico.conflist', '10-calico.conflist.bak']) {
    const n = makeNode({ '10-calico.conflist': CALICO_CONFLIST }, { cniConfFileName: name });
    const report = await install(n.options);
    t.is(report.config.action, 'waiting', name);
    t.regex(report.config.action === 'waiting' ? report.config.reason : '', /cniConfFileName/);
    t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), CALICO_CONFLIST);
    n.cleanup();
  }
});
