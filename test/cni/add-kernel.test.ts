/**
 * ADD / CHECK / DEL through the dispatcher against the kernel, with the real engine and annotation parser.
 * Needs root, iproute2, iptables/nftables. Each test makes its own netns and always removes it.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileTempDir } from '../support/tmp';
import { runCni } from '../../src/cni/dispatch';
import { findProgram } from '../../src/redirect/programs';
import { INJECTED, POD_ARGS } from './helpers';
import { nftProgram } from '../../src/redirect/nftables/backend';
import { pluginDeps } from '../../src/standalone/wiring';

const logFile = join(fileTempDir('kernel'), 'cni.log');

test.before(() => {
  if (process.getuid?.() !== 0) throw new Error('add-kernel tests need root (network namespaces, iptables)');
  for (const [program, pkg] of [['ip', 'iproute2'], ['iptables-save', 'iptables'], ['nft', 'nftables']] as const) {
    if (!findProgram(program)) throw new Error(`add-kernel tests need ${program}: apt-get install -y ${pkg}`);
  }
});

function newPodNetns(t: ExecutionContext): string {
  const name = `mcni-${randomBytes(4).toString('hex')}`;
  execFileSync('ip', ['netns', 'add', name]);
  t.teardown(() => execFileSync('ip', ['netns', 'del', name]));
  for (const args of [
    ['link', 'set', 'lo', 'up'],
    // a veth pair inside the pod netns: an interface with an address and a default route, no dummy module needed
    ['link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1'],
    ['addr', 'add', '10.77.0.2/24', 'dev', 'v0'],
    ['link', 'set', 'v0', 'up'],
    ['link', 'set', 'v1', 'up'],
    ['route', 'add', 'default', 'via', '10.77.0.1'],
  ]) {
    execFileSync('ip', ['-n', name, ...args]);
  }
  return name;
}

function rulesIn(netns: string): string {
  const iptables = execFileSync('ip', ['netns', 'exec', netns, 'iptables-save'], { encoding: 'utf8' });
  const nft = execFileSync('ip', ['netns', 'exec', netns, nftProgram(), 'list', 'ruleset'], { encoding: 'utf8' });
  return `${iptables}\n${nft}`;
}

function conf(annotations: Record<string, string>, extra: Record<string, unknown> = {}) {
  return { cniVersion: '1.1.0', name: 'k8s-pod-network', type: 'mesh-cni', log_file: logFile, state_dir: dirname(logFile), runtimeConfig: { 'io.kubernetes.cri.pod-annotations': annotations }, ...extra };
}

async function cni(command: string, netns: string, netconf: Record<string, unknown>) {
  const r = await runCni({
    env: { CNI_COMMAND: command, CNI_CONTAINERID: 'c0ffee', CNI_NETNS: `/var/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_ARGS: POD_ARGS },
    stdin: Buffer.from(JSON.stringify(netconf)),
  }, pluginDeps());
  return { ...r, json: r.stdout ? JSON.parse(r.stdout) : undefined };
}

/** Listens on 15001 inside the pod netns and connects to 10.77.0.9:80 from it; reports which port accepted. */
function connectFromPod(netns: string): Promise<string> {
  const script = `
    const net = require('net');
    const srv = net.createServer((s) => { process.stdout.write('accepted:' + s.localPort); s.destroy(); srv.close(); });
    srv.listen(15001, '0.0.0.0', () => {
      const c = net.connect(80, '10.77.0.9');
      c.on('error', (e) => { process.stdout.write('error:' + e.code); srv.close(); });
      setTimeout(() => { process.stdout.write('timeout'); process.exit(0); }, 2000).unref();
    });`;
  return new Promise((resolve) => {
    const child = spawn('ip', ['netns', 'exec', netns, process.execPath, '-e', script]);
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.on('close', () => resolve(out));
  });
}

test('ADD of an injected pod programs its netns; outbound TCP lands on 15001', async (t) => {
  const ns = newPodNetns(t);
  const prev = { cniVersion: '1.1.0', ips: [{ address: '10.77.0.2/24' }] };
  const r = await cni('ADD', ns, conf(INJECTED, { prevResult: prev }));
  t.is(r.exitCode, 0, r.stdout);
  t.deepEqual(r.json, prev);
  t.regex(rulesIn(ns), /15001/);
  t.regex(await connectFromPod(ns), /accepted:15001/);
});

test('ADD of a pod that is not injected leaves no rules', async (t) => {
  const ns = newPodNetns(t);
  const r = await cni('ADD', ns, conf({}));
  t.is(r.exitCode, 0, r.stdout);
  t.notRegex(rulesIn(ns), /15001|15006/);
});

test('a bad annotation through runtimeConfig gives 101 and leaves no rules', async (t) => {
  const ns = newPodNetns(t);
  const r = await cni('ADD', ns, conf({ ...INJECTED, 'traffic.sidecar.istio.io/includeOutboundIPRanges': '10.0.0.0/33' }));
  t.is(r.json?.code, 101, r.stdout);
  t.notRegex(rulesIn(ns), /15001|15006/);
});

test('CHECK passes after ADD and fails (103) once the rules are removed by hand', async (t) => {
  const ns = newPodNetns(t);
  t.is((await cni('ADD', ns, conf(INJECTED))).exitCode, 0);
  const ok = await cni('CHECK', ns, conf(INJECTED));
  t.is(ok.exitCode, 0, ok.stdout);
  execFileSync('ip', ['netns', 'exec', ns, 'iptables', '-t', 'nat', '-F']);
  execFileSync('ip', ['netns', 'exec', ns, nftProgram(), 'flush', 'ruleset']);
  const broken = await cni('CHECK', ns, conf(INJECTED));
  t.is(broken.json?.code, 103, broken.stdout);
});

test('CHECK says "no redirect rules" for a netns holding none of ours, and "differ" when some are missing', async (t) => {
  const ns = newPodNetns(t);
  const none = await cni('CHECK', ns, conf(INJECTED));
  t.is(none.json?.code, 103, none.stdout);
  t.regex(none.json?.msg ?? '', /^no redirect rules in \S+ \(the pod's \d+ planned rules are all missing\)$/);
  t.is((await cni('ADD', ns, conf(INJECTED))).exitCode, 0);
  // one of our rules gone (the owner-tagged jump into ISTIO_OUTPUT), the rest still there
  execFileSync('ip', ['netns', 'exec', ns, 'iptables', '-t', 'nat', '-D', 'OUTPUT', '-m', 'comment', '--comment', 'mesh-cni/to-istio-output', '-j', 'ISTIO_OUTPUT']);
  const some = await cni('CHECK', ns, conf(INJECTED));
  t.is(some.json?.code, 103, some.stdout);
  t.regex(some.json?.msg ?? '', /are missing or differ from the pod's annotations/);
});

test('DEL removes the rules and succeeds twice; DEL after the netns is gone succeeds', async (t) => {
  const ns = newPodNetns(t);
  t.is((await cni('ADD', ns, conf(INJECTED))).exitCode, 0);
  t.is((await cni('DEL', ns, conf(INJECTED))).exitCode, 0);
  t.notRegex(rulesIn(ns), /15001|15006/);
  t.is((await cni('DEL', ns, conf(INJECTED))).exitCode, 0);
  t.is((await cni('DEL', 'mcni-never-existed', conf(INJECTED))).exitCode, 0);
});

for (const backend of ['iptables', 'nftables'] as const) {
  test(`ADD with backend ${backend} from the netconf`, async (t) => {
    const ns = newPodNetns(t);
    const r = await cni('ADD', ns, conf(INJECTED, { backend }));
    t.is(r.exitCode, 0, r.stdout);
    t.regex(await connectFromPod(ns), /accepted:15001/);
  });
}
