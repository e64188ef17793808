/**
 * A node for the CLI tests: a real kube-apiserver + etcd (support/kube), a CNI config and bin dir with the
 * plugin installed by `mesh-cni install`, pods in the API bound to this node with IPs in their status, plain
 * test netns standing in for their sandboxes with the attachment records ADD would have written, and the
 * agent as a separate process (`mesh-cni agent`). Everything is removed by `stop()`, which test files call in
 * test.after.always; netns names carry the process id so the netns sweep removes what a crash left.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { AttachmentStore } from '../../src/state/attachments';
import { mesh, type CliResult } from './cli';
import { freePort, startKube, type Kube } from './kube';
import { sh, uniqueName } from './netns';
import { CLI } from './paths';
import { startService, waitUntil, type Service } from './service';

export const NODE = 'node-a';
export const STATUS_ANNOTATION = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });

export interface NodePod {
  namespace: string;
  name: string;
  uid: string;
  /** the netns path recorded for it, if any */
  netns?: string;
  containerId?: string;
}

export class CliNode {
  private agent?: Service;
  private readonly netnsNames: string[] = [];
  private counter = 0;
  healthPort = 0;

  constructor(
    readonly kube: Kube,
    readonly dir: string,
  ) {}

  get stateDir(): string {
    return path.join(this.dir, 'state');
  }
  get confDir(): string {
    return path.join(this.dir, 'net.d');
  }
  get binDir(): string {
    return path.join(this.dir, 'bin');
  }
  get socket(): string {
    return path.join(this.stateDir, 'agent.sock');
  }

  /** The flags every node command gets here (in the agent pod, the service account and $NODE_NAME stand in). */
  flags(kubeconfig = this.kube.kubeconfig): string[] {
    return ['--kubeconfig', kubeconfig, '--state-dir', this.stateDir, '--socket', this.socket];
  }

  statusFlags(kubeconfig = this.kube.kubeconfig): string[] {
    return [...this.flags(kubeconfig), '--cni-conf-dir', this.confDir, '--cni-bin-dir', this.binDir, '--health-port', String(this.healthPort)];
  }

  /**
   * The CLI as a person on this node runs it: $NODE_NAME set, the node flags appended (plan touches nothing
   * on the node: it only takes --kubeconfig, for --pod).
   */
  run(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
    const flags = args[0] === 'status' ? this.statusFlags() : args[0] === 'plan' ? ['--kubeconfig', this.kube.kubeconfig] : this.flags();
    return mesh([...args, ...flags], { NODE_NAME: NODE, ...env });
  }

  /** A pod in the API, bound to `node`, with an IP in its status (as kubelet reports once the sandbox is up). */
  async createPod(o: { namespace: string; name: string; meshed?: boolean; node?: string; ip?: string; annotations?: Record<string, string>; labels?: Record<string, string> }): Promise<V1Pod> {
    await this.kube.ensureNamespace(o.namespace);
    const meshed = o.meshed !== false;
    const core = this.kube.core();
    const created = await core.createNamespacedPod({
      namespace: o.namespace,
      body: {
        metadata: { name: o.name, labels: o.labels, annotations: { ...(meshed ? { 'sidecar.istio.io/status': STATUS_ANNOTATION } : {}), ...o.annotations } },
        spec: {
          nodeName: o.node ?? NODE,
          containers: [
            { name: 'app', image: 'docker.io/library/busybox:1' },
            ...(meshed ? [{ name: 'istio-proxy', image: 'docker.io/istio/proxyv2:1.24.0', securityContext: { runAsUser: 1337, runAsGroup: 1337 } }] : []),
          ],
          ...(meshed ? { initContainers: [{ name: 'istio-validation', image: 'docker.io/istio/proxyv2:1.24.0' }] } : {}),
        },
      },
    });
    const ip = o.ip ?? `10.88.0.${10 + ++this.counter}`;
    return core.replaceNamespacedPodStatus({
      namespace: o.namespace,
      name: o.name,
      body: { ...created, status: { ...created.status, phase: 'Running', podIP: ip, podIPs: [{ ip }] } },
    });
  }

  /** A netns standing in for the pod's sandbox, and the attachment record ADD writes. */
  sandbox(pod: V1Pod, role: string): NodePod {
    const name = uniqueName(role);
    sh('ip', ['netns', 'add', name]);
    this.netnsNames.push(name);
    sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    const netns = `/var/run/netns/${name}`;
    const containerId = `${role}${Date.now().toString(16)}`;
    new AttachmentStore(this.stateDir).record({
      containerId,
      ifName: 'eth0',
      netns,
      pod: { namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, uid: pod.metadata!.uid },
      backend: 'iptables-nft',
      rules: 0,
      programmedAt: new Date().toISOString(),
    });
    return { namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, uid: pod.metadata!.uid!, netns, containerId };
  }

  /** Rewrites the attachment record as ADD leaves it once the rules are in (the test programs them with apply --pod). */
  recordProgrammed(p: NodePod, report: { backend: string; rules: number }): void {
    new AttachmentStore(this.stateDir).record({
      containerId: p.containerId!,
      ifName: 'eth0',
      netns: p.netns!,
      pod: { namespace: p.namespace, name: p.name, uid: p.uid },
      backend: report.backend,
      rules: report.rules,
      programmedAt: new Date().toISOString(),
    });
  }

  /** Removes a sandbox's netns but keeps its attachment record: the sandbox died under the plugin. */
  killSandbox(p: NodePod): void {
    const name = path.basename(p.netns!);
    spawnSync('ip', ['netns', 'del', name]);
  }

  async startAgent(): Promise<void> {
    this.healthPort = await freePort();
    this.agent = startService(
      'mesh-cni-agent',
      [
        process.execPath,
        CLI,
        'agent',
        '--socket',
        this.socket,
        '--state-dir',
        this.stateDir,
        '--health-port',
        String(this.healthPort),
        '--health-host',
        '127.0.0.1',
        '--kubeconfig',
        this.kube.kubeconfig,
        '--node-name',
        NODE,
        '--no-install',
        '--repair-mode',
        'off',
      ],
      { logFile: path.join(this.dir, 'agent.log'), graceSeconds: 5 },
    );
    await waitUntil(this.agent, '/readyz', 30_000, async () => (await fetch(`http://127.0.0.1:${this.healthPort}/readyz`)).status === 200);
  }

  async stopAgent(): Promise<void> {
    await this.agent?.stop();
    this.agent = undefined;
  }

  agentLog(): string {
    return this.agent?.tail(40) ?? '';
  }

  async stop(): Promise<void> {
    await this.stopAgent();
    for (const name of this.netnsNames) spawnSync('ip', ['netns', 'del', name]);
    await this.kube.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Starts the API, installs the plugin into a fresh CNI config dir (a bridge conflist as the primary CNI). */
export async function startCliNode(): Promise<CliNode> {
  const kube = await startKube();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-cni-clinode-'));
  const node = new CliNode(kube, dir);
  try {
    fs.mkdirSync(node.confDir, { recursive: true });
    fs.writeFileSync(
      path.join(node.confDir, '10-bridge.conflist'),
      `${JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local', subnet: '10.88.0.0/16' } }] }, null, 2)}\n`,
    );
    const installed = mesh(['install', '--cni-conf-dir', node.confDir, '--cni-bin-dir', node.binDir, '--state-dir', node.stateDir]);
    if (installed.code !== 0) throw new Error(`mesh-cni install failed: ${installed.stderr}${installed.stdout}`);
    return node;
  } catch (err) {
    await node.stop();
    throw err;
  }
}
