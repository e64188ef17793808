/**
 * Ambient in the agent: the pods of this node whose traffic goes to ztunnel. It holds, for each, an open
 * descriptor of the pod's netns (what ztunnel is handed over ZDS, src/agent/zds-server.ts), and keeps three
 * things in step with the pods and namespaces the API shows, as Istio's node agent does
 * (cni/pkg/nodeagent: net_linux.go, meshdataplane_linux.go, informers.go):
 *
 * - the in-pod rules (src/redirect/ambient/), programmed at the pod's ADD before it answers, or when a running
 *   pod (or its namespace) is labelled; removed when it is unlabelled;
 * - ztunnel's view: AddWorkload once the rules are in, DelWorkload when the pod leaves or ends; a connecting
 *   ztunnel gets a snapshot of every pod held;
 * - the node's probe set (src/redirect/ambient/host.ts): the pod's addresses while it is held.
 *
 * At the pod's ADD, no ztunnel or no ack within 5 s fails the ADD (its rules taken out again): the runtime
 * retries the sandbox, as with Istio, whose plugin fails the ADD when its agent cannot reach ztunnel. A running
 * pod labelled into ambient while no ztunnel is connected keeps its rules and is annotated `pending`, and the
 * snapshot hands it over when ztunnel connects (Istio's informer path).
 *
 * At start (an upgrade or a restart), every pod that should be ambient is found again (the netns locator chain:
 * what ADD recorded, the runtime, /proc), its rules reconciled in place and held, so the new agent's snapshot
 * includes it; rules of ours left in a pod that is no longer ambient are removed. The node's probe rules are
 * replaced with the current pods' addresses; they go only when the agent uninstalls.
 */
import * as fs from 'node:fs';
import type { V1Pod } from '@kubernetes/client-node';
import type { AmbientHandler } from '../standalone/wiring';
import type { KubernetesArgs } from '../cni/request';
import type { BackendName } from '../defaults';
import { ZtunnelUnavailableError } from '../errors';
import { decideMeshing, type AmbientSettings } from '../mesh/decision';
import { podInfoFromPod } from '../kube/pod-api';
import { ambientConfigFromAnnotations, type AmbientConfig } from '../redirect/ambient/config';
import { applyAmbient } from '../redirect/ambient/apply';
import { addProbeAddresses, findKubeletUid, installHostProbe, removeHostProbe, removeProbeAddresses, type HostVia } from '../redirect/ambient/host';
import { chooseBackend, removeRedirect } from '../redirect/engine';
import type { NetnsChain } from '../repair/locate';
import type { AttachmentStore } from '../state/attachments';
import { ZdsServer, type ZdsWorkload } from './zds-server';
import type { AgentMetrics } from './metrics';

export interface AmbientAgentOptions {
  decision: AmbientSettings;
  ztunnelSocket?: string;
  backend: BackendName;
  excludeNamespaces: readonly string[];
  /** where the node's probe rules go (tests: a netns they made); default this process's own netns */
  hostNetns?: string;
  /** nftables: the kubelet's uid (default: found in procRoot as Istio finds it, else 0) */
  kubeletUid?: number;
  procRoot?: string;
  zdsTimeoutMs?: number;
}

export interface AmbientAgentDeps {
  pods(): readonly V1Pod[];
  pod(namespace: string, name: string): V1Pod | undefined;
  namespaceLabels(namespace: string): Record<string, string> | undefined;
  locator: NetnsChain;
  attachments: AttachmentStore;
  metrics: AgentMetrics;
  log(line: Record<string, unknown>): void;
  /** Istio's ambient.istio.io/redirection; undefined without an API to write to */
  annotate?: (pod: V1Pod, value: 'enabled' | 'pending' | undefined) => Promise<void>;
}

interface Held {
  uid: string;
  namespace: string;
  name: string;
  serviceAccount: string;
  netns: string;
  fd: number;
  ips: string[];
  /** ztunnel has acked it (else the next snapshot hands it over) */
  acked: boolean;
}

const ENDED = new Set(['Succeeded', 'Failed']);

function addressesOf(pod: V1Pod): string[] {
  const ips = pod.status?.podIPs?.map((p) => p.ip).filter((ip): ip is string => Boolean(ip)) ?? [];
  return ips.length > 0 ? ips : pod.status?.podIP ? [pod.status.podIP] : [];
}

async function hostVia(backend: BackendName, hostNetns: string | undefined): Promise<HostVia> {
  const { backend: chosen } = await chooseBackend({ backend, hostNetns });
  if (chosen.name === 'nftables') return { kind: 'nftables' };
  return { kind: 'iptables', flavour: chosen.name === 'iptables-legacy' ? 'legacy' : chosen.name === 'iptables-nft' ? 'nft' : 'default' };
}

export class AmbientController implements AmbientHandler {
  readonly node: AmbientSettings['node'];
  private readonly held = new Map<string, Held>();
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly retry = new Set<string>();
  private zds!: ZdsServer;
  private retryTimer?: NodeJS.Timeout;
  private via!: HostVia;
  private kubeletUid = 0;

  private constructor(
    private readonly o: AmbientAgentOptions,
    private readonly deps: AmbientAgentDeps,
  ) {
    this.node = o.decision.node;
  }

  static async start(o: AmbientAgentOptions, deps: AmbientAgentDeps): Promise<AmbientController> {
    const c = new AmbientController(o, deps);
    c.via = await hostVia(o.backend, o.hostNetns);
    c.kubeletUid = o.kubeletUid ?? findKubeletUid(o.procRoot) ?? 0;
    await c.reconcileAll();
    await c.installHost();
    c.zds = ZdsServer.start({
      path: o.ztunnelSocket,
      timeoutMs: o.zdsTimeoutMs,
      snapshot: () => c.snapshot(),
      connected: (n) => deps.metrics.ztunnelConnected.set(n),
      sent: (kind, snapshot) => {
        deps.metrics.zdsSent.inc({ kind, snapshot: String(snapshot) });
      },
      ackFailed: (reason) => deps.metrics.zdsAcksFailed.inc({ reason }),
      log: deps.log,
    });
    c.retryTimer = setInterval(() => c.retryFailed(), 2000);
    c.retryTimer.unref();
    deps.log({ level: 'info', msg: 'ambient: serving ztunnel', socket: c.zds.path, pods: c.held.size, hostRules: c.via.kind === 'nftables' ? `nftables (kubelet uid ${c.kubeletUid})` : `iptables-${c.via.flavour} with ipset` });
    return c;
  }

  private get host() {
    return this.o.hostNetns;
  }

  /** What a connecting ztunnel is sent: every pod held, and from then on it has them. */
  private snapshot(): ZdsWorkload[] {
    const out = [...this.held.values()].map((h) => ({ uid: h.uid, info: { name: h.name, namespace: h.namespace, serviceAccount: h.serviceAccount }, netnsFd: h.fd }));
    // Once the snapshot is acked they count as handed over; annotate them enabled.
    setImmediate(() => {
      for (const h of this.held.values()) {
        if (!h.acked && this.zds.connected() > 0) {
          h.acked = true;
          this.annotate(h.namespace, h.name, 'enabled');
        }
      }
    });
    return out;
  }

  /** One change at a time per pod (an ADD and a label change for one pod never interleave). */
  private serial<T>(uid: string, fn: () => Promise<T>): Promise<T> {
    const before = this.queues.get(uid) ?? Promise.resolve();
    const mine = before.then(fn, fn);
    const tail = mine.catch(() => undefined);
    this.queues.set(uid, tail);
    void tail.then(() => {
      if (this.queues.get(uid) === tail) this.queues.delete(uid);
    });
    return mine;
  }

  /** The pod's ambient config when it should be ambient, else undefined. */
  private shouldBe(pod: V1Pod): AmbientConfig | undefined {
    const info = podInfoFromPod(pod);
    info.namespaceLabels = this.deps.namespaceLabels(info.namespace);
    if (info.namespaceLabels === undefined) return undefined;
    try {
      const d = decideMeshing(info, { excludeNamespaces: this.o.excludeNamespaces, ambient: this.o.decision });
      return d.meshed && d.dataplane === 'ambient' ? ambientConfigFromAnnotations(d.annotations, this.node) : undefined;
    } catch (err) {
      this.deps.log({ level: 'warn', msg: 'ambient: the pod\'s annotations are invalid; not enrolled', pod: `${info.namespace}/${info.name}`, error: (err as Error).message });
      return undefined;
    }
  }

  private annotate(namespace: string, name: string, value: 'enabled' | 'pending' | undefined): void {
    const pod = this.deps.pod(namespace, name);
    if (!pod || !this.deps.annotate) return;
    this.deps.annotate(pod, value).catch((err: unknown) => this.deps.log({ level: 'warn', msg: `ambient: could not annotate the pod ambient.istio.io/redirection=${value ?? '(removed)'}`, pod: `${namespace}/${name}`, error: String(err) }));
  }

  private hold(h: Held): void {
    const old = this.held.get(h.uid);
    if (old && old.fd !== h.fd) fs.closeSync(old.fd);
    this.held.set(h.uid, h);
    this.deps.metrics.ambientPods.set(this.held.size);
  }

  private release(uid: string): Held | undefined {
    const h = this.held.get(uid);
    if (!h) return undefined;
    this.held.delete(uid);
    fs.closeSync(h.fd);
    this.deps.metrics.ambientPods.set(this.held.size);
    return h;
  }

  /** The rules in, the pod held, its addresses in the probe set: the part that needs no ztunnel. */
  private async program(o: { uid: string; namespace: string; name: string; netns: string; config: AmbientConfig; ips: string[]; backend: BackendName; verify: 'always' | 'when-replacing'; signal?: AbortSignal; laps?: { lap(phase: 'plan' | 'render' | 'apply'): void } }) {
    const fd = fs.openSync(o.netns, 'r');
    try {
      const report = await applyAmbient({ netns: o.netns, config: o.config, backend: o.backend, verify: o.verify, signal: o.signal, laps: o.laps });
      const serviceAccount = this.deps.pod(o.namespace, o.name)?.spec?.serviceAccountName ?? 'default';
      this.hold({ uid: o.uid, namespace: o.namespace, name: o.name, serviceAccount, netns: o.netns, fd, ips: o.ips, acked: false });
      await addProbeAddresses(this.host, this.via, this.node.ipv6, o.uid, o.ips);
      return report;
    } catch (err) {
      if (this.held.get(o.uid)?.fd === fd) this.release(o.uid);
      else fs.closeSync(fd);
      throw err;
    }
  }

  private workload(h: Held): ZdsWorkload {
    return { uid: h.uid, info: { name: h.name, namespace: h.namespace, serviceAccount: h.serviceAccount }, netnsFd: h.fd };
  }

  /** The CNI ADD of an ambient pod (dispatch.ts): rules, then ztunnel's ack; on failure nothing is left. */
  add(a: Parameters<AmbientHandler['add']>[0]): ReturnType<AmbientHandler['add']> {
    const uid = a.pod.podUid ?? `${a.pod.podNamespace}/${a.pod.podName}`;
    return this.serial(uid, async () => {
      const report = await this.program({ uid, namespace: a.pod.podNamespace, name: a.pod.podName, netns: a.netns, config: a.config, ips: a.ips, backend: a.backend, verify: 'when-replacing', signal: a.signal, laps: a.laps });
      const h = this.held.get(uid)!;
      try {
        await this.zds.addWorkload(this.workload(h));
      } catch (err) {
        // Fail closed: the sandbox must not run redirected to a ztunnel that does not have it.
        this.release(uid);
        await removeProbeAddresses(this.host, this.via, h.ips).catch(() => undefined);
        await removeRedirect({ netns: a.netns, backend: a.backend }).catch((e: unknown) => this.deps.log({ level: 'error', msg: 'ambient: taking the rules out after a failed handover failed too', netns: a.netns, error: String(e) }));
        throw err;
      }
      h.acked = true;
      this.annotate(h.namespace, h.name, 'enabled');
      return { backend: report.backend, rules: report.rules, ...(report.via ? { via: report.via } : {}) };
    });
  }

  /** The CNI DEL (after the rules were removed): ztunnel lets the workload go. */
  deleted(pod: KubernetesArgs): Promise<void> {
    const uid = pod.podUid;
    if (!uid || !this.held.has(uid)) return Promise.resolve();
    return this.serial(uid, () => this.leave(uid, 'the sandbox was deleted'));
  }

  /** The pod is gone or ended: ztunnel drops it, its addresses leave the probe set (its netns goes with it). */
  private async leave(uid: string, why: string): Promise<void> {
    const h = this.release(uid);
    if (!h) return;
    await removeProbeAddresses(this.host, this.via, h.ips).catch((err: unknown) => this.deps.log({ level: 'warn', msg: 'ambient: removing probe addresses failed', error: String(err) }));
    await this.zds.delWorkload(uid).catch((err: unknown) => this.deps.log({ level: 'warn', msg: 'ambient: DelWorkload not acked', pod: `${h.namespace}/${h.name}`, error: String(err) }));
    this.deps.log({ level: 'info', msg: 'ambient: pod left ztunnel', pod: `${h.namespace}/${h.name}`, why });
  }

  /** A pod that should be ambient, running, its netns found: rules reconciled, held, handed to ztunnel when one is connected. */
  private async enroll(pod: V1Pod, config: AmbientConfig, handOver: boolean): Promise<void> {
    const m = pod.metadata!;
    const found = await this.deps.locator.locate(pod);
    if (!found) throw new Error('its network namespace was not found (yet)');
    await this.program({ uid: m.uid!, namespace: m.namespace!, name: m.name!, netns: found.netns, config, ips: addressesOf(pod), backend: this.o.backend, verify: 'always' });
    const h = this.held.get(m.uid!)!;
    if (!handOver) return;
    try {
      await this.zds.addWorkload(this.workload(h));
      h.acked = true;
      this.annotate(h.namespace, h.name, 'enabled');
      this.deps.log({ level: 'info', msg: 'ambient: running pod enrolled', pod: `${m.namespace}/${m.name}`, netns: found.netns, source: found.source });
    } catch (err) {
      // Istio's informer path: the rules stay, the pod is pending, the next snapshot (or a retry) hands it over.
      this.annotate(h.namespace, h.name, 'pending');
      if (!(err instanceof ZtunnelUnavailableError) || this.zds.connected() > 0) throw err;
      this.deps.log({ level: 'info', msg: 'ambient: running pod enrolled; ztunnel gets it when it connects', pod: `${m.namespace}/${m.name}` });
    }
  }

  private async unenroll(pod: V1Pod): Promise<void> {
    const uid = pod.metadata!.uid!;
    const h = this.held.get(uid);
    if (!h) return;
    await removeRedirect({ netns: h.netns, backend: this.o.backend });
    await this.leave(uid, 'no longer ambient');
    this.annotate(h.namespace, h.name, undefined);
  }

  /** One pod, as the API shows it now (Istio's reconcilePod). */
  reconcile(pod: V1Pod, deleted = false): Promise<void> {
    const uid = pod.metadata?.uid;
    if (!uid) return Promise.resolve();
    return this.serial(uid, async () => {
      try {
        if (deleted || ENDED.has(pod.status?.phase ?? '')) {
          await this.leave(uid, deleted ? 'the pod was deleted' : `the pod ${pod.status?.phase}`);
        } else if (!pod.metadata?.deletionTimestamp) {
          const config = this.shouldBe(pod);
          const held = this.held.has(uid);
          if (config && !held && addressesOf(pod).length > 0) await this.enroll(pod, config, true);
          else if (!config && held) await this.unenroll(pod);
        }
        this.retry.delete(uid);
      } catch (err) {
        this.retry.add(uid);
        this.deps.log({ level: 'warn', msg: 'ambient: reconciling the pod failed; retrying', pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, error: (err as Error).message });
      }
    });
  }

  /** Every pod of a namespace whose labels changed. */
  reconcileNamespace(namespace: string): void {
    for (const pod of this.deps.pods()) if (pod.metadata?.namespace === namespace) void this.reconcile(pod);
  }

  private retryFailed(): void {
    for (const pod of this.deps.pods()) if (pod.metadata?.uid && this.retry.has(pod.metadata.uid)) void this.reconcile(pod);
  }

  /**
   * At start: every running pod that should be ambient is found, its rules reconciled in place and held (the
   * snapshot hands it to ztunnel); a pod ADD recorded as ambient that no longer should be loses our rules.
   */
  private async reconcileAll(): Promise<void> {
    const records = this.deps.attachments.list().filter((r) => r.dataplane === 'ambient');
    for (const pod of this.deps.pods()) {
      const uid = pod.metadata?.uid;
      if (!uid || pod.metadata?.deletionTimestamp || ENDED.has(pod.status?.phase ?? '') || addressesOf(pod).length === 0) continue;
      const config = this.shouldBe(pod);
      try {
        if (config) await this.serial(uid, () => this.enroll(pod, config, false));
        else {
          const record = records.find((r) => r.pod?.uid === uid && fs.existsSync(r.netns));
          if (record) {
            await removeRedirect({ netns: record.netns, backend: this.o.backend });
            this.annotate(pod.metadata!.namespace!, pod.metadata!.name!, undefined);
            this.deps.log({ level: 'info', msg: 'ambient: pod no longer ambient since the last agent; its rules removed', pod: `${pod.metadata?.namespace}/${pod.metadata?.name}` });
          }
        }
      } catch (err) {
        this.retry.add(uid);
        this.deps.log({ level: 'warn', msg: 'ambient: reconciling a running pod at start failed; retrying', pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, error: (err as Error).message });
      }
    }
  }

  private async installHost(): Promise<void> {
    const addresses = new Map<string, string>();
    for (const h of this.held.values()) for (const ip of h.ips) addresses.set(ip, h.uid);
    await installHostProbe(this.host, this.via, { snat: { ipv4: this.node.hostProbeSnatIpv4, ipv6: this.node.hostProbeSnatIpv6 }, ipv6: this.node.ipv6, kubeletUid: this.kubeletUid }, addresses);
  }

  /** Readiness: ambient is served once the ZDS socket listens (ztunnel may come later). */
  notReady(): string | undefined {
    return this.zds ? undefined : "ztunnel's ZDS socket is not served yet";
  }

  /** Stops serving ztunnel; with `uninstall`, the node's probe rules go too. Pods keep their rules either way. */
  async stop(uninstall: boolean): Promise<void> {
    clearInterval(this.retryTimer);
    this.zds?.close();
    for (const uid of [...this.held.keys()]) {
      const h = this.held.get(uid)!;
      this.held.delete(uid);
      fs.closeSync(h.fd);
    }
    if (uninstall) await removeHostProbe(this.host, this.via);
  }
}
