/**
 * Fault injection: the programs we depend on are missing or failing, and the state directory is read-only
 * or full. ADD must fail closed (a clear error naming the program, no rules) or succeed fully; the agent
 * stays up.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { showRedirect } from '../../src/redirect/engine';
import { NftablesBackend, nftProgram } from '../../src/redirect/nftables/backend';
import { buildPlan } from '../../src/redirect/plan';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { startAgentProcess } from '../support/agent';
import { execShim } from '../support/shim';
import { testTempDir } from '../support/tmp';
import { requireKernelTools, requireNft } from '../support/require';
import { createNetns, netnsPath, tryInNetns } from '../support/netns';
import { INJECTED } from '../cni/helpers';

function netconf(dir: string, extra: Record<string, unknown> = {}) {
  return { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables-nft', log_file: path.join(dir, 'cni.log'), state_dir: dir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED }, ...extra };
}

function env(netns: string, dir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: 'fault0',
    CNI_NETNS: netnsPath(netns),
    CNI_IFNAME: 'eth0',
    CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart;K8S_POD_UID=u1',
    MESH_CNI_AGENT_SOCKET: path.join(dir, 'no-agent.sock'),
    MESH_CNI_LOG_FILE: path.join(dir, 'cni.log'),
    ...extra,
  };
}

async function ourRules(netns: string): Promise<number> {
  const [ipt, nft] = await Promise.all([showRedirect({ netns: netnsPath(netns), backend: 'iptables-nft' }), showRedirect({ netns: netnsPath(netns), backend: 'nftables' })]);
  return ipt.rules.length + nft.rules.length;
}

/** A directory holding stand-ins for the iptables programs, first on PATH: `fail` ones exit 2, `missing` is empty. */
function fakeBin(t: ExecutionContext, dir: string, kind: 'fail' | 'missing'): string {
  const bin = path.join(dir, `bin-${kind}`);
  fs.mkdirSync(bin);
  // `ip` stays reachable: only the iptables programs are missing or failing.
  const ip = ['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip', '/bin/ip'].find((p) => fs.existsSync(p))!;
  fs.symlinkSync(ip, path.join(bin, 'ip'));
  if (kind === 'fail') {
    for (const name of ['iptables-nft-restore', 'ip6tables-nft-restore']) {
      fs.writeFileSync(path.join(bin, name), '#!/bin/sh\ncat >/dev/null\necho "iptables-restore: line 3 failed (injected fault)" >&2\nexit 2\n', { mode: 0o755 });
    }
  }
  t.teardown(() => fs.rmSync(bin, { recursive: true, force: true }));
  // Without the system dirs the real iptables is out of reach; node and ip are found by absolute path below.
  return kind === 'fail' ? `${bin}:${process.env.PATH}` : `${bin}:${path.dirname(process.execPath)}`;
}

for (const kind of ['missing', 'fail'] as const) {
  test.serial(`fault iptables-${kind}: ADD fails closed naming the program, no rules`, async (t) => {
    requireKernelTools(t);
    const dir = testTempDir(t, `fault-ipt-${kind}`);
    const ns = createNetns(t, 'ipt');
    const r = await execShim({ ...env(ns, dir), PATH: fakeBin(t, dir, kind) }, netconf(dir));
    t.is(r.code, 1, r.stdout);
    t.is(r.json.code, 100, r.stdout);
    t.regex(r.json.msg, /iptables-nft-restore/);
    if (kind === 'missing') t.regex(r.json.msg + (r.json.details ?? ''), /not found|install the iptables package/);
    else t.regex(r.json.msg + (r.json.details ?? ''), /injected fault/);
    t.is(await ourRules(ns), 0);
    t.log(`fault iptables-${kind}: 1 trial, code ${r.json.code}, 0 partial`);
  });
}

for (const kind of ['missing', 'fail'] as const) {
  test.serial(`fault nft-${kind}: the nftables backend fails closed naming the program, no table`, async (t) => {
    requireKernelTools(t);
    requireNft(t);
    const dir = testTempDir(t, `fault-nft-${kind}`);
    const ns = createNetns(t, 'nft');
    const fake = path.join(dir, 'nft');
    if (kind === 'fail') fs.writeFileSync(fake, '#!/bin/sh\ncat >/dev/null\necho "Error: injected fault" >&2\nexit 1\n', { mode: 0o755 });
    const backend = new NftablesBackend({ nft: fake });
    const err = await t.throwsAsync(backend.apply(netnsPath(ns), buildPlan(redirectConfigFromAnnotations({})), ['ipv4', 'ipv6']));
    t.true(err!.message.includes(fake), err!.message);
    t.is(await ourRules(ns), 0);
    t.notRegex(tryInNetns(ns, nftProgram(), ['list', 'tables']).stdout, /mesh-cni/);
  });
}

test.serial('fault state-readonly: a read-only state directory leaves ADD fully successful, through the agent, which stays up', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'fault-ro');
  const state = path.join(dir, 'state');
  fs.mkdirSync(state);
  spawnSync('mount', ['--bind', state, state]);
  spawnSync('mount', ['-o', 'remount,bind,ro', state]);
  t.teardown(() => void spawnSync('umount', [state]));
  t.throws(() => fs.writeFileSync(path.join(state, 'probe'), ''), undefined, 'the state dir must really be read-only');
  const socket = path.join(dir, 'agent.sock');
  const agent = await startAgentProcess(['--health-port', '0', '--health-host', '127.0.0.1', '--no-kubernetes', '--no-install', '--socket', socket, '--state-dir', state], path.join(dir, 'agent.log'));
  t.teardown(() => agent.kill());
  const ns = createNetns(t, 'ro');
  const r = await execShim({ ...env(ns, dir), MESH_CNI_AGENT_SOCKET: socket }, netconf(dir, { state_dir: state }));
  t.is(r.code, 0, r.stdout + r.stderr);
  t.true((await ourRules(ns)) > 0, 'fully programmed');
  // The agent writes its log line in the background (never on its event loop): give it a moment.
  const logged = () => fs.existsSync(path.join(dir, 'cni.log')) && /attachment state not recorded/.test(fs.readFileSync(path.join(dir, 'cni.log'), 'utf8'));
  for (let i = 0; i < 100 && !logged(); i++) await new Promise((r) => setTimeout(r, 20));
  t.true(logged(), 'the log line names the state that was not recorded');
  t.is((await fetch(`http://127.0.0.1:${agent.healthPort}/healthz`)).status, 200, 'the agent stays up');
  t.log('fault state-readonly: 1 trial, ADD succeeded fully, 0 partial, agent healthy');
});

test.serial('fault state-full: a full disk under the state directory leaves ADD fully successful', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'fault-full');
  const state = path.join(dir, 'state');
  fs.mkdirSync(state);
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8k', 'tmpfs', state]);
  if (mounted.status !== 0) return t.fail(`cannot mount a tmpfs: ${mounted.stderr}`);
  t.teardown(() => void spawnSync('umount', [state]));
  fs.mkdirSync(path.join(state, 'attachments'));
  try {
    fs.writeFileSync(path.join(state, 'fill'), Buffer.alloc(64 * 1024));
  } catch {
    // ENOSPC: the disk is now full, which is the point
  }
  const ns = createNetns(t, 'full');
  const r = await execShim(env(ns, dir), netconf(dir, { state_dir: state }));
  t.is(r.code, 0, r.stdout + r.stderr);
  t.true((await ourRules(ns)) > 0);
  t.regex(fs.readFileSync(path.join(dir, 'cni.log'), 'utf8'), /attachment state not recorded/);
  t.log('fault state-full: 1 trial, ADD succeeded fully, 0 partial');
});
