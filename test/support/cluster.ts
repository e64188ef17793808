/**
 * A real one-node Kubernetes cluster for the cluster suite (test/cluster/): etcd, kube-apiserver (Node,RBAC,
 * NodeRestriction, an audit log of the agent's service account, a real CA), kube-controller-manager,
 * kube-scheduler, containerd 1.6, kubelet and kube-proxy, all built or installed by
 * scripts/setup-node-deps.sh, running the DaemonSet from install/ with the image built from our Dockerfile
 * (scripts/build-cluster-image.sh). See shared/recipes/real-cluster.md for the facts behind each flag.
 *
 * Isolation: everything runs in one network namespace (the node's: node IP, pod bridge, kube-proxy's rules)
 * and one private mount namespace held by test/support/cluster-keeper.py (private /run and /var/log,
 * overlayfs over /etc, /opt and /var/lib, the sysctls kubelet rewrites shadowed). So /etc/cni/net.d,
 * /opt/cni/bin, /var/run/mesh-cni and /run/containerd/containerd.sock are the standard paths inside and the
 * host's are never written. The host reaches inside through /proc/<keeper>/root.
 *
 * Every daemon runs under test/support/reaper.py (service.ts) and is stopped by PID; stragglers (pod
 * processes, shims) are found by the node's and the pods' netns inodes in /proc/PID/ns/net, never by name.
 * A later run removes what a test process that died left (dirs and netns named after a PID that is gone).
 */
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { removeCgroupTree } from './node-sweep';
import { buildSandboxImage } from './oci-image';
import { auditEventsIn, type AuditEvent } from './kube';
import { NODE_CACHE, SETUP_HINT } from './node-deps';
import { REPO_ROOT } from './paths';
import { startService, waitUntil, type Service } from './service';

const PREFIX = 'mcni-cluster-';
const SUPPORT_DIR = path.resolve(__dirname, '../../../test/support');
const KEEPER = path.join(SUPPORT_DIR, 'cluster-keeper.py');
const BIN = path.join(NODE_CACHE, 'bin');
export const IMAGE_SCRIPT = path.join(REPO_ROOT, 'scripts/build-cluster-image.sh');

export const NODE_NAME = 'mcni-node';
export const NODE_IP = '10.98.0.10';
export const POD_SUBNET = '10.244.0.0/24';
export const SERVICE_RANGE = '10.96.0.0/24';
export const KUBERNETES_SERVICE_IP = '10.96.0.1';
export const PAUSE_IMAGE = 'docker.io/mesh-cni/pause:test';
/** busybox as an image: containers run `/bin/busybox APPLET ...` */
export const APP_IMAGE = 'docker.io/mesh-cni/busybox:test';
export const AGENT_IMAGE = 'docker.io/library/mesh-cni:0.1.0';
export const AGENT_SA = 'system:serviceaccount:mesh-cni-system:mesh-cni';
/** The primary CNI's config as a node would have it before mesh-cni is installed. */
export const PRIMARY_CONFLIST = '10-bridge.conflist';

/** Where a node keeps its CNI config and plugins and where its runtime listens: what a distribution decides. */
export interface NodeLayout {
  name: string;
  cniConfDir: string;
  cniBinDir: string;
  criSocket: string;
}

/** Upstream Kubernetes with containerd. */
export const STANDARD_LAYOUT: NodeLayout = { name: 'standard', cniConfDir: '/etc/cni/net.d', cniBinDir: '/opt/cni/bin', criSocket: '/run/containerd/containerd.sock' };

/**
 * k3s's: its embedded containerd is configured with these CNI dirs and listens on this socket (k3s's own
 * defaults, written here from k3s, not from any chart's profile, so a profile that gets them wrong fails).
 */
export const K3S_LAYOUT: NodeLayout = {
  name: 'k3s',
  cniConfDir: '/var/lib/rancher/k3s/agent/etc/cni/net.d',
  cniBinDir: '/var/lib/rancher/k3s/data/cni',
  criSocket: '/run/k3s/containerd/containerd.sock',
};
const COMPONENTS = ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubelet', 'kube-proxy'];

export interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

function result(r: SpawnSyncReturns<string>): Run {
  return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? r.error.message : '') };
}

function run(program: string, args: string[], options: { input?: string; timeoutMs?: number } = {}): string {
  const r = spawnSync(program, args, { input: options.input, encoding: 'utf8', timeout: options.timeoutMs ?? 60_000 });
  if (r.error || r.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${r.status ?? r.error?.message}): ${r.stderr}`);
  return r.stdout;
}

function onPath(program: string): boolean {
  return spawnSync('sh', ['-c', 'command -v "$1"', 'sh', program]).status === 0;
}

/** Fails with one message naming every missing program, its package, and the script that provides it. */
export function requireClusterDeps(): void {
  if (process.getuid?.() !== 0) throw new Error('the cluster suite needs root (namespaces, mounts, containerd, kubelet)');
  const missing: string[] = [];
  for (const c of COMPONENTS) if (!fs.existsSync(path.join(BIN, c))) missing.push(`${path.join(BIN, c)} (built from Debian's kubernetes source)`);
  const programs: Array<[string, string]> = [
    ['etcd', 'etcd-server'],
    ['containerd', 'containerd'],
    ['containerd-shim-runc-v2', 'containerd'],
    ['ctr', 'containerd'],
    ['runc', 'runc'],
    ['kubectl', 'kubernetes-client'],
    ['buildah', 'buildah'],
    ['debootstrap', 'debootstrap'],
    ['openssl', 'openssl'],
    ['unshare', 'util-linux'],
    ['nsenter', 'util-linux'],
    ['ip', 'iproute2'],
    ['iptables-save', 'iptables'],
    ['conntrack', 'conntrack'],
    ['python3', 'python3'],
  ];
  for (const [p, pkg] of programs) if (!onPath(p)) missing.push(`${p} (Debian package ${pkg})`);
  for (const f of ['/bin/busybox', '/usr/lib/cni/bridge', '/usr/lib/cni/host-local', '/usr/lib/cni/loopback']) {
    if (!fs.existsSync(f)) missing.push(`${f} (Debian package ${f.includes('busybox') ? 'busybox-static' : 'containernetworking-plugins'})`);
  }
  if (missing.length > 0) throw new Error(`the cluster suite is missing: ${missing.join(', ')}; ${SETUP_HINT}`);
}

/**
 * The agent image for the committed tree, built by scripts/build-cluster-image.sh (cached by tree: seconds
 * when warm; the first build makes the base images and takes minutes). Returns the docker-archive's path.
 * MESH_CNI_CLUSTER_COMMIT=<commit> runs the suite against the image of another commit (to see a test fail
 * on the code before a fix).
 */
export function agentImageArchive(): Promise<string> {
  return new Promise((resolve, reject) => {
    const commit = process.env.MESH_CNI_CLUSTER_COMMIT;
    const child = spawn('bash', [IMAGE_SCRIPT, ...(commit ? [commit] : [])], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(new Error(`${IMAGE_SCRIPT} could not run: ${e.message}`)));
    child.on('close', (code) => {
      const archive = out.trim().split('\n').pop() ?? '';
      if (code === 0 && archive && fs.existsSync(archive)) resolve(archive);
      else reject(new Error(`building the agent image failed (${IMAGE_SCRIPT} exited ${code}):\n${err.trim().split('\n').slice(-40).join('\n')}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// Cleanup that also works for a test process that died: everything is found from the dir's record.

interface ClusterRecord {
  netns: string;
  cgroupRoot: string;
}

function netnsInode(p: string): number | undefined {
  try {
    return fs.statSync(p).ino;
  } catch {
    return undefined;
  }
}

/** PIDs of every process whose network namespace is one of `inodes`. */
function processesInNetns(inodes: Set<number>): number[] {
  const found: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const ino = netnsInode(`/proc/${entry}/ns/net`);
    if (ino !== undefined && inodes.has(ino)) found.push(Number(entry));
  }
  return found;
}

function cgroupHierarchies(): string[] {
  try {
    return fs.readdirSync('/sys/fs/cgroup').map((c) => path.join('/sys/fs/cgroup', c)).filter((d) => fs.statSync(d).isDirectory());
  } catch {
    return [];
  }
}

async function killStragglers(inodes: Set<number>): Promise<void> {
  for (let round = 0; round < 50; round++) {
    const pids = processesInNetns(inodes);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function cleanupClusterDir(dir: string, extraInodes: number[] = []): Promise<void> {
  let record: ClusterRecord | undefined;
  try {
    record = JSON.parse(fs.readFileSync(path.join(dir, 'cluster.json'), 'utf8')) as ClusterRecord;
  } catch {
    record = undefined;
  }
  const inodes = new Set(extraInodes);
  if (record) {
    const ino = netnsInode(`/var/run/netns/${record.netns}`);
    if (ino !== undefined) inodes.add(ino);
  }
  if (inodes.size > 0) await killStragglers(inodes);
  if (record) {
    spawnSync('ip', ['netns', 'del', record.netns]);
    removeCgroupTree(record.cgroupRoot);
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

async function sweepDeadClusters(): Promise<void> {
  for (const entry of fs.readdirSync(os.tmpdir())) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(entry);
    if (m && !fs.existsSync(`/proc/${m[1]}`)) await cleanupClusterDir(path.join(os.tmpdir(), entry));
  }
  for (const name of fs.existsSync('/var/run/netns') ? fs.readdirSync('/var/run/netns') : []) {
    const m = new RegExp(`^${PREFIX}(\\d+)$`).exec(name);
    if (m && !fs.existsSync(`/proc/${m[1]}`)) {
      const ino = netnsInode(`/var/run/netns/${name}`);
      if (ino !== undefined) await killStragglers(new Set([ino]));
      spawnSync('ip', ['netns', 'del', name]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Certificates and credentials.

function writeCerts(dir: string): void {
  const f = (n: string) => path.join(dir, n);
  run('openssl', ['genrsa', '-out', f('ca.key'), '2048']);
  run('openssl', ['req', '-x509', '-new', '-key', f('ca.key'), '-subj', '/CN=mesh-cni-cluster-test-ca', '-days', '2', '-out', f('ca.crt')]);
  run('openssl', ['genrsa', '-out', f('apiserver.key'), '2048']);
  run('openssl', ['req', '-new', '-key', f('apiserver.key'), '-subj', '/CN=kube-apiserver', '-out', f('apiserver.csr')]);
  const sans = ['DNS:kubernetes', 'DNS:kubernetes.default', 'DNS:kubernetes.default.svc', 'DNS:kubernetes.default.svc.cluster.local', `IP:${KUBERNETES_SERVICE_IP}`, `IP:${NODE_IP}`, 'IP:127.0.0.1'];
  fs.writeFileSync(f('apiserver.ext'), `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=${sans.join(',')}\n`);
  run('openssl', ['x509', '-req', '-in', f('apiserver.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f('apiserver.ext'), '-out', f('apiserver.crt')]);
  run('openssl', ['genrsa', '-out', f('sa.key'), '2048']);
  run('openssl', ['rsa', '-in', f('sa.key'), '-pubout', '-out', f('sa.pub')]);
}

function kubeconfig(file: string, caFile: string, token: string): string {
  fs.writeFileSync(
    file,
    `apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: ${caFile}
contexts:
- name: cluster
  context:
    cluster: cluster
    user: user
current-context: cluster
users:
- name: user
  user:
    token: ${token}
`,
    { mode: 0o600 },
  );
  return file;
}

// Everything the agent's service account asks the API is logged; nothing else is.
const AUDIT_POLICY = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: ["${AGENT_SA}"]
  - level: None
`;

export type { AuditEvent };

// ---------------------------------------------------------------------------------------------------------

function containerdConfig(layout: NodeLayout): string {
  return `version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "${layout.criSocket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # without it runc fails ("can't get final child's PID from pipe: EOF"): no CAP_SYS_RESOURCE here
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${layout.cniBinDir}"
    conf_dir = "${layout.cniConfDir}"
    max_conf_num = 1
`;
}

/** bridge + host-local + portmap, as a node's primary CNI writes it (our agent chains onto it). */
export function primaryConflist(): string {
  return `${JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: 'cluster',
      plugins: [
        {
          type: 'bridge',
          bridge: 'cni0',
          isGateway: true,
          ipMasq: false,
          ipam: { type: 'host-local', ranges: [[{ subnet: POD_SUBNET }]], routes: [{ dst: '0.0.0.0/0' }] },
        },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    },
    null,
    2,
  )}\n`;
}

export interface KubectlOptions {
  input?: string;
  timeoutMs?: number;
}

export class Cluster {
  private readonly services = new Map<string, Service>();
  private stopped = false;
  /** The node's current layout (switchLayout changes it). */
  layout: NodeLayout = STANDARD_LAYOUT;
  /** kubelet's kubeconfig, for a restart. */
  nodeKubeconfig = '';

  constructor(
    readonly dir: string,
    readonly netns: string,
    readonly cgroupRoot: string,
    readonly keeperPid: number,
    private readonly keeper: Service,
  ) {}

  get netnsPath(): string {
    return `/var/run/netns/${this.netns}`;
  }

  /** A path inside the cluster's mount namespace, as the host can open it. */
  inside(p: string): string {
    // /var/run is an absolute symlink to /run: through /proc/PID/root it would resolve against the host's root.
    const resolved = p === '/var/run' || p.startsWith('/var/run/') ? p.slice('/var'.length) : p;
    return path.join(`/proc/${this.keeperPid}/root`, resolved);
  }

  /** argv prefix: run a program in the node's network and mount namespaces. */
  nodeArgv(): string[] {
    return ['nsenter', `--mount=/proc/${this.keeperPid}/ns/mnt`, `--net=${this.netnsPath}`, '--'];
  }

  /** argv prefix: run a host program in a pod's network namespace (a path as seen inside, e.g. /var/run/netns/cni-...). */
  podArgv(netnsInside: string): string[] {
    return ['nsenter', `--net=${this.inside(netnsInside)}`, '--'];
  }

  get adminKubeconfig(): string {
    return path.join(this.dir, 'admin.kubeconfig');
  }

  service(name: string): Service | undefined {
    return this.services.get(name);
  }

  add(service: Service): Service {
    this.services.set(service.name, service);
    return service;
  }

  /** Starts a long-running program inside the node (both namespaces), under the reaper. */
  startInNode(name: string, argv: string[], graceSeconds = 10): Service {
    return this.add(startService(name, [...this.nodeArgv(), ...argv], { logFile: path.join(this.dir, 'logs', `${name}.log`), graceSeconds, env: { PATH: process.env.PATH, HOME: this.dir } }));
  }

  runInNode(argv: string[], options: KubectlOptions = {}): Run {
    const [program, ...args] = [...this.nodeArgv(), ...argv];
    return result(spawnSync(program!, args, { input: options.input, encoding: 'utf8', timeout: options.timeoutMs ?? 60_000, env: { PATH: process.env.PATH, HOME: this.dir } }));
  }

  /** containerd's ctr in the k8s.io namespace, on the layout's socket. */
  ctr(args: string[], options: KubectlOptions = {}): Run {
    return this.runInNode(['ctr', '--address', this.layout.criSocket, '-n', 'k8s.io', ...args], options);
  }

  /** kubectl as the cluster admin, from inside the node's netns (the API listens only there). */
  kubectl(args: string[], options: KubectlOptions = {}): Run {
    const r = spawnSync('nsenter', [`--net=${this.netnsPath}`, '--', 'kubectl', `--kubeconfig=${this.adminKubeconfig}`, ...args], {
      input: options.input,
      encoding: 'utf8',
      timeout: options.timeoutMs ?? 60_000,
      env: { PATH: process.env.PATH, HOME: this.dir },
    });
    return result(r);
  }

  /** kubectl that must succeed; throws with its stderr. */
  kubectlOk(args: string[], options: KubectlOptions = {}): string {
    const r = this.kubectl(args, options);
    if (r.status !== 0) throw new Error(`kubectl ${args.join(' ')} failed (${r.status}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  json<T = any>(args: string[]): T {
    return JSON.parse(this.kubectlOk([...args, '-o', 'json'])) as T;
  }

  /** Polls until `check` returns a value (not undefined/false); the error names what was waited for. */
  async waitFor<T>(what: string, timeoutMs: number, check: () => T | undefined | false | Promise<T | undefined | false>, context?: () => string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let lastError = '';
    for (;;) {
      for (const [name, s] of this.services) {
        if (s.exited() && name !== 'keeper') throw new Error(`${name} exited while waiting for ${what}:\n${s.tail(40)}`);
      }
      try {
        const v = await check();
        if (v !== undefined && v !== false) return v as T;
      } catch (err) {
        lastError = (err as Error).message;
      }
      if (Date.now() > deadline) {
        throw new Error(`no ${what} within ${Math.round(timeoutMs / 1000)} s${lastError ? ` (last error: ${lastError})` : ''}${context ? `\n${context()}` : ''}`);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /** Imports an image archive (OCI or docker-archive) into containerd's k8s.io namespace. */
  importImage(archive: string): void {
    const r = this.ctr(['images', 'import', archive], { timeoutMs: 300_000 });
    if (r.status !== 0) throw new Error(`ctr images import ${archive} failed: ${r.stderr}`);
  }

  tagImage(source: string, target: string): void {
    const r = this.ctr(['images', 'tag', '--force', source, target]);
    if (r.status !== 0) throw new Error(`ctr images tag ${source} ${target} failed: ${r.stderr}`);
  }

  /** The audit log's events (the agent's service account only: see AUDIT_POLICY). */
  auditEvents(): AuditEvent[] {
    return auditEventsIn(path.join(this.dir, 'audit.log'));
  }

  logTail(name: string, lines = 30): string {
    return this.services.get(name)?.tail(lines) ?? '';
  }

  /**
   * Restarts the node's containerd and kubelet with another layout (CNI dirs and CRI socket), keeping the
   * cluster, its API objects and containerd's images (the same root dir). The node must hold no pods but
   * static ones; resolves once it is Ready again.
   */
  async switchLayout(layout: NodeLayout): Promise<void> {
    await this.stopRuntime();
    this.layout = layout;
    prepareNode(this);
    await this.startRuntime();
    await waitNodeReady(this, 240_000);
  }

  /**
   * Stops kubelet, then containerd, as a power-off does: containerd's reaper SIGKILLs what containerd leaves
   * behind (its shims, and with them every pod's processes, the agent's included). The API objects and the
   * runtime's and kubelet's dirs under /var/lib stay.
   */
  async stopRuntime(): Promise<void> {
    for (const name of ['kubelet', 'containerd']) {
      await this.services.get(name)?.stop();
      this.services.delete(name);
    }
  }

  /** Starts containerd (resolves once it answers) and then kubelet, in the node's current layout; not awaited Ready. */
  async startRuntime(): Promise<void> {
    await startContainerd(this);
    startKubelet(this);
  }

  /**
   * Empties the node's /run as a reboot does (call with the runtime stopped): every mount under it in the
   * node's mount namespace (the pods' netns files, containerd's rootfs and shm mounts) detached, then the
   * cluster's own run dir (DIR/run, which the keeper binds over /run) emptied. The host's /run is never
   * touched. Returns the mount points detached.
   */
  emptyRun(): string[] {
    const mountPoints = fs
      .readFileSync(`/proc/${this.keeperPid}/mountinfo`, 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .map((m) => m.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
      .filter((m) => m.startsWith('/run/'));
    // Deepest first; lazily, so a mount something still holds open goes once it is let go.
    const sorted = [...new Set(mountPoints)].sort((a, b) => b.split('/').length - a.split('/').length);
    for (const m of sorted) {
      const r = this.runInNode(['umount', '-l', m]);
      if (r.status !== 0 && !/not mounted|no mount point/i.test(r.stderr)) throw new Error(`umount -l ${m} inside the node failed: ${r.stderr}`);
    }
    const run = path.join(this.dir, 'run');
    for (const entry of fs.readdirSync(run)) fs.rmSync(path.join(run, entry), { recursive: true, force: true });
    return sorted;
  }

  /**
   * Empties the node's cgroups as a reboot does (call with the runtime stopped and the pods' processes gone):
   * kubelet's cgroup root (the cluster's own, under every hierarchy) removed with everything under it and made
   * again empty. Without it kubelet spends its first minute on the dead containers' cgroups.
   */
  emptyCgroups(): void {
    removeCgroupTree(this.cgroupRoot);
    for (const h of cgroupHierarchies()) fs.mkdirSync(path.join(h, this.cgroupRoot), { recursive: true });
  }

  /** Resolves once the node reports Ready. */
  waitReady(timeoutMs: number): Promise<void> {
    return waitNodeReady(this, timeoutMs);
  }

  /** Stops everything in reverse order, kills stragglers by netns, removes cgroups, netns and files. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    // The pods' netns, for stragglers: bind mounts under /run/netns inside.
    const podNetns: number[] = [];
    try {
      for (const f of fs.readdirSync(this.inside('/run/netns'))) {
        const ino = netnsInode(this.inside(`/run/netns/${f}`));
        if (ino !== undefined) podNetns.push(ino);
      }
    } catch {
      // none
    }
    for (const name of ['kubelet', 'kube-proxy', 'containerd', 'kube-scheduler', 'kube-controller-manager', 'kube-apiserver', 'etcd']) {
      await this.services.get(name)?.stop();
    }
    for (const [name, s] of this.services) if (name !== 'keeper') await s.stop();
    await this.keeper.stop();
    await cleanupClusterDir(this.dir, podNetns);
  }
}

/** The node before mesh-cni, in its layout: the distribution's CNI plugins, a primary conflist, containerd's config. */
function prepareNode(c: Cluster): void {
  const { cniBinDir, cniConfDir } = c.layout;
  fs.mkdirSync(c.inside(cniBinDir), { recursive: true });
  for (const plugin of fs.readdirSync('/usr/lib/cni')) {
    fs.copyFileSync(path.join('/usr/lib/cni', plugin), c.inside(path.join(cniBinDir, plugin)));
    fs.chmodSync(c.inside(path.join(cniBinDir, plugin)), 0o755);
  }
  fs.mkdirSync(c.inside(cniConfDir), { recursive: true });
  fs.writeFileSync(c.inside(path.join(cniConfDir, PRIMARY_CONFLIST)), primaryConflist());
  fs.mkdirSync(c.inside('/etc/containerd'), { recursive: true });
  fs.writeFileSync(c.inside('/etc/containerd/config.toml'), containerdConfig(c.layout));
}

async function startContainerd(c: Cluster): Promise<void> {
  c.startInNode('containerd', ['containerd', '--config', '/etc/containerd/config.toml'], 15);
  await c.waitFor('containerd answering', 60_000, () => c.ctr(['version'], { timeoutMs: 10_000 }).status === 0, () => c.logTail('containerd'));
}

function startKubelet(c: Cluster): void {
  c.startInNode('kubelet', [
    path.join(BIN, 'kubelet'),
    `--kubeconfig=${c.nodeKubeconfig}`,
    `--hostname-override=${NODE_NAME}`,
    `--node-ip=${NODE_IP}`,
    '--container-runtime=remote',
    `--container-runtime-endpoint=unix://${c.layout.criSocket}`,
    '--runtime-request-timeout=5m',
    '--cgroup-driver=cgroupfs',
    `--cgroup-root=${c.cgroupRoot}`,
    '--fail-swap-on=false',
    `--pod-infra-container-image=${PAUSE_IMAGE}`,
    '--root-dir=/var/lib/kubelet',
    `--cert-dir=${path.join(c.dir, 'kubelet-pki')}`,
    '--volume-plugin-dir=/var/lib/kubelet/volume-plugins',
    '--anonymous-auth=true',
    '--authorization-mode=AlwaysAllow',
    '--read-only-port=0',
    '--oom-score-adj=0',
    '--image-gc-high-threshold=100',
    '--image-gc-low-threshold=99',
    '--eviction-hard=memory.available<50Mi,nodefs.available<1%,imagefs.available<1%,nodefs.inodesFree<1%',
    '--serialize-image-pulls=false',
    '--node-status-update-frequency=4s',
    '--sync-frequency=10s',
    '--logtostderr=true',
    '--v=1',
  ]);
}

async function waitNodeReady(c: Cluster, timeoutMs: number): Promise<void> {
  await c.waitFor(
    `node ${NODE_NAME} Ready`,
    timeoutMs,
    () => {
      const node = c.json(['get', 'node', NODE_NAME]);
      return node.status?.conditions?.some((x: any) => x.type === 'Ready' && x.status === 'True');
    },
    () => `kubelet:\n${c.logTail('kubelet')}`,
  );
}

export interface ClusterOptions {
  /** The agent image archive (agentImageArchive()); imported before the test applies install/. */
  agentImage: string;
  /** The node's layout (default STANDARD_LAYOUT). */
  layout?: NodeLayout;
}

/**
 * Starts the whole cluster and resolves once the node is Ready, kube-proxy serves the kubernetes Service and
 * the default service account has its token. About a minute on a quiet 2-core machine.
 */
export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  requireClusterDeps();
  await sweepDeadClusters();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${PREFIX}${process.pid}-`));
  fs.chmodSync(dir, 0o755);
  const netns = `${PREFIX}${process.pid}`;
  const cgroupRoot = `/${PREFIX}${process.pid}`;
  fs.writeFileSync(path.join(dir, 'cluster.json'), JSON.stringify({ netns, cgroupRoot } satisfies ClusterRecord));
  fs.mkdirSync(path.join(dir, 'logs'));
  let keeper: Service | undefined;
  let cluster: Cluster | undefined;
  try {
    // The node's network: a veth pair whose two ends both stay inside (this kernel has no dummy links).
    run('ip', ['netns', 'add', netns]);
    const ipn = (...args: string[]) => run('ip', ['-n', netns, ...args]);
    ipn('link', 'set', 'lo', 'up');
    ipn('link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1');
    ipn('addr', 'add', `${NODE_IP}/24`, 'dev', 'eth0');
    ipn('link', 'set', 'eth0', 'up');
    ipn('link', 'set', 'eth1', 'up');
    // A default route, so that connecting to a Service IP gets as far as kube-proxy's DNAT.
    ipn('route', 'add', 'default', 'dev', 'eth0');
    for (const h of cgroupHierarchies()) fs.mkdirSync(path.join(h, cgroupRoot), { recursive: true });

    keeper = startService('keeper', ['unshare', '--mount', '--propagation', 'private', '--', '/usr/bin/python3', KEEPER, dir], {
      logFile: path.join(dir, 'logs', 'keeper.log'),
      graceSeconds: 2,
      env: { PATH: process.env.PATH },
    });
    const k = keeper;
    const keeperPid = await waitUntil(k, 'the mount namespace', 20_000, () => fs.existsSync(path.join(dir, 'keeper.pid'))).then(() => Number(fs.readFileSync(path.join(dir, 'keeper.pid'), 'utf8')));
    cluster = new Cluster(dir, netns, cgroupRoot, keeperPid, keeper);
    const c = cluster;

    c.layout = options.layout ?? STANDARD_LAYOUT;
    prepareNode(c);

    const pki = path.join(dir, 'pki');
    fs.mkdirSync(pki);
    writeCerts(pki);
    const ca = path.join(pki, 'ca.crt');
    const tokens: Record<string, [string, string]> = {
      admin: ['admin', 'system:masters'],
      node: [`system:node:${NODE_NAME}`, 'system:nodes'],
      'controller-manager': ['system:kube-controller-manager', ''],
      scheduler: ['system:kube-scheduler', ''],
      proxy: ['system:kube-proxy', ''],
    };
    let csv = '';
    const configs: Record<string, string> = {};
    for (const [role, [user, group]] of Object.entries(tokens)) {
      const token = randomBytes(24).toString('hex');
      csv += `${token},${user},uid-${role},"${group}"\n`;
      configs[role] = kubeconfig(path.join(dir, `${role}.kubeconfig`), ca, token);
    }
    fs.writeFileSync(path.join(pki, 'tokens.csv'), csv, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, 'audit-policy.yaml'), AUDIT_POLICY);

    c.startInNode('etcd', [
      'etcd',
      '--name=node',
      `--data-dir=${path.join(dir, 'etcd')}`,
      '--listen-client-urls=http://127.0.0.1:2379',
      '--advertise-client-urls=http://127.0.0.1:2379',
      '--listen-peer-urls=http://127.0.0.1:2380',
      '--initial-advertise-peer-urls=http://127.0.0.1:2380',
      '--initial-cluster=node=http://127.0.0.1:2380',
      '--initial-cluster-state=new',
      '--log-level=warn',
    ]);
    c.startInNode('kube-apiserver', [
      path.join(BIN, 'kube-apiserver'),
      '--etcd-servers=http://127.0.0.1:2379',
      '--bind-address=0.0.0.0',
      `--advertise-address=${NODE_IP}`,
      '--secure-port=6443',
      '--insecure-port=0',
      `--tls-cert-file=${path.join(pki, 'apiserver.crt')}`,
      `--tls-private-key-file=${path.join(pki, 'apiserver.key')}`,
      `--client-ca-file=${ca}`,
      `--service-account-key-file=${path.join(pki, 'sa.pub')}`,
      `--service-account-signing-key-file=${path.join(pki, 'sa.key')}`,
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      `--token-auth-file=${path.join(pki, 'tokens.csv')}`,
      '--authorization-mode=Node,RBAC',
      '--enable-admission-plugins=NodeRestriction',
      '--allow-privileged=true',
      `--service-cluster-ip-range=${SERVICE_RANGE}`,
      '--kubelet-preferred-address-types=InternalIP',
      `--audit-policy-file=${path.join(dir, 'audit-policy.yaml')}`,
      `--audit-log-path=${path.join(dir, 'audit.log')}`,
      '--audit-log-format=json',
      '--profiling=false',
      '--logtostderr=true',
      '--v=0',
    ]);
    await c.waitFor('kube-apiserver /readyz', 120_000, () => c.kubectl(['get', '--raw=/readyz'], { timeoutMs: 10_000 }).stdout.trim() === 'ok', () => c.logTail('kube-apiserver'));

    c.startInNode('kube-controller-manager', [
      path.join(BIN, 'kube-controller-manager'),
      `--kubeconfig=${configs['controller-manager']}`,
      `--service-account-private-key-file=${path.join(pki, 'sa.key')}`,
      `--root-ca-file=${ca}`,
      '--use-service-account-credentials=true',
      '--leader-elect=false',
      '--port=0',
      '--secure-port=0',
      '--logtostderr=true',
      '--v=0',
    ]);
    c.startInNode('kube-scheduler', [path.join(BIN, 'kube-scheduler'), `--kubeconfig=${configs.scheduler}`, '--leader-elect=false', '--port=0', '--secure-port=0', '--logtostderr=true', '--v=0']);
    await startContainerd(c);
    const images = path.join(dir, 'images');
    c.importImage(buildSandboxImage(fs.mkdtempSync(path.join(dir, 'pause-')), PAUSE_IMAGE));
    c.importImage(buildSandboxImage(fs.mkdtempSync(path.join(dir, 'app-')), APP_IMAGE));
    fs.mkdirSync(images, { recursive: true });
    c.importImage(options.agentImage);

    c.nodeKubeconfig = configs.node;
    startKubelet(c);
    c.startInNode('kube-proxy', [
      path.join(BIN, 'kube-proxy'),
      `--kubeconfig=${configs.proxy}`,
      `--hostname-override=${NODE_NAME}`,
      '--proxy-mode=iptables',
      `--cluster-cidr=${POD_SUBNET}`,
      // conntrack limits are machine-wide: leave them as they are
      '--conntrack-max-per-core=0',
      '--conntrack-tcp-timeout-established=0',
      '--conntrack-tcp-timeout-close-wait=0',
      '--oom-score-adj=0',
      '--metrics-bind-address=127.0.0.1:10249',
      '--healthz-bind-address=127.0.0.1:10256',
      '--logtostderr=true',
      '--v=0',
    ]);
    await waitNodeReady(c, 240_000);
    await c.waitFor(
      `kube-proxy's rules for the kubernetes Service (${KUBERNETES_SERVICE_IP})`,
      120_000,
      () => c.runInNode(['iptables-save', '-t', 'nat']).stdout.includes(`${KUBERNETES_SERVICE_IP}/32`),
      () => `kube-proxy:\n${c.logTail('kube-proxy')}`,
    );
    await c.waitFor(
      'the default service account token (controller-manager)',
      120_000,
      () => (c.json(['-n', 'default', 'get', 'serviceaccount', 'default']).secrets?.length ?? 0) > 0,
      () => `kube-controller-manager:\n${c.logTail('kube-controller-manager')}`,
    );
    return c;
  } catch (err) {
    if (cluster) await cluster.stop();
    else {
      if (keeper) await keeper.stop();
      await cleanupClusterDir(dir);
    }
    throw err;
  }
}
