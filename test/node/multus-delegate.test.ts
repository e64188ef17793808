/**
 * Standalone mode (chained: false) run the way Multus runs an additional network. The installer writes our own
 * file into a temp "Multus conf dir" (mesh-cni.conf, OpenShift's shape) and installs the shim and engine into a
 * temp bin dir beside the real bridge and host-local. The primary network (bridge + host-local, without us) is
 * added first by cnitool; then our network is invoked for the same netns with the same CNI_ARGS:
 *  - by cnitool with the network name istio-cni, which libcni resolves to our file by the name inside it, as
 *    Multus resolves a NetworkAttachmentDefinition without spec.config; libcni's AddNetwork passes no
 *    prevResult to a delegate, and neither does Multus (pkg/types/conf.go: only portMappings, bandwidth, ips,
 *    mac, ... as capability args), so the pod cannot come from runtime annotations;
 *  - and directly with the primary's result as prevResult, as the issue asks, which must come back unchanged.
 * The pod comes from a real kube-apiserver through the kubeconfig in our entry (no agent: the shim falls back
 * to the installed engine). Real TCP from the meshed pod lands on the sidecar's 15001; DEL removes every rule;
 * a pod without a sidecar is left alone. Everything runs in test namespaces; the temp dirs, netns, libcni's
 * cached results of our networks and the apiserver are removed at the end.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { conflist, makeCniBinDir, POD_GATEWAY } from '../support/cni-conf';
import { CNITOOL, requireNodeDeps, SHIM } from '../support/node-deps';
import { REPO_ROOT } from '../support/paths';
import { netnsKeeper } from '../support/netns';
import { connect, listen } from '../support/traffic';
import { forwardIntoNetns, startKube, type Forward, type Kube } from '../support/kube';
import { install, pluginEntry, uninstall, type InstallOptions } from '../../src/installer';
import { STANDALONE_NETWORK_NAME } from '../../src/installer/standalone-config';

const STATUS = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });
const tag = `${process.pid}-${randomBytes(2).toString('hex')}`;
const PRIMARY = `mcni-md-${tag}`;
const RESULTS = '/var/lib/cni/results';
/** The self-contained engine directory the installer ships (scripts/build-engine.js). */
const ENGINE = path.join(REPO_ROOT, 'build', 'engine');
const netns = netnsKeeper();
let dir = '';
let kube: Kube | undefined;
let forward: Forward | undefined;
let pods = 0;
/** The pods' UIDs: the plugin checks the sandbox's K8S_POD_UID against the API's pod. */
const uids = new Map<string, string>();
let options: InstallOptions | undefined;
let resultsBefore = new Set<string>();
const nodeNetns = `mcni-md-${tag}-node`;

test.before(async () => {
  requireNodeDeps({ cnitool: true, kube: true });
  if (!fs.existsSync(path.join(ENGINE, 'mesh-cni.js'))) throw new Error(`${ENGINE} is missing: npm run build`);
  resultsBefore = new Set(fs.existsSync(RESULTS) ? fs.readdirSync(RESULTS) : []);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), `mcni-multus-${process.pid}-`));
  netns.add(nodeNetns);
  kube = await startKube();
  // The plugin runs in the node netns: the apiserver's loopback port is forwarded there (two socat over a UNIX socket).
  forward = await forwardIntoNetns(`/var/run/netns/${nodeNetns}`, kube.port, dir);
  const cart = await kube.createPod({ namespace: 'shop', name: 'cart-0', annotations: { 'sidecar.istio.io/status': STATUS }, containers: ['cart', 'istio-proxy'], initContainers: ['istio-validation'] });
  const legacy = await kube.createPod({ namespace: 'shop', name: 'legacy-0' });
  uids.set('cart-0', cart.metadata!.uid!);
  uids.set('legacy-0', legacy.metadata!.uid!);
  const binDir = makeCniBinDir(path.join(dir, 'bin'), false);
  options = {
    cniBinDir: binDir,
    cniConfDir: path.join(dir, 'etc/cni/multus/net.d'),
    cniConfFileName: 'mesh-cni.conf',
    chained: false,
    shimPath: SHIM,
    enginePath: ENGINE,
    pluginConfig: pluginEntry({ backend: 'iptables', logFile: path.join(dir, 'mesh-cni.log'), stateDir: path.join(dir, 'state'), kubeconfig: kube.writeKubeconfig(path.join(dir, 'kubeconfig')) }),
    stateDir: path.join(dir, 'var/run/mesh-cni'),
  };
  await install(options);
  const primaryDir = path.join(dir, 'etc/cni/net.d');
  fs.mkdirSync(primaryDir, { recursive: true });
  fs.writeFileSync(
    path.join(primaryDir, `10-${PRIMARY}.conflist`),
    JSON.stringify(conflist({ networkName: PRIMARY, bridge: `mcmd${randomBytes(2).toString('hex')}`, hostLocalDataDir: path.join(dir, 'ipam'), meshCni: null })),
  );
});

test.after.always(async () => {
  if (options) await uninstall(options).catch(() => undefined);
  if (forward) await forward.stop();
  if (kube) await kube.stop();
  netns.removeAll();
  // libcni caches each attachment's result under /var/lib/cni/results/<network>-<container>-<ifname>: ours only.
  for (const f of fs.existsSync(RESULTS) ? fs.readdirSync(RESULTS) : []) {
    if (!resultsBefore.has(f) && (f.startsWith(`${PRIMARY}-`) || f.startsWith(`${STANDALONE_NETWORK_NAME}-`))) fs.rmSync(path.join(RESULTS, f), { force: true });
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});


const podArgs = (name: string, id: string) => `IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=${id};K8S_POD_UID=${uids.get(name)}`;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** cnitool in the node netns: the network named is looked up in confDir by the name inside each file. */
function cnitool(command: 'add' | 'del', network: string, confDir: string, podNetns: string, cniArgs: string, ifName: string): Run {
  const r = spawnSync('nsenter', [`--net=/var/run/netns/${nodeNetns}`, '--', CNITOOL, command, network, podNetns], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { PATH: process.env.PATH, CNI_PATH: options!.cniBinDir, NETCONFPATH: confDir, CNI_ARGS: cniArgs, CNI_IFNAME: ifName, MESH_CNI_AGENT_SOCKET: path.join(dir, 'no-agent.sock') },
  });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** Our installed plugin run directly, as a delegating plugin does: CNI_* env, the netconf on stdin. */
function delegate(command: 'ADD' | 'DEL', netconf: Record<string, unknown>, podNetns: string, containerId: string, cniArgs: string): Run {
  const r = spawnSync('nsenter', [`--net=/var/run/netns/${nodeNetns}`, '--', path.join(options!.cniBinDir, 'mesh-cni')], {
    input: JSON.stringify(netconf),
    encoding: 'utf8',
    timeout: 60_000,
    cwd: '/',
    env: {
      PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
      CNI_COMMAND: command,
      CNI_CONTAINERID: containerId,
      CNI_NETNS: podNetns,
      CNI_IFNAME: 'net1',
      CNI_PATH: options!.cniBinDir,
      CNI_ARGS: cniArgs,
      MESH_CNI_AGENT_SOCKET: path.join(dir, 'no-agent.sock'),
    },
  });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

const rulesIn = (podNetns: string) => spawnSync('nsenter', [`--net=${podNetns}`, '--', 'iptables-save'], { encoding: 'utf8' }).stdout;
const primaryDir = () => path.join(dir, 'etc/cni/net.d');

/** The primary network for a new pod netns, DEL'd at the end of the test. */
function primaryAdd(t: ExecutionContext, pod: string): { podNetns: string; cniArgs: string; result: any } {
  const podNetns = netns.add(`mcni-md-${tag}-p${++pods}`);
  const cniArgs = podArgs(pod, `sandbox-${pod}`);
  const add = cnitool('add', PRIMARY, primaryDir(), podNetns, cniArgs, 'eth0');
  if (add.code !== 0) throw new Error(`primary ADD: ${add.stdout}${add.stderr}`);
  t.teardown(() => void cnitool('del', PRIMARY, primaryDir(), podNetns, cniArgs, 'eth0'));
  return { podNetns, cniArgs, result: JSON.parse(add.stdout) };
}

test.serial('the installed standalone file holds only mesh-cni, named istio-cni, in the Multus conf dir', (t) => {
  const files = fs.readdirSync(options!.cniConfDir).filter((f) => /\.(conf|conflist|json)$/.test(f));
  t.deepEqual(files, ['mesh-cni.conf']);
  const conf = JSON.parse(fs.readFileSync(path.join(options!.cniConfDir, 'mesh-cni.conf'), 'utf8'));
  t.like(conf, { name: STANDALONE_NETWORK_NAME, type: 'mesh-cni', backend: 'iptables' });
});

test.serial('as Multus delegates (libcni by network name, same CNI_ARGS, after the primary): the meshed pod is redirected, DEL removes the rules', async (t) => {
  const { podNetns, cniArgs, result } = primaryAdd(t, 'cart-0');
  t.regex(JSON.stringify(result.ips), /10\.99\.0\.\d+\/24/, 'the primary gave the pod its address');
  t.false(rulesIn(podNetns).includes('ISTIO_OUTPUT'), 'no rules from the primary');

  const add = cnitool('add', STANDALONE_NETWORK_NAME, options!.cniConfDir, podNetns, cniArgs, 'net1');
  t.is(add.code, 0, add.stdout + add.stderr);
  t.teardown(() => void cnitool('del', STANDALONE_NETWORK_NAME, options!.cniConfDir, podNetns, cniArgs, 'net1'));
  t.true(rulesIn(podNetns).includes(':ISTIO_OUTPUT'), rulesIn(podNetns));

  await listen(t, podNetns, 'proxy', ['15001']);
  const landing = connect(podNetns, POD_GATEWAY, 80);
  t.is(landing.listener, 'proxy', JSON.stringify(landing));
  t.is(landing.port, 15001);

  const del = cnitool('del', STANDALONE_NETWORK_NAME, options!.cniConfDir, podNetns, cniArgs, 'net1');
  t.is(del.code, 0, del.stdout + del.stderr);
  t.false(rulesIn(podNetns).includes('ISTIO'), rulesIn(podNetns));
  const log = fs.readFileSync(path.join(dir, 'mesh-cni.log'), 'utf8');
  t.regex(log, /cart-0/, 'the request log names the pod');
});

test.serial("with the primary's result as prevResult: it comes back unchanged, the pod is redirected, DEL removes the rules", async (t) => {
  const { podNetns, cniArgs, result } = primaryAdd(t, 'cart-0');
  const conf = JSON.parse(fs.readFileSync(path.join(options!.cniConfDir, 'mesh-cni.conf'), 'utf8'));
  const add = delegate('ADD', { ...conf, prevResult: result }, podNetns, 'sandbox-cart-0', cniArgs);
  t.teardown(() => void delegate('DEL', conf, podNetns, 'sandbox-cart-0', cniArgs));
  t.is(add.code, 0, add.stdout + add.stderr);
  const out = JSON.parse(add.stdout);
  t.deepEqual(out.ips, result.ips, "the primary's addresses pass through");
  t.deepEqual(out.interfaces, result.interfaces);

  await listen(t, podNetns, 'proxy', ['15001']);
  t.is(connect(podNetns, POD_GATEWAY, 80).listener, 'proxy');

  const del = delegate('DEL', conf, podNetns, 'sandbox-cart-0', cniArgs);
  t.is(del.code, 0, del.stdout + del.stderr);
  t.false(rulesIn(podNetns).includes('ISTIO'), rulesIn(podNetns));
});

test.serial('a pod without a sidecar that references the network is left alone', (t) => {
  const { podNetns, cniArgs } = primaryAdd(t, 'legacy-0');
  const add = cnitool('add', STANDALONE_NETWORK_NAME, options!.cniConfDir, podNetns, cniArgs, 'net1');
  t.teardown(() => void cnitool('del', STANDALONE_NETWORK_NAME, options!.cniConfDir, podNetns, cniArgs, 'net1'));
  t.is(add.code, 0, add.stdout + add.stderr);
  t.false(rulesIn(podNetns).includes('ISTIO'));
});
