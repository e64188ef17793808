/**
 * Malformed requests as a broken runtime or a bad conflist would send them. Each must give the documented
 * CNI error code (README, Error codes), a non-zero exit, and must not reach the engine.
 */
import test, { type ExecutionContext } from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { classifyNetnsPath } from '../../src/netns';
import { INJECTED, logDir, netconf, run, unitDeps, withAnnotations } from './helpers';

interface Case {
  command?: string;
  stdin: Record<string, unknown> | string | Buffer;
  env?: Record<string, string | undefined>;
  code: number;
  msg?: RegExp;
  realNetns?: boolean;
}

const notANetns = join(logDir, 'plain-file');
writeFileSync(notANetns, 'not a namespace');

const malformed = test.macro({
  async exec(t: ExecutionContext, c: Case) {
    const deps = unitDeps(c.realNetns ? { classifyNetns: classifyNetnsPath } : {});
    const r = await run(c.command ?? 'ADD', c.stdin, deps, c.env ?? {});
    t.is(r.exitCode, 1, r.stdout);
    t.truthy(r.json, `stdout is an error JSON: ${r.stdout}`);
    t.is(r.json.code, c.code, r.stdout);
    t.is(typeof r.json.msg, 'string');
    t.truthy(r.json.cniVersion);
    if (c.msg) t.regex(r.json.msg as string, c.msg);
    t.deepEqual(deps.engine!.calls ?? [], [], 'the engine was not called, so no rules were written');
    t.regex(r.stderr, /"level":"error"/);
  },
  title: (title = '') => `malformed input: ${title}`,
});

const big = Buffer.alloc(1024 * 1024 + 1, 0x20);
big.write('{"cniVersion":"1.0.0","name":"n"}');

const cases: [string, Case][] = [
  ['bad JSON', { stdin: '{"cniVersion": "1.0.0", "name":', code: 6 }],
  ['empty stdin', { stdin: '', code: 6 }],
  ['JSON that is not an object', { stdin: '["cniVersion"]', code: 6 }],
  ['missing CNI_COMMAND', { stdin: netconf(), env: { CNI_COMMAND: undefined }, code: 4, msg: /CNI_COMMAND/ }],
  ['unknown CNI_COMMAND', { command: 'UPDATE', stdin: netconf(), code: 4, msg: /UPDATE/ }],
  ['missing CNI_NETNS on ADD', { stdin: netconf(), env: { CNI_NETNS: undefined }, code: 4, msg: /CNI_NETNS/ }],
  ['missing CNI_CONTAINERID on ADD', { stdin: netconf(), env: { CNI_CONTAINERID: '' }, code: 4, msg: /CNI_CONTAINERID/ }],
  ['missing CNI_CONTAINERID on DEL', { command: 'DEL', stdin: netconf(), env: { CNI_CONTAINERID: undefined }, code: 4, msg: /CNI_CONTAINERID/ }],
  ['missing CNI_IFNAME on CHECK', { command: 'CHECK', stdin: netconf(), env: { CNI_IFNAME: undefined }, code: 4, msg: /CNI_IFNAME/ }],
  ['CNI_CONTAINERID with bad characters', { stdin: netconf(), env: { CNI_CONTAINERID: 'abc;rm -rf' }, code: 4, msg: /CNI_CONTAINERID/ }],
  ['CNI_IFNAME too long', { stdin: netconf(), env: { CNI_IFNAME: 'a-very-long-interface' }, code: 4, msg: /CNI_IFNAME/ }],
  ['CNI_NETNS relative', { stdin: netconf(), env: { CNI_NETNS: 'netns/x' }, code: 4, msg: /CNI_NETNS/ }],
  ['CNI_ARGS without =', { stdin: netconf(), env: { CNI_ARGS: 'K8S_POD_NAME' }, code: 4, msg: /CNI_ARGS/ }],
  ['unknown cniVersion', { stdin: netconf({}, '0.9.9'), code: 1 }],
  ['cniVersion 0.2.0 (too old)', { stdin: netconf({}, '0.2.0'), code: 1 }],
  ['missing cniVersion', { stdin: { name: 'n', type: 'mesh-cni' }, code: 1 }],
  ['cniVersion not a string', { stdin: { cniVersion: 1, name: 'n' }, code: 6 }],
  ['CHECK with a 0.3.1 netconf', { command: 'CHECK', stdin: netconf({}, '0.3.1'), code: 1, msg: /CHECK/ }],
  ['STATUS with a 1.0.0 netconf', { command: 'STATUS', stdin: netconf({}, '1.0.0'), code: 1, msg: /STATUS/ }],
  ['GC with a 0.4.0 netconf', { command: 'GC', stdin: netconf({}, '0.4.0'), code: 1, msg: /GC/ }],
  ['missing network name', { stdin: { cniVersion: '1.0.0', type: 'mesh-cni' }, code: 7, msg: /name/ }],
  ['network name with bad characters', { stdin: netconf({ name: 'bad name!' }), code: 7 }],
  ['unknown netconf field of ours', { stdin: netconf({ loglevel: 'debug' }), code: 2, msg: /"loglevel": "debug"/ }],
  ['unknown field under kubernetes', { stdin: netconf({ kubernetes: { kubeconfig: '/etc/k', namespace: 'x' } }), code: 2, msg: /kubernetes\.namespace/ }],
  ['unknown backend', { stdin: netconf({ backend: 'ebpf' }), code: 7, msg: /backend/ }],
  ['unknown log_level', { stdin: netconf({ log_level: 'loud' }), code: 7, msg: /log_level/ }],
  ['relative kubeconfig path', { stdin: netconf({ kubernetes: { kubeconfig: 'kubeconfig' } }), code: 7, msg: /kubeconfig/ }],
  ['exclude_namespaces not a list', { stdin: netconf({ kubernetes: { exclude_namespaces: 'kube-system' } }), code: 7 }],
  ['capabilities not booleans', { stdin: netconf({ capabilities: { 'io.kubernetes.cri.pod-annotations': 'yes' } }), code: 7 }],
  ['runtime annotations not an object', { stdin: netconf({ runtimeConfig: { 'io.kubernetes.cri.pod-annotations': ['a'] } }), code: 7 }],
  ['runtime annotation value not a string', { stdin: netconf({ runtimeConfig: { 'io.kubernetes.cri.pod-annotations': { ...INJECTED, 'sidecar.istio.io/inject': true } } }), code: 7 }],
  [
    'bad annotation value through runtimeConfig',
    { stdin: withAnnotations({ ...INJECTED, 'traffic.sidecar.istio.io/includeOutboundIPRanges': 'not-a-cidr' }), code: 101, msg: /includeOutboundIPRanges/ },
  ],
  ['prevResult not an object', { stdin: netconf({ prevResult: 'eth0' }), code: 6, msg: /prevResult/ }],
  ['0.3.1 prevResult ip without version', { stdin: netconf({ prevResult: { cniVersion: '0.3.1', ips: [{ address: '10.0.0.2/24' }] } }, '0.3.1'), code: 6 }],
  ['prevResult with unknown cniVersion', { stdin: netconf({ prevResult: { cniVersion: '9.0.0' } }), code: 1 }],
  ['oversized stdin', { stdin: big, code: 5, msg: /1048576/ }],
  ['netns path that does not exist', { stdin: netconf(), env: { CNI_NETNS: join(logDir, 'gone') }, code: 3, realNetns: true }],
  ['netns path that is not a netns', { stdin: netconf(), env: { CNI_NETNS: notANetns }, code: 4, msg: /not a network namespace/, realNetns: true }],
  ['netns path that is a directory', { stdin: netconf(), env: { CNI_NETNS: logDir }, code: 4, realNetns: true }],
  ['netns path that is the plugin’s own netns', { stdin: netconf(), env: { CNI_NETNS: '/proc/self/ns/net' }, code: 4, msg: /own/, realNetns: true }],
  ['GC valid-attachments malformed', { command: 'GC', stdin: netconf({ 'cni.dev/valid-attachments': [{ containerID: 1 }] }, '1.1.0'), code: 7 }],
];

for (const [title, c] of cases) test(title, malformed, c);

test('error JSON answers in the request’s cniVersion when it is readable', async (t) => {
  const r = await run('ADD', netconf({ bogus: true }, '0.4.0'));
  t.is(r.json.cniVersion, '0.4.0');
  t.is(r.json.code, 2);
});

test('error JSON answers in 1.1.0 when stdin is unreadable', async (t) => {
  const r = await run('ADD', '{');
  t.is(r.json.cniVersion, '1.1.0');
});

test('an unknown field that looks like a credential is named but its value withheld', async (t) => {
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: '/etc/k', token: 'sekret-token' } }));
  t.is(r.json.code, 2);
  t.regex(r.json.msg as string, /kubernetes\.token/);
  t.notRegex(r.stdout, /sekret-token/);
  t.notRegex(r.stderr, /sekret-token/);
});
