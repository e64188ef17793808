/**
 * Inputs that used to crash, mislead or leak: interface names with NUL or more than
 * 15 bytes, IPv6 zone ids, JSON nested 10^5 levels deep, a secret nested under a field we do not know, a
 * kubeconfig token with CR/LF. Each gets its documented code, and the engine is never called.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as requestLog from '../../src/cni/log';
import { parseKubeconfig } from '../../src/kube/kubeconfig';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { InvalidConfigError } from '../../src/errors';
import { toCniError } from '../../src/errors';
import { INJECTED, netconf, run, unitDeps, withAnnotations } from './helpers';
import { testTempDir } from '../support/tmp';

const DEEP = `${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}`;
/** The netconf as text with the 10^5-level value spliced in (JSON.stringify itself would overflow on it). */
const withDeep = (conf: Record<string, unknown>) => JSON.stringify(conf).replace('"__DEEP__"', DEEP);

const badAnnotations: Array<[string, Record<string, string>]> = [
  ['excludeInterfaces with a NUL', { 'traffic.sidecar.istio.io/excludeInterfaces': 'a\u0000b' }],
  ['excludeInterfaces of 15 characters but 30 bytes', { 'traffic.sidecar.istio.io/excludeInterfaces': 'é'.repeat(15) }],
  ['kubevirtInterfaces with a control character', { 'traffic.sidecar.istio.io/kubevirtInterfaces': 'v\u0001' }],
  ['an IPv6 zone id in excludeOutboundIPRanges', { 'traffic.sidecar.istio.io/excludeOutboundIPRanges': 'fe80::1%eth0/64' }],
  ['an IPv6 zone id in includeOutboundIPRanges', { 'traffic.sidecar.istio.io/includeOutboundIPRanges': '10.0.0.0/8,fe80::%2/10' }],
];

for (const [what, annotations] of badAnnotations) {
  test(`${what} is refused with 101 and nothing applied`, async (t) => {
    const deps = unitDeps();
    const r = await run('ADD', withAnnotations({ ...INJECTED, ...annotations }), deps);
    t.is(r.json?.code, 101, r.stdout);
    t.deepEqual(deps.engine.calls, []);
    t.true(toCniError(t.throws(() => redirectConfigFromAnnotations(annotations), { instanceOf: InvalidConfigError })).cniCode === 101);
  });
}

test('a 15-byte interface name is still accepted', (t) => {
  t.deepEqual(redirectConfigFromAnnotations({ 'traffic.sidecar.istio.io/excludeInterfaces': 'é'.repeat(7) + 'x' }).excludeInterfaces, ['é'.repeat(7) + 'x']);
});

const nested: Array<[string, () => string, number]> = [
  ['prevResult', () => withDeep(netconf({ prevResult: '__DEEP__' })), 6],
  ['kubernetes', () => withDeep(netconf({ kubernetes: '__DEEP__' })), 2],
  ['kubernetes.kubeconfig', () => withDeep(netconf({ kubernetes: { kubeconfig: '__DEEP__' } })), 7],
  ['kubernetes.exclude_namespaces', () => withDeep(netconf({ kubernetes: { exclude_namespaces: ['__DEEP__'] } })), 7],
  ['an unknown field', () => withDeep(netconf({ surprise: '__DEEP__' })), 2],
];

for (const [where, conf, code] of nested) {
  test(`JSON nested 10^5 levels deep in ${where} gives ${code}, not a stack overflow`, async (t) => {
    const deps = unitDeps();
    const r = await run('ADD', conf(), deps);
    t.is(r.json?.code, code, r.stdout.slice(0, 300));
    t.notRegex(r.stdout, /call stack/);
    t.deepEqual(deps.engine.calls, []);
  });
}

test('a secret nested under an unknown field is never echoed, in the answer or the log', async (t) => {
  const dir = testTempDir(t, 'secret');
  const logFile = path.join(dir, 'cni.log');
  for (const conf of [
    netconf({ log_file: logFile, auth: { bearer: 'SEKRET-abc123' } }),
    netconf({ log_file: logFile, settings: [{ token: 'SEKRET-abc123' }] }),
    netconf({ log_file: logFile, bearer: 'SEKRET-abc123' }),
  ]) {
    const r = await run('ADD', conf, unitDeps({ defaultLogFile: logFile }));
    t.is(r.json?.code, 2, r.stdout);
    t.notRegex(r.stdout + r.stderr, /SEKRET/);
  }
  // Lines are written in the background; wait for them (older code wrote them at once).
  await (requestLog as { flushRequestLogs?: (ms: number) => Promise<void> }).flushRequestLogs?.(2000);
  const log = fs.readFileSync(logFile, 'utf8');
  t.regex(log, /unsupported netconf field/);
  t.notRegex(log, /SEKRET/);
});

test('a kubeconfig token with CR/LF is 105, and the token is not quoted', (t) => {
  const text = JSON.stringify({
    'current-context': 'c',
    contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
    clusters: [{ name: 'k', cluster: { server: 'https://127.0.0.1:6443' } }],
    users: [{ name: 'u', user: { token: 'abc\r\nX-Injected: SEKRET' } }],
  });
  const err = t.throws(() => parseKubeconfig(text, '/k'));
  t.is(toCniError(err).cniCode, 105);
  t.notRegex(err!.message, /SEKRET/);
});

test('a kubeconfig token with CR/LF through ADD is 105, not 999', async (t) => {
  const dir = testTempDir(t, 'kc');
  const kc = path.join(dir, 'kubeconfig');
  fs.writeFileSync(kc, JSON.stringify({
    'current-context': 'c',
    contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
    clusters: [{ name: 'k', cluster: { server: 'https://127.0.0.1:1' } }],
    users: [{ name: 'u', user: { token: 'abc\r\nX-Injected: 1' } }],
  }));
  const deps = unitDeps();
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: kc } }), deps);
  t.is(r.json?.code, 105, r.stdout);
  t.deepEqual(deps.engine.calls, []);
});
