/**
 * A real node for tests: containerd's CRI inside its own "node" network namespace, a conflist chaining the
 * real `bridge` + `host-local` plugins and our shim, a tiny image built here from /bin/busybox, and a CRI
 * client that calls what kubelet calls. See shared/recipes/real-node.md for the facts behind each choice.
 *
 * Everything lives under one temp dir and one node netns named after this process; `stop()` removes the
 * sandboxes (so our DEL runs), containerd and its shims, the pod netns, mounts, cgroups and files. A later
 * run sweeps what a crashed test process left (dirs and netns named after a PID that is gone).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { CNI_PLUGIN_DIR, CRI_PROTO, requireNodeDeps, SHIM } from './node-deps';
import { startService, waitUntil, type Service } from './service';
import type { ShimRun } from './shim';
import { readJsonLines } from './json-lines';

const PREFIX = 'mcni-node-';
export const SANDBOX_IMAGE = 'docker.io/mesh-cni/pause:test';
export const POD_SUBNET = '10.99.0.0/24';
export const POD_GATEWAY = '10.99.0.1';
let nodes = 0;

function run(program: string, args: string[], options: { input?: string | Buffer; allowFail?: boolean } = {}): string {
  const r = spawnSync(program, args, { input: options.input, encoding: 'utf8', timeout: 60_000 });
  if (!options.allowFail && (r.error || r.status !== 0)) {
    throw new Error(`${program} ${args.join(' ')} failed (${r.status ?? r.error?.message}): ${r.stderr}`);
  }
  return r.stdout ?? '';
}

// ---------------------------------------------------------------------------------------------------------
// Cleanup that must also work for a test process that died: everything is found from names and files.

function pidAlive(pid: number): boolean {
  return fs.existsSync(`/proc/${pid}`);
}

function mountsUnder(dir: string): string[] {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
  const points = mounts.map((l) => l.split(' ')[4]).filter((p): p is string => !!p && (p === dir || p.startsWith(`${dir}/`)));
  // deepest first
  return points.sort((a, b) => b.length - a.length);
}

function removeNetnsPath(p: string): void {
  if (!fs.existsSync(p)) return;
  spawnSync('umount', ['-l', p]);
  try {
    fs.unlinkSync(p);
  } catch {
    // already gone
  }
}

/** Removes a cgroup dir and its children in every v1 hierarchy (a dir still holding a process is left). */
export function removeCgroupTree(parent: string): void {
  let controllers: string[] = [];
  try {
    controllers = fs.readdirSync('/sys/fs/cgroup');
  } catch {
    return;
  }
  for (const c of controllers) {
    const dir = path.join('/sys/fs/cgroup', c, parent);
    if (!fs.existsSync(dir)) continue;
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(path.join(d, e.name));
      try {
        fs.rmdirSync(d);
      } catch {
        // a process is still in it; the reaper kills it, and the next sweep removes the dir
      }
    };
    walk(dir);
  }
}

/** What a node directory records so that anyone can clean it up later. */
interface NodeRecord {
  netns: string;
  networkName: string;
  cgroupParent: string;
  grpcAddress: string;
}

function cleanupNodeDir(dir: string): void {
  let record: NodeRecord | undefined;
  try {
    record = JSON.parse(fs.readFileSync(path.join(dir, 'node.json'), 'utf8')) as NodeRecord;
  } catch {
    record = undefined;
  }
  let sandboxes: Array<{ id: string; netns: string }> = [];
  try {
    sandboxes = fs
      .readFileSync(path.join(dir, 'sandboxes.list'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { id: string; netns: string });
  } catch {
    sandboxes = [];
  }
  for (const s of sandboxes) {
    if (s.netns) removeNetnsPath(s.netns);
    // containerd also attaches `lo` through a network of its own, cached like ours
    fs.rmSync(path.join('/var/lib/cni/results', `cni-loopback-${s.id}-lo`), { force: true });
    if (record) {
      // containerd 1.6 names a shim's socket after sha256(<grpc address>/<namespace>/<id>)
      const hash = createHash('sha256').update(path.join(record.grpcAddress, 'k8s.io', s.id)).digest('hex');
      fs.rmSync(path.join('/run/containerd/s', hash), { force: true });
    }
  }
  for (const m of mountsUnder(dir)) spawnSync('umount', ['-l', m]);
  if (record) {
    spawnSync('ip', ['netns', 'del', record.netns]);
    for (const f of fs.existsSync('/var/lib/cni/results') ? fs.readdirSync('/var/lib/cni/results') : []) {
      if (f.startsWith(`${record.networkName}-`)) fs.rmSync(path.join('/var/lib/cni/results', f), { force: true });
    }
    removeCgroupTree(record.cgroupParent);
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Removes what node instances of test processes that no longer exist left behind. */
export function sweepDeadNodes(): void {
  for (const entry of fs.readdirSync(os.tmpdir())) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(entry);
    if (m && !pidAlive(Number(m[1]))) cleanupNodeDir(path.join(os.tmpdir(), entry));
  }
  for (const name of fs.existsSync('/var/run/netns') ? fs.readdirSync('/var/run/netns') : []) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (m && !pidAlive(Number(m[1]))) spawnSync('ip', ['netns', 'del', name]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The image: an OCI layout built by hand around /bin/busybox, imported with ctr.

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function goArch(): string {
  return ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x' } as Record<string, string>)[process.arch] ?? process.arch;
}

/** Writes an OCI image archive whose only process is `busybox sleep`; returns its path. */
export function buildSandboxImage(dir: string, imageName = SANDBOX_IMAGE): string {
  const rootfs = path.join(dir, 'rootfs');
  fs.mkdirSync(path.join(rootfs, 'bin'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
  const layerTar = path.join(dir, 'layer.tar');
  run('tar', ['--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', rootfs, '-cf', layerTar, 'bin']);
  const layer = fs.readFileSync(layerTar);
  const layerGz = gzipSync(layer);
  const config = Buffer.from(
    JSON.stringify({
      architecture: goArch(),
      os: 'linux',
      config: { Entrypoint: ['/bin/busybox', 'sleep', '2147483647'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: [`sha256:${sha256(layer)}`] },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha256(config)}`, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha256(layerGz)}`, size: layerGz.length }],
    }),
  );
  const layout = path.join(dir, 'oci');
  const blobs = path.join(layout, 'blobs/sha256');
  fs.mkdirSync(blobs, { recursive: true });
  for (const blob of [config, manifest, layerGz]) fs.writeFileSync(path.join(blobs, sha256(blob)), blob);
  fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  fs.writeFileSync(
    path.join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: `sha256:${sha256(manifest)}`,
          size: manifest.length,
          platform: { architecture: goArch(), os: 'linux' },
          annotations: { 'io.containerd.image.name': imageName, 'org.opencontainers.image.ref.name': 'test' },
        },
      ],
    }),
  );
  const archive = path.join(dir, 'image.tar');
  run('tar', ['--owner=0', '--group=0', '--numeric-owner', '-C', layout, '-cf', archive, 'oci-layout', 'index.json', 'blobs']);
  fs.rmSync(rootfs, { recursive: true, force: true });
  fs.rmSync(layerTar, { force: true });
  return archive;
}

// ---------------------------------------------------------------------------------------------------------
// The conflist.

export interface ConflistOptions {
  networkName: string;
  cniVersion?: string;
  bridge: string;
  hostLocalDataDir: string;
  /** Our plugin's entry, merged over {type: 'mesh-cni'}; null: the primary CNI alone (the agent inserts us). */
  meshCni: Record<string, unknown> | null;
  subnet?: string;
  gateway?: string;
}

/** bridge (own name, gateway, no masquerade) + host-local + mesh-cni last, as the installer chains it. */
export function conflist(options: ConflistOptions): Record<string, unknown> {
  return {
    cniVersion: options.cniVersion ?? '1.0.0',
    name: options.networkName,
    plugins: [
      {
        type: 'bridge',
        bridge: options.bridge,
        isGateway: true,
        ipMasq: false,
        ipam: {
          type: 'host-local',
          dataDir: options.hostLocalDataDir,
          ranges: [[{ subnet: options.subnet ?? POD_SUBNET, gateway: options.gateway ?? POD_GATEWAY }]],
          routes: [{ dst: '0.0.0.0/0' }],
        },
      },
      ...(options.meshCni ? [{ type: 'mesh-cni', ...options.meshCni }] : []),
    ],
  };
}

/** A CNI bin dir holding the distribution's plugins and our shim (a symlink: the shim finds its engine
 * from its real path, build/../dist/src/cni/main.js). */
export function makeCniBinDir(dir: string, withShim = true): string {
  fs.mkdirSync(dir, { recursive: true });
  for (const plugin of fs.readdirSync(CNI_PLUGIN_DIR)) fs.symlinkSync(path.join(CNI_PLUGIN_DIR, plugin), path.join(dir, plugin));
  if (withShim) fs.symlinkSync(SHIM, path.join(dir, 'mesh-cni'));
  return dir;
}

// ---------------------------------------------------------------------------------------------------------
// The CRI client.

export interface Sandbox {
  id: string;
  uid: string;
  netnsPath: string;
  ip: string;
  status: any;
  info: any;
}

type Unary = (request: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, response: any) => void) => void;

export class CriClient {
  private readonly runtime: grpc.Client & Record<string, Unary>;

  constructor(socket: string) {
    const definition = protoLoader.loadSync(CRI_PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(definition) as any;
    const RuntimeService = pkg.runtime.v1alpha2.RuntimeService as grpc.ServiceClientConstructor;
    this.runtime = new RuntimeService(`unix:${socket}`, grpc.credentials.createInsecure()) as any;
  }

  call<T = any>(method: string, request: unknown, timeoutMs = 60_000): Promise<T> {
    return new Promise((resolve, reject) => {
      this.runtime[method]!.call(this.runtime, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, response) => {
        if (err) reject(Object.assign(new Error(`CRI ${method}: ${err.details || err.message}`), { code: err.code, details: err.details }));
        else resolve(response as T);
      });
    });
  }

  version(): Promise<any> {
    return this.call('Version', { version: 'v1alpha2' }, 2_000);
  }

  close(): void {
    this.runtime.close();
  }
}

// ---------------------------------------------------------------------------------------------------------
// The node.

export interface NodeOptions {
  /** Fields of our conflist entry (log_file and type are set here). */
  meshCni?: Record<string, unknown>;
  /** Declare the pod-annotations capability so containerd passes the annotations (default true). */
  annotationsCapability?: boolean;
  cniVersion?: string;
  /** Extra environment for containerd, which passes its environment on to the CNI plugins. */
  env?: Record<string, string>;
  /**
   * false: the node starts as before our agent came: a bridge + host-local conflist without our entry and a
   * bin dir without our shim (the agent installs both). Default true.
   */
  plugin?: boolean;
}

export interface PodSpec {
  name: string;
  namespace: string;
  uid?: string;
  annotations?: Record<string, string>;
  labels?: Record<string, string>;
}

/** What one run of our CNI binary answered (the same shape execShim gives). */
export type ShimResult = ShimRun;

/** CNI_ARGS as containerd 1.6 builds them for a pod. */
export function podCniArgs(namespace: string, name: string, sandboxId: string, uid: string): string {
  return `IgnoreUnknown=1;K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=${sandboxId};K8S_POD_UID=${uid}`;
}

export class CriNode {
  readonly client: CriClient;
  readonly podIds = new Set<string>();
  private sandboxCount = 0;

  constructor(
    readonly dir: string,
    readonly netns: string,
    readonly netnsPath: string,
    readonly networkName: string,
    readonly bridge: string,
    readonly socket: string,
    readonly binDir: string,
    readonly confDir: string,
    /** our plugin's JSON log, one line per request */
    readonly meshCniLog: string,
    readonly pluginConf: Record<string, unknown>,
    readonly cgroupParent: string,
    readonly cniVersion: string,
    private readonly containerd: Service,
  ) {
    this.client = new CriClient(socket);
  }

  /** Where the shims containerd runs look for the agent (nothing listens there unless a test starts an agent). */
  get agentSocket(): string {
    return path.join(this.dir, 'agent.sock');
  }

  containerdLog(lines = 40): string {
    return this.containerd.tail(lines);
  }

  /** The mesh-cni log lines written since `from` (a byte offset from meshCniLogSize()). */
  meshCniLogSince(from: number): Array<Record<string, any>> {
    return readJsonLines(this.meshCniLog, from);
  }

  meshCniLogSize(): number {
    try {
      return fs.statSync(this.meshCniLog).size;
    } catch {
      return 0;
    }
  }

  /** RunPodSandbox as kubelet sends it; returns the sandbox with the netns path and IP from its status. */
  async runPodSandbox(pod: PodSpec): Promise<Sandbox> {
    const uid = pod.uid ?? randomBytes(8).toString('hex');
    const n = ++this.sandboxCount;
    const logDir = path.join(this.dir, 'pod-logs', `${pod.namespace}_${pod.name}_${uid}`);
    fs.mkdirSync(logDir, { recursive: true });
    const config = {
      metadata: { name: pod.name, uid, namespace: pod.namespace, attempt: 0 },
      hostname: pod.name.slice(0, 63),
      log_directory: logDir,
      labels: pod.labels ?? {},
      annotations: pod.annotations ?? {},
      linux: {
        cgroup_parent: `${this.cgroupParent}/pod${n}`,
        security_context: { namespace_options: { network: 'POD', pid: 'POD', ipc: 'POD' } },
      },
    };
    const { pod_sandbox_id: id } = await this.client.call<{ pod_sandbox_id: string }>('RunPodSandbox', { config });
    this.podIds.add(id);
    const status = await this.podSandboxStatus(id);
    const sandbox = { id, uid, netnsPath: status.netnsPath, ip: status.status.network?.ip ?? '', status: status.status, info: status.info };
    fs.appendFileSync(path.join(this.dir, 'sandboxes.list'), `${JSON.stringify({ id, netns: sandbox.netnsPath })}\n`);
    return sandbox;
  }

  async podSandboxStatus(id: string): Promise<{ status: any; info: any; netnsPath: string }> {
    const r = await this.client.call<{ status: any; info: Record<string, string> }>('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
    const info = r.info?.info ? JSON.parse(r.info.info) : {};
    const namespaces: Array<{ type: string; path?: string }> = info.runtimeSpec?.linux?.namespaces ?? [];
    const netnsPath = namespaces.find((ns) => ns.type === 'network')?.path ?? '';
    return { status: r.status, info, netnsPath };
  }

  stopPodSandbox(id: string): Promise<unknown> {
    return this.client.call('StopPodSandbox', { pod_sandbox_id: id });
  }

  async removePodSandbox(id: string): Promise<unknown> {
    const r = await this.client.call('RemovePodSandbox', { pod_sandbox_id: id });
    this.podIds.delete(id);
    return r;
  }

  async listPodSandbox(): Promise<any[]> {
    const r = await this.client.call<{ items: any[] }>('ListPodSandbox', { filter: null });
    return r.items ?? [];
  }

  /** Removes every sandbox (our DEL runs), containerd and its shims, the netns, mounts and files. */
  async stop(): Promise<void> {
    try {
      if (!this.containerdExited()) {
        for (const item of await this.listPodSandbox().catch(() => [])) {
          await this.stopPodSandbox(item.id).catch(() => undefined);
          await this.removePodSandbox(item.id).catch(() => undefined);
        }
      }
    } finally {
      this.client.close();
      await this.containerd.stop();
      cleanupNodeDir(this.dir);
    }
  }

  /** Our conflist entry as the runtime hands it to the plugin (name and cniVersion from the list). */
  pluginNetconf(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { cniVersion: this.cniVersion, name: this.networkName, type: 'mesh-cni', ...this.pluginConf, ...extra };
  }

  /** The chain's result that libcni cached for a sandbox (what a runtime passes as prevResult to CHECK). */
  cachedResult(sandboxId: string): Record<string, unknown> {
    const file = path.join('/var/lib/cni/results', `${this.networkName}-${sandboxId}-eth0`);
    return (JSON.parse(fs.readFileSync(file, 'utf8')) as { result: Record<string, unknown> }).result;
  }

  /** Runs our CNI binary exactly as a runtime does: from the node netns, CNI_* environment, netconf on stdin. */
  invokeShim(command: string, options: { containerId: string; netnsPath: string; args?: string; netconf: Record<string, unknown>; env?: Record<string, string> }): ShimResult {
    const r = spawnSync('nsenter', [`--net=${this.netnsPath}`, '--', path.join(this.binDir, 'mesh-cni')], {
      input: JSON.stringify(options.netconf),
      encoding: 'utf8',
      timeout: 60_000,
      env: {
        PATH: process.env.PATH,
        MESH_CNI_AGENT_SOCKET: path.join(this.dir, 'no-agent.sock'),
        CNI_COMMAND: command,
        CNI_CONTAINERID: options.containerId,
        CNI_NETNS: options.netnsPath,
        CNI_IFNAME: 'eth0',
        CNI_PATH: this.binDir,
        CNI_ARGS: options.args ?? '',
        ...options.env,
      },
    });
    let json: any;
    try {
      json = r.stdout ? JSON.parse(r.stdout) : undefined;
    } catch {
      json = undefined;
    }
    return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '', json };
  }

  containerdExited(): boolean {
    return this.containerd.exited();
  }
}

function containerdConfig(dir: string, binDir: string, confDir: string, socket: string): string {
  const q = (s: string) => JSON.stringify(s);
  return `version = 2
root = ${q(path.join(dir, 'root'))}
state = ${q(path.join(dir, 'state'))}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = ${q(socket)}

[ttrpc]
  address = ${q(`${socket}.ttrpc`)}

[plugins."io.containerd.internal.v1.opt"]
  path = ${q(path.join(dir, 'opt'))}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ${q(SANDBOX_IMAGE)}
  # without it runc fails ("can't get final child's PID from pipe: EOF"): no CAP_SYS_RESOURCE here
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  # runc's state beside ours rather than in /run/containerd/runc
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = ${q(path.join(dir, 'runc'))}

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = ${q(binDir)}
    conf_dir = ${q(confDir)}
    max_conf_num = 1
`;
}

/**
 * Starts a node: netns, conflist (written before containerd starts: a file added later was not always
 * noticed), containerd inside the netns, the image imported. Call `stop()` in test.after.always.
 */
export async function startNode(options: NodeOptions = {}): Promise<CriNode> {
  requireNodeDeps({ containerd: true });
  if (nodes === 0) sweepDeadNodes();
  const n = ++nodes;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${PREFIX}${process.pid}-${n}-`));
  const netns = `${PREFIX}${process.pid}-${n}`;
  const networkName = `mcni-${process.pid}-${n}`;
  const bridge = `mcb${randomBytes(4).toString('hex')}`;
  const socket = path.join(dir, 'containerd.sock');
  const cgroupParent = `/mesh-cni-test-${process.pid}-${n}`;
  const record: NodeRecord = { netns, networkName, cgroupParent, grpcAddress: socket };
  fs.writeFileSync(path.join(dir, 'node.json'), JSON.stringify(record));

  let containerd: Service | undefined;
  try {
    run('ip', ['netns', 'add', netns]);
    run('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
    const withPlugin = options.plugin !== false;
    const binDir = makeCniBinDir(path.join(dir, 'cni-bin'), withPlugin);
    const confDir = path.join(dir, 'cni-conf');
    fs.mkdirSync(confDir);
    const meshCniLog = path.join(dir, 'mesh-cni.log');
    const pluginConf: Record<string, unknown> = {
      log_file: meshCniLog,
      state_dir: path.join(dir, 'mesh-cni-state'),
      ...(options.annotationsCapability === false ? {} : { capabilities: { 'io.kubernetes.cri.pod-annotations': true } }),
      ...options.meshCni,
    };
    const list = conflist({ networkName, cniVersion: options.cniVersion, bridge, hostLocalDataDir: path.join(dir, 'ipam'), meshCni: withPlugin ? pluginConf : null });
    fs.writeFileSync(path.join(confDir, withPlugin ? '10-mesh-cni-test.conflist' : '10-bridge.conflist'), JSON.stringify(list, null, 2));
    const configFile = path.join(dir, 'containerd.toml');
    fs.writeFileSync(configFile, containerdConfig(dir, binDir, confDir, socket));

    containerd = startService('containerd', ['containerd', '--config', configFile], {
      netnsPath: `/var/run/netns/${netns}`,
      logFile: path.join(dir, 'containerd.log'),
      env: {
        PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        // never the machine's real agent: the shim runs our engine standalone unless a test starts an agent
        // on this node's own socket (CriNode.agentSocket)
        MESH_CNI_AGENT_SOCKET: path.join(dir, 'agent.sock'),
        ...options.env,
      },
    });
    const node = new CriNode(dir, netns, `/var/run/netns/${netns}`, networkName, bridge, socket, binDir, confDir, meshCniLog, pluginConf, cgroupParent, list.cniVersion as string, containerd);
    try {
      await waitUntil(containerd, 'CRI answering', 30_000, async () => {
        if (!fs.existsSync(socket)) return false;
        await node.client.version();
        return true;
      });
      const image = buildSandboxImage(path.join(dir, 'image'));
      run('ctr', ['-a', socket, '-n', 'k8s.io', 'images', 'import', image]);
      return node;
    } catch (err) {
      await node.stop();
      throw err;
    }
  } catch (err) {
    if (containerd) await containerd.stop();
    cleanupNodeDir(dir);
    throw err;
  }
}
