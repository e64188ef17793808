/**
 * The node agent: serves the shim's CNI requests on a root-only UNIX socket with a warm engine and a
 * node-scoped pod cache, and exposes /healthz, /readyz, /metrics and /pods (the CLI's completion). Installing
 * the plugin into the node's CNI config and repairing pods are wired in here too; each part stays in its room.
 */
import http from 'node:http';
import type net from 'node:net';
import { AttachmentStore, flushAttachmentWrites } from '../state/attachments';
import { runCni, type CniDeps } from '../cni/dispatch';
import { pluginDeps, type EngineApi, type PluginOptions } from '../standalone/wiring';
import type { RequestLogLine } from '../cni/log';
import type { AddPhase, PhaseSeconds } from '../cni/phases';
import { serveCni, type CniServer } from './shim-socket';
import { peerCredentials } from '../netns/native';
import type { NodePodCache } from '../kube/pod-cache';
import type { V1Pod } from '@kubernetes/client-node';
import { AgentMetrics } from './metrics';
import { buildInfo } from '../installer/build-info';
import type { InstallOptions, InstallWatcher } from '../installer';
import { describeHold, type FightPolicy, type FightReport } from '../installer/fight';
import { Reconciler, type RepairMode } from '../repair/reconciler';
import type { BackendName } from '../redirect/engine';
import type { StopDecider, StopDecision } from './stop-decision';
import type { AmbientAgentOptions, AmbientController } from './ambient';
import type { NamespaceCache } from '../kube/namespace-cache';

import { DEFAULT_AGENT_SOCKET, DEFAULT_HEALTH_PORT } from '../defaults';
export { DEFAULT_HEALTH_PORT };

export interface AgentOptions {
  socketPath?: string;
  healthPort?: number;
  /** Address the health server binds; the DaemonSet runs on the host network, so kubelet probes reach it. */
  healthHost?: string;
  /** Kubernetes: the watch cache of this node's pods. `false` runs without an API server. */
  kubernetes: false | { nodeName: string; kubeconfigPath?: string };
  /** Refuse socket peers that are not root (SO_PEERCRED). */
  requireRootPeer?: boolean;
  /** How long what `--backend auto` found on the host is reused (default a minute; 0: detect on every request). */
  autoDetectionTtlMs?: number;
  /** Bound on one request; the shim's own timeout is longer. */
  requestTimeoutMs?: number;
  /** Where attachment records live (shared with the standalone plugin). */
  stateDir?: string;
  /** Install the plugin into the node's CNI config and keep it there; uninstall on stop when asked. */
  install?: InstallOptions;
  /**
   * On stop: `auto` uninstalls only when the agent's DaemonSet is gone, being deleted or no longer selects this
   * node (stop-decision.ts; needs Kubernetes and `self`), true always, false never. Default false.
   */
  uninstallOnStop?: boolean | 'auto';
  /** Once ready, take the cni.istio.io/not-ready taint off this node (node-taint.ts; needs Kubernetes). */
  removeNotReadyTaint?: boolean;
  /** The agent's own pod (downward API), to find its DaemonSet. */
  self?: { podNamespace: string; podName: string };
  /**
   * A primary CNI that keeps removing our entry (src/installer/fight.ts): the policy's fields override the
   * defaults (5 removals in 60 s, 60 s quiet); false re-inserts every time, for ever.
   */
  fightPolicy?: Partial<FightPolicy> | false;
  /** Extra readiness conditions (the installer's "our entry is in the active config"). */
  readiness?: Array<() => string | undefined>;
  /** The reconciler; needs Kubernetes. Mode `off` (the default here) disables it. */
  repair?: {
    mode: RepairMode;
    resyncMs?: number;
    ratePerSecond?: number;
    burst?: number;
    excludeNamespaces?: readonly string[];
    backend?: BackendName;
    procRoot?: string;
    /** the runtime's CRI socket, to find pods whose ADD we never saw; empty: not asked */
    criSocket?: string;
  };
  log?: (line: Record<string, unknown>) => void;
  /**
   * Ambient: Istio's in-pod rules for ambient pods and ztunnel's ZDS socket (src/agent/ambient.ts); needs
   * Kubernetes. The backend is the one the agent programs pods with.
   */
  ambient?: Omit<AmbientAgentOptions, 'backend' | 'excludeNamespaces' | 'procRoot'> & { backend?: BackendName; criSocket?: string; procRoot?: string };
}

export interface Agent {
  metrics: AgentMetrics;
  ambient?: AmbientController;
  reconciler?: Reconciler;
  attachments: AttachmentStore;
  podCache?: NodePodCache;
  socketPath: string;
  healthPort: number;
  /** Why the agent is not ready; empty when it is. */
  notReadyReasons(): string[];
  stop(): Promise<void>;
}

function defaultLog(line: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), component: 'agent', ...line })}\n`);
}

/** Rejects peers that are not root, where the kernel tells us who they are. */
function rootOnly(socket: net.Socket): string | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) return undefined;
  const { uid } = peerCredentials(fd);
  return uid === 0 ? undefined : `non-root peer (uid ${uid})`;
}

function recordRequest(metrics: AgentMetrics, line: Readonly<RequestLogLine>, phases: Readonly<PhaseSeconds> | undefined): void {
  const result = line.error ? String(line.error.code) : 'ok';
  // A failed ADD's laps say little (the failing phase's time lands wherever the error was caught): not recorded.
  if (phases && !line.error) for (const [phase, seconds] of Object.entries(phases) as Array<[AddPhase, number]>) metrics.addPhase.observe({ phase, backend: line.backend ?? 'none' }, seconds);
  metrics.requests.inc({ command: line.command || 'unknown', result });
  if (line.command === 'ADD') metrics.addDuration.observe({ decision: line.decision ?? 'error' }, line.durationMs / 1000);
  if (line.command === 'ADD' && (line.decision === 'meshed' || line.decision === 'skipped')) {
    metrics.addDecisions.inc({ decision: line.decision, reason: line.decision === 'meshed' ? 'meshed' : line.reason ?? 'unknown' });
  }
  if (line.command === 'ADD' && line.decision === 'meshed' && line.rules) metrics.rulesProgrammed.inc({ backend: line.backend ?? 'unknown' }, line.rules);
}

function isLoopback(address: string | undefined): boolean {
  return address === '::1' || /^(::ffff:)?127\./.test(address ?? '');
}

function serveHealth(agent: () => Agent, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const a = agent();
    if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (req.url === '/readyz') {
      const reasons = a.notReadyReasons();
      res.writeHead(reasons.length === 0 ? 200 : 503, { 'content-type': 'application/json' }).end(`${JSON.stringify({ ready: reasons.length === 0, reasons })}\n`);
    } else if (req.url === '/pods') {
      // Names of this node's pods, for the CLI's shell completion; asked on loopback only, so a node port
      // never hands pod names to the network.
      if (!isLoopback(req.socket.remoteAddress)) return void res.writeHead(403).end();
      const pods = (a.podCache?.pods() ?? []).map((p) => ({ namespace: p.metadata?.namespace ?? '', name: p.metadata?.name ?? '' }));
      res.writeHead(a.podCache ? 200 : 404, { 'content-type': 'application/json' }).end(`${JSON.stringify({ pods })}\n`);
    } else if (req.url === '/metrics') {
      a.metrics.podsCached.set(a.podCache?.pods().length ?? 0);
      a.metrics.registry
        .metrics()
        .then((text) => res.writeHead(200, { 'content-type': a.metrics.registry.contentType }).end(text))
        .catch((err: Error) => res.writeHead(500).end(err.message));
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/**
 * Runs the reconciler: a pass now (pods that started before us), a pass every `resyncMs`, and one pod at a
 * time when the watch says it changed (debounced, since a starting pod changes several times).
 */
function scheduleRepair(
  reconciler: Reconciler,
  resyncMs: number,
  log: (line: Record<string, unknown>) => void,
  subscribe: (handler: (pod: V1Pod) => void) => void,
): () => void {
  const runPass = () => reconciler.pass().then(undefined, (err: unknown) => log({ level: 'warn', msg: 'repair pass failed', error: String(err) }));
  const pending = new Map<string, NodeJS.Timeout>();
  subscribe((pod) => {
    const key = pod.metadata?.uid ?? `${pod.metadata?.namespace}/${pod.metadata?.name}`;
    clearTimeout(pending.get(key));
    const timer = setTimeout(() => {
      pending.delete(key);
      reconciler.reconcile(pod).then(undefined, (err: unknown) => log({ level: 'warn', msg: 'repair failed', error: String(err) }));
    }, 300);
    timer.unref();
    pending.set(key, timer);
  });
  void runPass();
  const interval = setInterval(runPass, resyncMs);
  interval.unref();
  return () => {
    clearInterval(interval);
    for (const t of pending.values()) clearTimeout(t);
  };
}

type Log = (line: Record<string, unknown>) => void;

/** mesh_cni_agent_info: the version and the digests of the binaries we install. */
async function recordBuildInfo(metrics: AgentMetrics, options: AgentOptions): Promise<void> {
  const build = await buildInfo(options.install?.shimPath, options.install?.enginePath);
  metrics.info.set(
    {
      version: build.version,
      shim_sha256: build.shimSha256 ?? '',
      engine_sha256: build.engineSha256 ?? '',
      repair_mode: options.kubernetes && options.repair ? options.repair.mode : 'off',
      backend: options.repair?.backend ?? 'auto',
    },
    1,
  );
}

/** The watch cache of this node's pods; `onPodEvent` hears every pod that was added, changed or deleted. */
async function startPodCache(options: AgentOptions, log: Log, metrics: AgentMetrics, onPodEvent: (pod: V1Pod, deleted: boolean) => void): Promise<NodePodCache | undefined> {
  if (!options.kubernetes) return undefined;
  const { NodePodCache } = await import('../kube/pod-cache');
  return NodePodCache.start({
    ...options.kubernetes,
    onEvent: (event, pod) => onPodEvent(pod, event === 'delete'),
    onError: (err) => log({ level: 'warn', msg: 'pod watch failed; restarting with backoff', error: String(err) }),
    onBadPod: (err, pod) => {
      metrics.badPods.inc();
      log({ level: 'warn', msg: 'left a pod the API server sent out of the cache: it cannot be read', pod: podNameOf(pod), error: String(err) });
    },
  });
}

/** namespace/name of what claims to be a pod, for the log; nothing else of it is repeated. */
function podNameOf(pod: unknown): string {
  const m = (pod as { metadata?: { namespace?: unknown; name?: unknown } } | null)?.metadata;
  return `${typeof m?.namespace === 'string' ? m.namespace : '?'}/${typeof m?.name === 'string' ? m.name : '?'}`;
}

/** The engine, loaded now so the first ADD does not pay for it, with `auto`'s detection warmed up. */
async function warmEngine(options: AgentOptions, log: Log): Promise<EngineApi> {
  const engine = await import('../redirect/engine');
  // A long-running process makes iptables-nft replay templates (src/redirect/iptables/replay.ts).
  const replay = await import('../redirect/iptables/replay');
  replay.enableReplay((e) => log({ level: e.made ? 'info' : 'warn', msg: e.made ? 'iptables rules of a plan now go in by nf_tables replay' : 'iptables rules of a plan stay on iptables-restore', detail: e.detail }));
  // `auto` looks at the host's rules with five programs; once a minute is enough for a node's packet filter.
  engine.rememberAutoDetection(options.autoDetectionTtlMs ?? 60_000);
  void engine.chooseBackend({ backend: 'auto' }).catch(() => undefined);
  return engine;
}

function serveShim(socketPath: string, deps: CniDeps, options: AgentOptions, metrics: AgentMetrics, log: Log): Promise<CniServer> {
  return serveCni(socketPath, (invocation, abandoned) => runCni(invocation, deps, abandoned), {
    authorize: options.requireRootPeer === false ? undefined : rootOnly,
    onReject: (reason) => {
      metrics.peerRejections.inc({ reason: reason.startsWith('non-root') ? 'non-root-peer' : reason });
      log({ level: 'warn', msg: 'refused a connection on the agent socket', reason });
    },
    handlerTimeoutMs: options.requestTimeoutMs ?? 55_000,
  });
}

/** Where a hold is told besides readiness and the metric: an Event on the node, or the log without an API. */
async function tellHold(options: AgentOptions, podCache: NodePodCache | undefined, event: { type: 'held' | 'resumed'; fight: FightReport }, log: Log): Promise<void> {
  const message = event.type === 'held' ? describeHold(event.fight) : `the primary CNI left our entry alone for a while; putting it back into ${event.fight.config}`;
  log({ level: event.type === 'held' ? 'warn' : 'info', msg: event.type === 'held' ? 'holding: the primary CNI keeps removing our entry' : 'resuming: putting our entry back', config: event.fight.config, primary: event.fight.primaryType, advice: event.fight.advice, detail: message });
  if (!options.kubernetes || !podCache) return;
  const { recordNodeEvent } = await import('../kube/actions');
  await recordNodeEvent(podCache.kubeConfig, options.kubernetes.nodeName, event.type === 'held' ? 'PrimaryCNIFight' : 'PrimaryCNIFightOver', message, event.type === 'held' ? 'Warning' : 'Normal').catch((err: unknown) =>
    log({ level: 'warn', msg: 'could not record the Event on the node', error: String(err) }),
  );
}

/** Keeps our entry in the node's CNI config, counting the times it had to be put back, and holds when the primary fights. */
async function keepInstalled(options: AgentOptions, install: InstallOptions, podCache: NodePodCache | undefined, metrics: AgentMetrics, log: Log): Promise<InstallWatcher> {
  const { watchAndRepair, DEFAULT_FIGHT_POLICY } = await import('../installer');
  const fight = options.fightPolicy === false ? undefined : { ...DEFAULT_FIGHT_POLICY, ...options.fightPolicy };
  return watchAndRepair(
    install,
    (event) => {
      if (event.type === 'error') log({ level: 'warn', msg: 'install pass failed; retrying on the next change', trigger: event.trigger, error: String(event.error) });
      else if (event.type === 'held' || event.type === 'resumed') {
        if (event.type === 'held') metrics.installHeld.set({ config: event.fight.config, primary: event.fight.primaryType ?? 'unknown', advice: event.fight.advice }, 1);
        else metrics.installHeld.reset();
        void tellHold(options, podCache, event, log);
      } else if (event.report.config.action === 'reinserted') {
        metrics.reinsertions.inc();
        log({ level: 'info', msg: 'our entry was missing from the active CNI config; put it back', config: event.report.config.path, trigger: event.trigger });
      }
    },
    { fight },
  );
}

/**
 * What SIGTERM does to the plugin. Learning which DaemonSet runs us takes API reads: started in the background,
 * so a slow API never delays readiness; a SIGTERM before it is done waits for it (each read is bounded).
 */
async function stopDecider(options: AgentOptions, podCache: NodePodCache | undefined, log: Log): Promise<() => Promise<StopDecision>> {
  let decider: Promise<StopDecider> | undefined;
  if (options.install && options.uninstallOnStop === 'auto' && podCache && options.kubernetes && options.self) {
    const { StopDecider } = await import('./stop-decision');
    decider = StopDecider.create({ kubeconfigPath: options.kubernetes.kubeconfigPath, nodeName: options.kubernetes.nodeName, ...options.self });
    decider.then(
      (d) => log({ level: 'info', msg: 'on SIGTERM the plugin stays unless this DaemonSet no longer runs here', owner: d.describeOwner() }),
      () => undefined,
    );
  }
  return async () => {
    if (options.uninstallOnStop === true) return { uninstall: true, reason: 'told to uninstall on exit (--uninstall-on-exit=always)' };
    if (options.uninstallOnStop !== 'auto') return { uninstall: false, reason: 'told to leave the plugin in place (--uninstall-on-exit=never)' };
    if (!decider) return { uninstall: false, reason: 'no Kubernetes API or no pod identity (POD_NAMESPACE, POD_NAME) to find the DaemonSet: the plugin stays (fail closed)' };
    return (await decider).decide();
  };
}

interface Repair {
  reconciler?: Reconciler;
  stop(): void;
}

/** The reconciler over the pod cache, its actions counted and logged as each happens. */
async function startRepair(options: AgentOptions, cache: NodePodCache | undefined, attachments: AttachmentStore, metrics: AgentMetrics, log: Log, subscribe: (handler: (pod: V1Pod) => void) => void): Promise<Repair> {
  const r = options.repair;
  if (!options.kubernetes || !cache || !r || r.mode === 'off') return { stop: () => undefined };
  const { repairDeps } = await import('../repair/wiring');
  const deps = await repairDeps({
    kubeConfig: () => cache.kubeConfig,
    nodeName: options.kubernetes.nodeName,
    pods: () => cache.pods(),
    attachments,
    procRoot: r.procRoot,
    criSocket: r.criSocket,
    onLocatorError: (err) => log({ level: 'warn', msg: 'cannot ask the container runtime where pods are; falling back to /proc', error: err.message }),
    backend: r.backend,
    onAction: (action, result) => metrics.repairActions.inc({ action, result }),
  });
  // Logged as each action happens, not when the pass that found it ends (a pass over many pods takes a while).
  deps.namespaceLabels = (namespace) => cache.namespaceLabels(namespace);
  deps.onFinding = (f) => log({ level: 'info', msg: 'repair', pod: `${f.namespace}/${f.name}`, reason: f.reason, action: f.action, actedAt: f.actedAt });
  const reconciler = new Reconciler({ mode: r.mode, excludeNamespaces: r.excludeNamespaces ?? ['kube-system'], backend: r.backend, ratePerSecond: r.ratePerSecond, burst: r.burst }, deps);
  const stopSchedule = scheduleRepair(reconciler, r.resyncMs ?? 30_000, log, subscribe);
  return {
    reconciler,
    stop: () => {
      stopSchedule();
      deps.close();
    },
  };
}

/** The parts a running agent is made of; `stop` takes them down in order. */
interface Parts {
  options: AgentOptions;
  log: Log;
  metrics: AgentMetrics;
  attachments: AttachmentStore;
  socketPath: string;
  podCache?: NodePodCache;
  cniServer?: CniServer;
  watcher?: InstallWatcher;
  repair: Repair;
  stopDecision: () => Promise<StopDecision>;
  stopUntaint: () => void;
  health?: http.Server;
  ambient?: AmbientController;
  namespaces?: NamespaceCache;
  /** why ambient is not served yet (undefined once it is, or when it is off) */
  ambientPending?: string;
}

function notReadyReasons(p: Parts): string[] {
  const reasons: string[] = [];
  if (!p.cniServer) reasons.push('the CNI socket is not being served');
  if (p.podCache && !p.podCache.synced()) reasons.push('the pod cache has not synced with the API server yet');
  if (p.ambientPending) reasons.push(p.ambientPending);
  const held = p.watcher?.held();
  if (held) reasons.push(describeHold(held));
  else if (p.watcher && !p.watcher.ready()) {
    const config = p.watcher.lastReport()?.config;
    reasons.push(config?.action === 'waiting' ? config.reason : 'the active CNI config does not hold our entry yet, or our binaries are missing');
  }
  for (const check of p.options.readiness ?? []) {
    const why = check();
    if (why) reasons.push(why);
  }
  return reasons;
}

/** Uninstalls, or says why the plugin stays. */
async function carryOut(decision: StopDecision, install: InstallOptions, log: Log): Promise<void> {
  if (decision.uninstall) {
    const { uninstall } = await import('../installer');
    const report = await uninstall(install);
    log({ level: 'info', msg: 'uninstalled', reason: decision.reason, actions: report.actions.map((a) => `${a.action} ${a.path}`) });
  } else {
    log({ level: 'info', msg: 'stopping; the plugin stays in place (the shim runs the standalone engine until an agent answers)', reason: decision.reason });
  }
}

async function stopParts(p: Parts): Promise<void> {
  p.stopUntaint();
  const install = p.options.install;
  // Decided first, while the watch and the API client still run; the plugin stays unless told otherwise.
  const decision = install ? await p.stopDecision().catch((err: unknown) => ({ uninstall: false, reason: `deciding failed (${String(err)}): the plugin stays` })) : undefined;
  p.repair.stop();
  await p.watcher?.close();
  // Ambient pods keep their rules; the node's probe rules go only with an uninstall.
  await p.ambient?.stop(decision?.uninstall === true).catch((err: unknown) => p.log({ level: 'warn', msg: 'ambient: stopping failed', error: String(err) }));
  p.namespaces?.stop();
  if (install && decision) await carryOut(decision, install, p.log);
  const health = p.health;
  await Promise.all([p.cniServer?.close(), p.podCache?.stop(), health ? new Promise((r) => health.close(r)) : undefined]);
  // The records of the last ADDs answered (bounded: a hung disk must not hold the stop).
  await flushAttachmentWrites(2000);
  p.cniServer = undefined;
}

function agentOf(p: Parts): Agent {
  return {
    metrics: p.metrics,
    get ambient() {
      return p.ambient;
    },
    reconciler: p.repair.reconciler,
    attachments: p.attachments,
    podCache: p.podCache,
    socketPath: p.socketPath,
    healthPort: p.options.healthPort ?? DEFAULT_HEALTH_PORT,
    notReadyReasons: () => notReadyReasons(p),
    stop: () => stopParts(p),
  };
}

/** Once ready, takes the not-ready taint off this node; a function that stops trying. */
async function untaint(options: AgentOptions, podCache: NodePodCache | undefined, ready: () => boolean, log: Log): Promise<() => void> {
  if (!options.removeNotReadyTaint || !options.kubernetes || !podCache) return () => undefined;
  const { untaintWhenReady } = await import('./node-taint');
  return untaintWhenReady({ kubeConfig: podCache.kubeConfig, nodeName: options.kubernetes.nodeName, ready, log });
}

async function startAmbient(options: AgentOptions, parts: Parts, podCache: NodePodCache, attachments: AttachmentStore, metrics: AgentMetrics, log: Log): Promise<AmbientController> {
  const a = options.ambient!;
  while (!podCache.synced() || !parts.namespaces!.synced()) await new Promise((r) => setTimeout(r, 100));
  const [{ AmbientController }, { nodeNetnsChain }, { annotateRedirection }] = await Promise.all([import('./ambient'), import('../repair/netns-chain'), import('../kube/actions')]);
  return AmbientController.start(
    {
      ...a,
      backend: a.backend ?? options.repair?.backend ?? 'auto',
      excludeNamespaces: options.repair?.excludeNamespaces ?? ['kube-system'],
      procRoot: a.procRoot ?? options.repair?.procRoot,
    },
    {
      pods: () => podCache.pods(),
      pod: (namespace, name) => podCache.get(namespace, name),
      namespaceLabels: (name) => parts.namespaces!.labels(name),
      locator: nodeNetnsChain({ attachments, procRoot: a.procRoot ?? options.repair?.procRoot, criSocket: a.criSocket ?? options.repair?.criSocket }),
      attachments,
      metrics,
      log,
      annotate: await annotateRedirection(() => podCache.kubeConfig),
    },
  );
}

export async function startAgent(options: AgentOptions): Promise<Agent> {
  const log = options.log ?? defaultLog;
  const metrics = new AgentMetrics();
  await recordBuildInfo(metrics, options);
  const socketPath = options.socketPath ?? DEFAULT_AGENT_SOCKET;
  let onPodEvent: ((pod: V1Pod) => void) | undefined;
  let onAmbientPod: ((pod: V1Pod, deleted: boolean) => void) | undefined;
  const podCache = await startPodCache(options, log, metrics, (pod, deleted) => {
    if (!deleted) onPodEvent?.(pod);
    onAmbientPod?.(pod, deleted);
  });
  const attachments = new AttachmentStore(options.stateDir);
  // Requests record attachments where their netconf's state_dir says; the installer writes ours to match.
  // Attachment records are written after the answer, as the log line is (src/state/attachments.ts).
  const plugin: PluginOptions = {
    engine: await warmEngine(options, log),
    podCache,
    recordInBackground: true,
    // Counted once the answer is on its way (a dozen label lookups in prom-client are not the shim's to wait for),
    // and after the ADD's attachment record has started writing, which adds its time to the record phase: both
    // are set for the turn after the answer, the record first.
    onRequest: (line, phases) => setImmediate(() => recordRequest(metrics, line, phases)),
  };
  const deps = pluginDeps(plugin);
  const parts: Parts = { options, log, metrics, attachments, socketPath, podCache, repair: { stop: () => undefined }, stopDecision: async () => ({ uninstall: false, reason: '' }), stopUntaint: () => undefined };
  parts.cniServer = await serveShim(socketPath, deps, options, metrics, log);
  if (options.install) parts.watcher = await keepInstalled(options, options.install, podCache, metrics, log);
  parts.stopDecision = await stopDecider(options, podCache, log);
  if (options.ambient && options.kubernetes && podCache) {
    parts.ambientPending = 'ambient: the namespace watch has not synced and ztunnel\'s socket is not served yet';
    const { NamespaceCache } = await import('../kube/namespace-cache');
    parts.namespaces = await NamespaceCache.start({
      kubeconfigPath: options.kubernetes.kubeconfigPath,
      onChange: (name) => parts.ambient?.reconcileNamespace(name),
      onError: (err) => log({ level: 'warn', msg: 'namespace watch failed; restarting with backoff', error: String(err) }),
    });
    podCache.useNamespaces(parts.namespaces);
    // Started once both watches are synced (the snapshot must hold every ambient pod); until then an ambient
    // pod's ADD is answered 11 and the runtime retries.
    void startAmbient(options, parts, podCache, attachments, metrics, log).then(
      (controller) => {
        parts.ambient = controller;
        plugin.ambient = controller;
        parts.ambientPending = undefined;
        onAmbientPod = (pod, deleted) => void controller.reconcile(pod, deleted);
      },
      (err: unknown) => {
        parts.ambientPending = `ambient could not start: ${(err as Error).message}`;
        log({ level: 'error', msg: 'ambient could not start', error: String(err) });
      },
    );
  }
  parts.repair = await startRepair(options, podCache, attachments, metrics, log, (handler) => (onPodEvent = handler));
  const agent = agentOf(parts);
  parts.stopUntaint = await untaint(options, podCache, () => agent.notReadyReasons().length === 0, log);
  parts.health = await serveHealth(() => agent, options.healthHost ?? '0.0.0.0', agent.healthPort);
  agent.healthPort = (parts.health.address() as net.AddressInfo).port;
  log({ level: 'info', msg: 'agent started', socket: socketPath, healthPort: agent.healthPort, kubernetes: Boolean(options.kubernetes) });
  return agent;
}
