/**
 * The primary's bytes are not ours: while our entry is in its file, every other token stays as the primary
 * wrote it (an integer past 2^53, a compact plugin, CRLF and tabs), and taking the entry out gives back the
 * exact bytes. Real install passes on temp dirs, then the text functions on their own (pure).
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { convertConfText, insertIntoConflistText, removeFromConflistText } from '../../src/installer/conflist';
import { pluginEntry } from '../../src/installer';
import { install, uninstall } from './helpers';
import { makeNode } from './fixtures';

const BIG = '12345678901234567890';
const PRIMARY = `{\r\n\t"cniVersion": "0.3.1",\r\n\t"name": "k8s-pod-network",\r\n\t"plugins": [\r\n\t\t{ "type": "calico", "mtu": 1440, "big": ${BIG}, "ratio": 1.50 },\r\n\t\t{"type":"portmap","capabilities":{"portMappings":true}}\r\n\t]\r\n}\r\n`;
const LONE_CONF = `{\r\n\t"cniVersion": "0.3.1",\r\n\t"name": "bridge",\r\n\t"type": "bridge",\r\n\t"big": ${BIG}\r\n}\r\n`;
const ENTRY = pluginEntry();

test('installed: the conflist keeps every token of the primary (integer past 2^53, 1.50, compact plugin, CRLF, tabs); uninstall gives its bytes back', async (t) => {
  const n = makeNode({ '10-calico.conflist': PRIMARY });
  t.teardown(n.cleanup);
  const path = join(n.confDir, '10-calico.conflist');
  await install(n.options);
  const installed = readFileSync(path, 'utf8');
  t.true(installed.includes(`"big": ${BIG}`), 'the integer as written');
  t.true(installed.includes('"ratio": 1.50'), 'the number as written');
  t.true(installed.includes('\t\t{"type":"portmap","capabilities":{"portMappings":true}},\r\n'), 'the compact plugin as written');
  t.false(/[^\r]\n/.test(installed), 'CRLF throughout');
  t.is(JSON.parse(installed).plugins.at(-1).type, 'mesh-cni');
  t.true(installed.startsWith(PRIMARY.slice(0, PRIMARY.indexOf('\r\n\t]'))), 'everything before our entry is the primary\'s text');
  await uninstall(n.options);
  t.is(readFileSync(path, 'utf8'), PRIMARY);
});

test('installed over a lone .conf: the conflist made from it holds the conf\'s own tokens', async (t) => {
  const n = makeNode({ '10-bridge.conf': LONE_CONF });
  t.teardown(n.cleanup);
  await install(n.options);
  const converted = readFileSync(join(n.confDir, '10-bridge.conflist'), 'utf8');
  t.true(converted.includes(`"big": ${BIG}`));
  const list = JSON.parse(converted);
  t.deepEqual(list.plugins.map((p: { type: string }) => p.type), ['bridge', 'mesh-cni']);
  t.is(list.name, 'bridge');
  t.is(list.cniVersion, '0.3.1');
  await uninstall(n.options);
  t.is(readFileSync(join(n.confDir, '10-bridge.conf'), 'utf8'), LONE_CONF);
});

test('pure: insert is idempotent, and remove after insert is the original byte for byte, for each layout', (t) => {
  const layouts = [
    PRIMARY,
    '{"name":"x","plugins":[{"type":"a","n":9007199254740993}]}',
    '{\n  "name": "x",\n  "plugins": [\n    {\n      "type": "a"\n    }\n  ]\n}\n',
    '{\n    "name": "x",\n    "plugins": [ { "type": "a" }, { "type": "b" } ]\n}',
  ];
  for (const original of layouts) {
    const once = insertIntoConflistText(original, ENTRY);
    t.is(insertIntoConflistText(once, ENTRY), once, 'idempotent');
    t.is(removeFromConflistText(once), original, 'round trip');
    const plugins = JSON.parse(once).plugins;
    t.is(plugins.at(-1).type, 'mesh-cni');
    t.is(plugins.filter((p: { type: string }) => p.type === 'mesh-cni').length, 1);
  }
});

test('pure: an older entry of ours anywhere in the list is taken out, the new one goes last', (t) => {
  const stale = `{"name":"x","plugins":[{"type":"mesh-cni","old":true},{"type":"a","n":${BIG}},{"type":"mesh-cni","old":true}]}`;
  const text = insertIntoConflistText(stale, ENTRY);
  t.true(text.includes(`{"type":"a","n":${BIG}}`));
  const plugins = JSON.parse(text).plugins;
  t.deepEqual(plugins.map((p: { type: string }) => p.type), ['a', 'mesh-cni']);
  t.is(plugins[1].old, undefined);
  t.is(removeFromConflistText(stale), `{"name":"x","plugins":[{"type":"a","n":${BIG}}]}`);
});

test('pure: a lone conf becomes a list whose first plugin is the conf\'s text', (t) => {
  const text = convertConfText(LONE_CONF, ENTRY);
  t.true(text.includes(`"big": ${BIG}`));
  t.deepEqual(JSON.parse(text).plugins.map((p: { type: string }) => p.type), ['bridge', 'mesh-cni']);
});

test('owned config: our own conflist is made from the primary\'s text, its integer past 2^53 as written; the primary is never written', async (t) => {
  const n = makeNode({ '10-calico.conflist': PRIMARY }, { ownedConfig: true });
  t.teardown(n.cleanup);
  await install(n.options);
  const owned = readFileSync(join(n.confDir, '02-mesh-cni.conflist'), 'utf8');
  t.true(owned.includes(`"big": ${BIG}`));
  t.is(JSON.parse(owned).plugins.at(-1).type, 'mesh-cni');
  t.is(readFileSync(join(n.confDir, '10-calico.conflist'), 'utf8'), PRIMARY);
});
