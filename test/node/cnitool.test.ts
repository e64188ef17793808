/**
 * ADD / CHECK / DEL through `cnitool` (libcni, built from Debian's source by scripts/setup-node-deps.sh) with
 * the real bridge + host-local chain and our shim, for each cniVersion a runtime may write in a conflist.
 * cnitool runs inside a "node" netns so the bridge never touches the host; the pod netns is the test's own.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { conflist, makeCniBinDir, POD_GATEWAY } from '../support/cni-conf';
import { CNITOOL, requireNodeDeps, SHIM } from '../support/node-deps';
import { netnsKeeper } from '../support/netns';
import { connect, listen } from '../support/traffic';

const STATUS = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });
const ANNOTATIONS = { 'sidecar.istio.io/status': STATUS };
const tag = `${process.pid}-${randomBytes(2).toString('hex')}`;
let dir = '';
let binDir = '';
const nodeNetns = `mcni-ct-${tag}-node`;
const netns = netnsKeeper();
const networks: string[] = [];
let attachments = 0;

test.before(() => {
  requireNodeDeps({ cnitool: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), `mcni-cnitool-${process.pid}-`));
  binDir = makeCniBinDir(path.join(dir, 'bin'));
  netns.add(nodeNetns);
});

test.after.always(() => {
  netns.removeAll();
  // libcni caches each attachment's result under /var/lib/cni/results/<network>-<container>-<ifname>
  const results = '/var/lib/cni/results';
  for (const f of fs.existsSync(results) ? fs.readdirSync(results) : []) {
    if (networks.some((n) => f.startsWith(`${n}-`))) fs.rmSync(path.join(results, f), { force: true });
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});


interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

function cnitool(command: 'add' | 'check' | 'del', network: string, confDir: string, podNetns: string): ToolResult {
  const r = spawnSync('nsenter', [`--net=/var/run/netns/${nodeNetns}`, '--', CNITOOL, command, network, podNetns], {
    encoding: 'utf8',
    timeout: 60_000,
    env: {
      PATH: process.env.PATH,
      CNI_PATH: binDir,
      NETCONFPATH: confDir,
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_INFRA_CONTAINER_ID=cnitool;K8S_POD_UID=uid-0',
      CAP_ARGS: JSON.stringify({ 'io.kubernetes.cri.pod-annotations': ANNOTATIONS }),
      MESH_CNI_AGENT_SOCKET: path.join(dir, 'no-agent.sock'),
    },
  });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** Our binary run directly as a runtime speaking CNI 1.1.0 would (Debian's libcni stops at 1.0.0). */
function shim(command: string, podNetns: string, netconf: Record<string, unknown>): ToolResult & { json: any } {
  const r = spawnSync('nsenter', [`--net=/var/run/netns/${nodeNetns}`, '--', SHIM], {
    input: JSON.stringify(netconf),
    encoding: 'utf8',
    timeout: 60_000,
    env: {
      PATH: process.env.PATH,
      CNI_COMMAND: command,
      CNI_CONTAINERID: 'shim-1-1-0',
      CNI_NETNS: podNetns,
      CNI_IFNAME: 'eth0',
      CNI_PATH: binDir,
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_INFRA_CONTAINER_ID=shim-1-1-0;K8S_POD_UID=uid-0',
      MESH_CNI_AGENT_SOCKET: path.join(dir, 'no-agent.sock'),
    },
  });
  let json: any;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = undefined;
  }
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '', json };
}

function iptablesIn(netnsPath: string): string {
  return spawnSync('nsenter', [`--net=${netnsPath}`, '--', 'iptables-save'], { encoding: 'utf8' }).stdout;
}

function setup(t: ExecutionContext, cniVersion: string, options: { onlyMeshCni?: boolean; podNetns?: string } = {}) {
  const id = `${++attachments}`;
  const network = `mcni-ct-${tag}-${id}`;
  networks.push(network);
  const confDir = path.join(dir, `conf-${id}`);
  fs.mkdirSync(confDir);
  const list = conflist({
    networkName: network,
    cniVersion,
    bridge: `mcbt${id}${randomBytes(2).toString('hex')}`,
    hostLocalDataDir: path.join(dir, `ipam-${id}`),
    meshCni: { log_file: path.join(dir, 'mesh-cni.log'), state_dir: path.join(dir, 'state'), capabilities: { 'io.kubernetes.cri.pod-annotations': true } },
  });
  if (options.onlyMeshCni) (list.plugins as unknown[]).splice(0, 1);
  fs.writeFileSync(path.join(confDir, `10-${network}.conflist`), JSON.stringify(list));
  const podNetns = options.podNetns ?? netns.add(`mcni-ct-${tag}-pod${id}`);
  t.teardown(() => {
    cnitool('del', network, confDir, podNetns);
  });
  return { network, confDir, podNetns };
}

const supportsCheck = (v: string) => v !== '0.3.1';

for (const cniVersion of ['0.3.1', '0.4.0', '1.0.0']) {
  test.serial(`cniVersion ${cniVersion}: ADD passes the bridge result through and redirects; ${supportsCheck(cniVersion) ? 'CHECK passes, then fails once the rules are gone; ' : ''}DEL twice`, async (t) => {
    const { network, confDir, podNetns } = setup(t, cniVersion);

    const add = cnitool('add', network, confDir, podNetns);
    t.is(add.code, 0, add.stdout + add.stderr);
    const result = JSON.parse(add.stdout);
    t.is(result.cniVersion, cniVersion, 'the result is in the conflist’s version');
    t.regex(JSON.stringify(result.ips), /10\.99\.0\.\d+\/24/, 'the IP host-local assigned, passed through by our plugin');
    t.true(iptablesIn(podNetns).includes(':ISTIO_OUTPUT'));

    await listen(t, podNetns, 'proxy', ['15001']);
    const landing = connect(podNetns, POD_GATEWAY, 80);
    t.is(landing.listener, 'proxy', JSON.stringify(landing));

    if (supportsCheck(cniVersion)) {
      const ok = cnitool('check', network, confDir, podNetns);
      t.is(ok.code, 0, ok.stdout + ok.stderr);
      spawnSync('nsenter', [`--net=${podNetns}`, '--', 'iptables', '-t', 'nat', '-F']);
      const broken = cnitool('check', network, confDir, podNetns);
      t.not(broken.code, 0);
      t.regex(broken.stdout + broken.stderr, /no redirect rules in \S+ \(the pod's \d+ planned rules are all missing\)/);
    } else {
      const check = cnitool('check', network, confDir, podNetns);
      t.not(check.code, 0, 'libcni refuses CHECK below 0.4.0');
      t.regex(check.stdout + check.stderr, /does not support the CHECK command/);
    }

    const del = cnitool('del', network, confDir, podNetns);
    t.is(del.code, 0, del.stdout + del.stderr);
    t.notRegex(iptablesIn(podNetns), /ISTIO_/);
    const again = cnitool('del', network, confDir, podNetns);
    t.is(again.code, 0, again.stdout + again.stderr);
  });
}

test.serial('cniVersion 1.1.0: ADD as a 1.1.0 runtime sends it (prevResult from the real bridge), CHECK and DEL through cnitool', async (t) => {
  // Debian's tools predate CNI 1.1.0: bridge 1.1.1 refuses the version and libcni 1.1.2 cannot parse a 1.1.0
  // result. Pinned here so the day they speak it, this test is rewritten to go through cnitool alone.
  const full = setup(t, '1.1.0');
  const refused = cnitool('add', full.network, full.confDir, full.podNetns);
  t.not(refused.code, 0);
  t.regex(refused.stdout + refused.stderr, /plugin type="bridge" failed \(add\): incompatible CNI versions/);

  // The interface from the real bridge at 1.0.0 (the result format 1.1.0 keeps), then our plugin at 1.1.0.
  const bridgeOnly = setup(t, '1.0.0', { podNetns: full.podNetns });
  const list = JSON.parse(fs.readFileSync(path.join(bridgeOnly.confDir, `10-${bridgeOnly.network}.conflist`), 'utf8'));
  list.plugins.splice(1, 1);
  fs.writeFileSync(path.join(bridgeOnly.confDir, `10-${bridgeOnly.network}.conflist`), JSON.stringify(list));
  const bridged = cnitool('add', bridgeOnly.network, bridgeOnly.confDir, full.podNetns);
  t.is(bridged.code, 0, bridged.stdout + bridged.stderr);
  const prevResult = { ...JSON.parse(bridged.stdout), cniVersion: '1.1.0' };

  const ours = setup(t, '1.1.0', { onlyMeshCni: true, podNetns: full.podNetns });
  const netconf = {
    cniVersion: '1.1.0',
    name: ours.network,
    type: 'mesh-cni',
    log_file: path.join(dir, 'mesh-cni.log'),
    state_dir: path.join(dir, 'state'),
    capabilities: { 'io.kubernetes.cri.pod-annotations': true },
    runtimeConfig: { 'io.kubernetes.cri.pod-annotations': ANNOTATIONS },
    prevResult,
  };
  const add = shim('ADD', full.podNetns, netconf);
  t.is(add.code, 0, add.stdout + add.stderr);
  t.deepEqual(add.json, prevResult, 'prevResult passed through unchanged, in 1.1.0');
  await listen(t, full.podNetns, 'proxy', ['15001']);
  t.is(connect(full.podNetns, POD_GATEWAY, 80).listener, 'proxy');

  const ok = cnitool('check', ours.network, ours.confDir, full.podNetns);
  t.is(ok.code, 0, ok.stdout + ok.stderr);
  spawnSync('nsenter', [`--net=${full.podNetns}`, '--', 'iptables', '-t', 'nat', '-F']);
  const broken = cnitool('check', ours.network, ours.confDir, full.podNetns);
  t.not(broken.code, 0);
  t.regex(broken.stdout + broken.stderr, /no redirect rules in \S+ \(the pod's \d+ planned rules are all missing\)/);
  const direct = shim('CHECK', full.podNetns, netconf);
  t.is(direct.json?.code, 103, direct.stdout);

  for (let i = 0; i < 2; i++) {
    const del = cnitool('del', ours.network, ours.confDir, full.podNetns);
    t.is(del.code, 0, del.stdout + del.stderr);
  }
  t.notRegex(iptablesIn(full.podNetns), /ISTIO_/);
  t.is(cnitool('del', bridgeOnly.network, bridgeOnly.confDir, full.podNetns).code, 0);
});
