/**
 * Fault injection: the primary CNI rewrites its conflist 100 times (without our entry, as a primary CNI
 * does when it reconfigures) while the installer's watcher keeps putting our entry back and pods are being
 * added with whatever config is active at that moment. Every ADD must see a whole, valid config; at the end
 * our entry is present exactly once.
 */
import test from 'ava';
import * as fs from 'node:fs';
import { findPrimaryConfig, PLUGIN_TYPE } from '../../src/installer';
import { runCni } from '../../src/cni/dispatch';
import { CALICO_CONFLIST, watchedCalicoNode } from '../installer/fixtures';
import { pluginDeps } from '../../src/standalone/wiring';

const REWRITES = 100;

test.serial(`fault conflist-storm: ${REWRITES} rewrites of the primary conflist during ADDs → entry present once, no ADD saw a broken config`, async (t) => {
  const { node, watcher, file } = watchedCalicoNode(t);
  const deadline = Date.now() + 5000;
  while (!watcher.ready() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.true(watcher.ready(), 'installed before the storm');

  let writing = true;
  let adds = 0;
  let withOurEntry = 0;
  let primaryTorn = 0;
  const broken: string[] = [];
  // ADDs: read the active config as libcni does, and hand our entry (if present) to the plugin as the runtime would.
  const adder = (async () => {
    while (writing) {
      const primary = await findPrimaryConfig(node.confDir);
      if (!primary) {
        // A half-written file: ours would carry our entry; one without it is the primary CNI's own in-place
        // write caught mid-way (truncate, then write), which no installer can prevent.
        const raw = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
        if (raw.includes(`"${PLUGIN_TYPE}"`)) broken.push(`a torn config with our entry: ${raw.slice(0, 80)}`);
        else primaryTorn++;
        await new Promise((r) => setImmediate(r));
        continue;
      }
      const list = primary.parsed as { cniVersion: string; name: string; plugins: Array<Record<string, unknown>> };
      const ours = list.plugins.filter((p) => p.type === PLUGIN_TYPE);
      if (ours.length > 1) broken.push(`our entry ${ours.length} times`);
      if (ours.length === 1) {
        withOurEntry++;
        const netconf = { ...ours[0], cniVersion: list.cniVersion, name: list.name };
        const r = await runCni({
          env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: `storm${adds}`, CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=plain' },
          stdin: Buffer.from(JSON.stringify({ ...netconf, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': {} } })),
        }, pluginDeps());
        // The plugin's own netns is refused (code 4) only after the netconf was parsed and found valid.
        if (r.exitCode !== 0 && JSON.parse(r.stdout).code !== 4) broken.push(`ADD failed: ${r.stdout}`);
      }
      adds++;
      await new Promise((r) => setImmediate(r));
    }
  })();

  // The storm: the primary CNI rewrites its file, in place or by rename, each time without our entry.
  for (let i = 0; i < REWRITES; i++) {
    const text = CALICO_CONFLIST.replace('"mtu": 0', `"mtu": ${1400 + i}`);
    if (i % 2 === 0) fs.writeFileSync(file, text);
    else {
      fs.writeFileSync(`${file}.tmp`, text);
      fs.renameSync(`${file}.tmp`, file);
    }
    await new Promise((r) => setTimeout(r, 10 + Math.random() * 20));
  }
  await new Promise((r) => setTimeout(r, 1000));
  writing = false;
  await adder;

  const final = JSON.parse(fs.readFileSync(file, 'utf8')) as { plugins: Array<{ type: string; mtu?: number }> };
  t.is(final.plugins.filter((p) => p.type === PLUGIN_TYPE).length, 1, 'our entry present exactly once at the end');
  t.is(final.plugins[final.plugins.length - 1].type, PLUGIN_TYPE, 'and last');
  t.is(final.plugins[0].mtu, 1400 + REWRITES - 1, "the primary CNI's last change is kept");
  t.log(`fault conflist-storm: ${REWRITES} rewrites, ${adds} config reads, ${withOurEntry} ADDs with our entry, ${primaryTorn} reads of the primary CNI's own half-written file, ${broken.length} broken`);
  t.deepEqual(broken, []);
});
