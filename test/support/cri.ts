/**
 * A real node for tests: containerd's CRI inside its own "node" network namespace, a conflist chaining the
 * real `bridge` + `host-local` plugins and our shim, a tiny image built here from /bin/busybox, and a CRI
 * client that calls what kubelet calls. See shared/recipes/real-node.md for the facts behind each choice.
 *
 * Everything lives under one temp dir and one node netns named after this process; `stop()` removes the
 * sandboxes (so our DEL runs), containerd and its shims, the pod netns, mounts, cgroups and files. A later
 * run sweeps what a crashed test process left (dirs and netns named after a PID that is gone).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { conflist, makeCniBinDir } from './cni-conf';
import { CriClient, type Sandbox } from './cri-client';
import { readJsonLines } from './json-lines';
import { sh } from './netns';
import { requireNodeDeps } from './node-deps';
import { cleanupNodeDir, NODE_PREFIX, sweepDeadNodes, type NodeRecord } from './node-sweep';
import { buildSandboxImage, SANDBOX_IMAGE } from './oci-image';
import { startService, waitUntil, type Service } from './service';
import { execShim, type ShimRun } from './shim';

let nodes = 0;

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

  /** The flags every agent started on this node shares: its dirs, socket and log, health on an ephemeral loopback port. */
  agentArgs(o: { kubeconfig: string; nodeName: string; stateDir: string; repairMode: string; socket?: string }): string[] {
    return [
      '--kubeconfig', o.kubeconfig,
      '--node-name', o.nodeName,
      '--cni-bin-dir', this.binDir,
      '--cni-conf-dir', this.confDir,
      '--host-cni-conf-dir', this.confDir,
      '--socket', o.socket ?? this.agentSocket,
      '--state-dir', o.stateDir,
      '--plugin-log-file', this.meshCniLog,
      '--health-port', '0',
      '--health-host', '127.0.0.1',
      '--repair-mode', o.repairMode,
    ];
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

  /**
   * The plugin types of the network containerd has loaded now (CRI Status, verbose: its `cniconfig`).
   * containerd reloads the conflist on its own schedule after a file change, so a test that needs a new
   * chain in effect waits for it here, as kubelet's pods would simply get the old chain until then.
   */
  async loadedPluginTypes(): Promise<string[]> {
    const r = await this.client.call<{ info: Record<string, string> }>('Status', { verbose: true }, 5_000);
    const cni = r.info?.cniconfig ? JSON.parse(r.info.cniconfig) : {};
    const networks: Array<{ Config?: { Plugins?: Array<{ Network?: { type?: string } }> } }> = cni.Networks ?? [];
    return networks.flatMap((n) => (n.Config?.Plugins ?? []).map((p) => p.Network?.type ?? ''));
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
  invokeShim(command: string, options: { containerId: string; netnsPath: string; args?: string; netconf: Record<string, unknown>; env?: Record<string, string> }): Promise<ShimRun> {
    const env = {
      MESH_CNI_AGENT_SOCKET: path.join(this.dir, 'no-agent.sock'),
      CNI_COMMAND: command,
      CNI_CONTAINERID: options.containerId,
      CNI_NETNS: options.netnsPath,
      CNI_IFNAME: 'eth0',
      CNI_PATH: this.binDir,
      CNI_ARGS: options.args ?? '',
      ...options.env,
    };
    return execShim(env, options.netconf, { program: path.join(this.binDir, 'mesh-cni'), netnsPath: this.netnsPath });
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
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${NODE_PREFIX}${process.pid}-${n}-`));
  const netns = `${NODE_PREFIX}${process.pid}-${n}`;
  const networkName = `mcni-${process.pid}-${n}`;
  const bridge = `mcb${randomBytes(4).toString('hex')}`;
  const socket = path.join(dir, 'containerd.sock');
  const cgroupParent = `/mesh-cni-test-${process.pid}-${n}`;
  const record: NodeRecord = { netns, networkName, cgroupParent, grpcAddress: socket };
  fs.writeFileSync(path.join(dir, 'node.json'), JSON.stringify(record));

  let containerd: Service | undefined;
  try {
    sh('ip', ['netns', 'add', netns]);
    sh('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
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
      sh('ctr', ['-a', socket, '-n', 'k8s.io', 'images', 'import', image]);
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
