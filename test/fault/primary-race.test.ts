/**
 * Fault: the primary CNI rewrites its conflist twice, 20 ms apart, while the installer's watcher is putting
 * our entry back after the first write. The installer must never write over the primary's newer content
 * (the lost update): after each round the file holds the primary's last write plus our entry, once, last.
 */
import test from 'ava';
import * as fs from 'node:fs';
import { PLUGIN_TYPE } from '../../src/installer';
import { CALICO_CONFLIST, watchedCalicoNode } from '../installer/fixtures';

const ROUNDS = 500;

test.serial(`fault primary-race: ${ROUNDS} rounds of two primary rewrites 20 ms apart, the primary's last write always kept with our entry`, async (t) => {
  t.timeout(170_000);
  const { watcher, file } = watchedCalicoNode(t);
  const until = async (ok: () => boolean, ms: number) => {
    const end = Date.now() + ms;
    while (!ok() && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    return ok();
  };
  const read = () => {
    try {
      return JSON.parse(fs.readFileSync(file, 'utf8')) as { plugins: Array<{ type: string; mtu?: number }> };
    } catch {
      return undefined;
    }
  };
  const settled = (mtu: number) => {
    const list = read();
    if (!list) return false;
    const ours = list.plugins.filter((p) => p.type === PLUGIN_TYPE).length;
    return list.plugins[0].mtu === mtu && ours === 1 && list.plugins[list.plugins.length - 1].type === PLUGIN_TYPE;
  };
  t.true(await until(() => watcher.ready(), 5000), 'installed before the rounds');
  const write = (mtu: number) => {
    // As a primary CNI writes: a temp file renamed over its config, without our entry.
    fs.writeFileSync(`${file}.primary-tmp`, CALICO_CONFLIST.replace('"mtu": 0', `"mtu": ${mtu}`));
    fs.renameSync(`${file}.primary-tmp`, file);
  };
  const lost: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const last = 2000 + 2 * round + 1;
    write(last - 1);
    await new Promise((r) => setTimeout(r, 20));
    write(last);
    if (!(await until(() => settled(last), 3000))) lost.push(`round ${round}: file holds mtu ${read()?.plugins[0].mtu} (${read()?.plugins.map((p) => p.type).join(',')}), the primary last wrote ${last}`);
  }
  t.log(`fault primary-race: ${ROUNDS} rounds x 2 rewrites 20 ms apart, ${lost.length} lost updates`);
  t.deepEqual(lost.slice(0, 5), []);
});
