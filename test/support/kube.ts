/**
 * A real Kubernetes API for tests: etcd and kube-apiserver (built once by scripts/setup-node-deps.sh) on
 * loopback only, token auth, service-account keys from openssl, a kubeconfig file. Started once per test
 * file (test.before) and stopped in test.after.always; everything lives under one temp dir.
 * No kubelet runs: tests play kubelet (read the pod, call CRI RunPodSandbox).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as K8s from '@kubernetes/client-node';
import { KUBE_APISERVER, requireNodeDeps } from './node-deps';
import { startService, waitUntil, type Service } from './service';
import { readJsonLines } from './json-lines';

const PREFIX = 'mcni-kube-';

/** A free TCP port on 127.0.0.1 (of the netns this process is in). */
/** The kernel's ephemeral range: ports it hands to listen(0) and to every outgoing connect(). */
function ephemeralRange(): [number, number] {
  try {
    const [low, high] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (low > 0 && high >= low) return [low, high];
  } catch {
    // not Linux-like: fall through
  }
  return [32768, 60999];
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A port for a server a test starts a moment later (etcd, kube-apiserver, an agent's health port). Taken
 * below the ephemeral range: a port from listen(0) is an ephemeral one, and on a busy machine any outgoing
 * connection on loopback may take it as its source port before the server binds it ("address already in use").
 * Ports below the range are never handed out that way; a random one, checked bindable, leaves only the
 * rare case of two tests picking the same port in the same instant.
 */
export async function freePort(): Promise<number> {
  const low = Math.min(ephemeralRange()[0], 65536);
  const base = 10000;
  if (low - base > 1000) {
    for (let attempt = 0; attempt < 50; attempt++) {
      const port = base + Math.floor(Math.random() * (low - base));
      if (await bindable(port)) return port;
    }
  }
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function run(program: string, args: string[]): void {
  const r = spawnSync(program, args, { encoding: 'utf8', timeout: 60_000 });
  if (r.error || r.status !== 0) throw new Error(`${program} ${args.join(' ')} failed: ${r.stderr ?? r.error?.message}`);
}

function sweepDead(): void {
  for (const entry of fs.readdirSync(os.tmpdir())) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(entry);
    if (m && !fs.existsSync(`/proc/${m[1]}`)) fs.rmSync(path.join(os.tmpdir(), entry), { recursive: true, force: true });
  }
}

export interface KubeOptions {
  /** 'AlwaysAllow' (default) or 'RBAC' to test a ClusterRole. */
  authorizationMode?: 'AlwaysAllow' | 'RBAC';
  /** More bearer tokens: [token, user name, groups]; e.g. the agent's service account to test our ClusterRole under RBAC. */
  users?: Array<[token: string, user: string, groups: string[]]>;
  /** Write an audit log of every request on pods (Kube.podRequests reads it). */
  audit?: boolean;
}

export interface AuditEvent {
  verb: string;
  requestURI: string;
  objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string; apiGroup?: string };
  user?: { username?: string };
  userAgent?: string;
  responseStatus?: { code?: number };
}

/** The events of an audit log; a line the API server is still writing is left out. */
export function auditEventsIn(file: string): AuditEvent[] {
  return readJsonLines(file).filter((e) => !('raw' in e)) as AuditEvent[];
}

const AUDIT_POLICY = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    resources:
      - group: ""
        resources: ["pods", "pods/status", "events"]
  - level: None
`;

export interface PodOptions {
  namespace: string;
  name: string;
  annotations?: Record<string, string>;
  labels?: Record<string, string>;
  /** Scheduled to this node (the agent's watch cache only holds pods of its node). */
  nodeName?: string;
  /** Containers by name; `istio-proxy` gets runAsUser/runAsGroup 1337 as the injector writes it. */
  containers?: string[];
  initContainers?: string[];
}

export class Kube {
  private api: K8s.CoreV1Api | undefined;

  constructor(
    readonly dir: string,
    readonly port: number,
    /** kubeconfig for the cluster admin (token auth, CA = the apiserver's self-signed bundle) */
    readonly kubeconfig: string,
    readonly token: string,
    readonly caFile: string,
    private readonly etcd: Service,
    private apiserver: Service,
    private readonly launchApiserver: () => Service,
  ) {}

  /** Stops kube-apiserver only (etcd keeps the data), as an API outage. */
  async stopApiserver(): Promise<void> {
    await this.apiserver.stop();
  }

  /** Starts kube-apiserver again on the same port and certificates; resolves once /readyz answers. */
  async startApiserver(): Promise<void> {
    this.apiserver = this.launchApiserver();
    const ca = fs.readFileSync(this.caFile);
    await waitUntil(this.apiserver, '/readyz', 60_000, () => getOk(`${this.server}/readyz`, ca, this.token));
  }

  get server(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  apiserverLog(lines = 30): string {
    return this.apiserver.tail(lines);
  }

  /** Writes a kubeconfig for `server` (default this API) with this cluster's CA and the given token. */
  writeKubeconfig(file: string, options: { server?: string; token?: string } = {}): string {
    fs.writeFileSync(
      file,
      `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: ${options.server ?? this.server}
    certificate-authority: ${this.caFile}
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
users:
- name: test
  user:
    token: ${options.token ?? this.token}
`,
      { mode: 0o600 },
    );
    return file;
  }

  get auditLog(): string {
    return path.join(this.dir, 'audit.log');
  }

  /** The audit log's events (the API server must have been started with `audit: true`). */
  auditEvents(): AuditEvent[] {
    return auditEventsIn(this.auditLog);
  }

  /** Per-pod GETs (what a plugin without a cache does on every ADD) of namespace/name. */
  podGets(namespace: string, name: string): AuditEvent[] {
    return this.auditEvents().filter((e) => e.verb === 'get' && e.objectRef?.resource === 'pods' && !e.objectRef.subresource && e.objectRef.namespace === namespace && e.objectRef.name === name);
  }

  /** The CoreV1 client of @kubernetes/client-node, loaded on first use (it is heavy). */
  core(): K8s.CoreV1Api {
    if (!this.api) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const k8s = require('@kubernetes/client-node') as typeof K8s;
      const config = new k8s.KubeConfig();
      config.loadFromFile(this.kubeconfig);
      this.api = config.makeApiClient(k8s.CoreV1Api);
    }
    return this.api;
  }

  async ensureNamespace(name: string): Promise<void> {
    try {
      await this.core().readNamespace({ name });
    } catch {
      await this.core().createNamespace({ body: { metadata: { name } } });
    }
  }

  /** Creates a pod as the API would hold it after sidecar injection; no kubelet will run it. */
  async createPod(pod: PodOptions): Promise<K8s.V1Pod> {
    await this.ensureNamespace(pod.namespace);
    const container = (name: string): K8s.V1Container =>
      name === 'istio-proxy'
        ? { name, image: 'docker.io/istio/proxyv2:1.24.0', securityContext: { runAsUser: 1337, runAsGroup: 1337 } }
        : { name, image: 'docker.io/library/busybox:1' };
    return this.core().createNamespacedPod({
      namespace: pod.namespace,
      body: {
        metadata: { name: pod.name, annotations: pod.annotations, labels: pod.labels },
        spec: {
          ...(pod.nodeName ? { nodeName: pod.nodeName } : {}),
          containers: (pod.containers ?? ['app']).map(container),
          ...(pod.initContainers ? { initContainers: pod.initContainers.map(container) } : {}),
        },
      },
    });
  }

  /** What kubelet reports once the sandbox is networked: the pod's IP and phase, through pods/status. */
  async markRunning(namespace: string, name: string, podIP: string): Promise<K8s.V1Pod> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const k8s = require('@kubernetes/client-node') as typeof K8s;
    return this.core().patchNamespacedPodStatus(
      { namespace, name, body: { status: { phase: 'Running', podIP, podIPs: [{ ip: podIP }] } } },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
  }

  /** Stops kube-apiserver and etcd and removes every file. */
  async stop(): Promise<void> {
    await this.apiserver.stop();
    await this.etcd.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function getOk(url: string, ca: Buffer | undefined, token?: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = https.get(url, { ca, headers: token ? { authorization: `Bearer ${token}` } : {}, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
  });
}

function httpOk(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = net.connect({ host: '127.0.0.1', port: Number(new URL(url).port) }, () => {
      req.end(`GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n`);
    });
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => resolve(/"health":\s*"true"/.test(body)));
    req.on('error', () => resolve(false));
    req.setTimeout(2000, () => req.destroy());
  });
}

function auditPolicy(dir: string): string {
  const file = path.join(dir, 'audit-policy.yaml');
  fs.writeFileSync(file, AUDIT_POLICY);
  return file;
}

/** Starts etcd and kube-apiserver on loopback; resolves once /readyz answers. */
export async function startKube(options: KubeOptions = {}): Promise<Kube> {
  requireNodeDeps({ kube: true });
  sweepDead();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${PREFIX}${process.pid}-`));
  let etcd: Service | undefined;
  let apiserver: Service | undefined;
  try {
    const [clientPort, peerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
    const client = `http://127.0.0.1:${clientPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    etcd = startService(
      'etcd',
      [
        'etcd',
        '--name=mcni',
        `--data-dir=${path.join(dir, 'etcd')}`,
        `--listen-client-urls=${client}`,
        `--advertise-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=mcni=${peer}`,
        '--initial-cluster-state=new',
        `--initial-cluster-token=mcni-${process.pid}`,
        '--log-level=warn',
      ],
      { logFile: path.join(dir, 'etcd.log'), env: { PATH: process.env.PATH } },
    );

    const saKey = path.join(dir, 'sa.key');
    const saPub = path.join(dir, 'sa.pub');
    run('openssl', ['genrsa', '-out', saKey, '2048']);
    run('openssl', ['rsa', '-in', saKey, '-pubout', '-out', saPub]);
    const token = randomBytes(24).toString('hex');
    const tokens = path.join(dir, 'tokens.csv');
    const extra = (options.users ?? []).map(([t, user, groups], i) => `${t},${user},user-${i},"${groups.join(',')}"\n`).join('');
    fs.writeFileSync(tokens, `${token},admin,admin-uid,"system:masters"\n${extra}`, { mode: 0o600 });
    const certDir = path.join(dir, 'certs');
    fs.mkdirSync(certDir);

    await waitUntil(etcd, 'etcd health', 20_000, () => httpOk(client));

    const launch = () => startService(
      'kube-apiserver',
      [
        KUBE_APISERVER,
        `--etcd-servers=${client}`,
        '--bind-address=127.0.0.1',
        '--advertise-address=127.0.0.1',
        `--secure-port=${apiPort}`,
        '--insecure-port=0',
        `--cert-dir=${certDir}`,
        `--service-account-key-file=${saPub}`,
        `--service-account-signing-key-file=${saKey}`,
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--token-auth-file=${tokens}`,
        `--authorization-mode=${options.authorizationMode ?? 'AlwaysAllow'}`,
        '--service-cluster-ip-range=10.96.0.0/24',
        '--disable-admission-plugins=ServiceAccount',
        '--endpoint-reconciler-type=none',
        '--profiling=false',
        ...(options.audit ? [`--audit-policy-file=${auditPolicy(dir)}`, `--audit-log-path=${path.join(dir, 'audit.log')}`, '--audit-log-format=json'] : []),
        '--logtostderr=true',
        '--v=0',
      ],
      { logFile: path.join(dir, 'kube-apiserver.log'), env: { PATH: process.env.PATH } },
    );
    apiserver = launch();
    // The serving certificate is self-signed at start; its file holds the certificate and its CA.
    const caFile = path.join(certDir, 'apiserver.crt');
    await waitUntil(apiserver, '/readyz', 60_000, async () => fs.existsSync(caFile) && getOk(`https://127.0.0.1:${apiPort}/readyz`, fs.readFileSync(caFile), token));
    const kube = new Kube(dir, apiPort, path.join(dir, 'kubeconfig'), token, caFile, etcd, apiserver, launch);
    kube.writeKubeconfig(kube.kubeconfig);
    return kube;
  } catch (err) {
    if (apiserver) await apiserver.stop();
    if (etcd) await etcd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

export interface Forward {
  stop(): Promise<void>;
}

/**
 * Makes 127.0.0.1:port of this process's netns reachable as 127.0.0.1:port inside `netnsPath` (the node
 * netns, where the runtime runs our plugin), through a UNIX socket between two socat processes: traffic
 * stays on the two loopbacks.
 */
export async function forwardIntoNetns(netnsPath: string, port: number, dir: string): Promise<Forward> {
  const socket = path.join(dir, `fwd-${port}-${randomBytes(3).toString('hex')}.sock`);
  const outside = startService('socat-host', ['socat', `UNIX-LISTEN:${socket},fork,mode=600`, `TCP:127.0.0.1:${port}`], {
    logFile: path.join(dir, 'socat-host.log'),
    graceSeconds: 2,
  });
  const inside = startService('socat-netns', ['socat', `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`, `UNIX-CONNECT:${socket}`], {
    netnsPath,
    logFile: path.join(dir, 'socat-netns.log'),
    graceSeconds: 2,
  });
  const stop = async () => {
    await inside.stop();
    await outside.stop();
    fs.rmSync(socket, { force: true });
  };
  try {
    await waitUntil(outside, 'its socket', 5_000, () => fs.existsSync(socket));
    await waitUntil(inside, 'listening', 5_000, () => {
      const r = spawnSync('nsenter', [`--net=${netnsPath}`, '--', 'ss', '-Htln', `sport = :${port}`], { encoding: 'utf8' });
      return r.stdout.includes(`127.0.0.1:${port}`);
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { stop };
}
