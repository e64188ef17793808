/**
 * The dispatcher: one CNI invocation (env + stdin) in, one response (exit code, stdout, stderr) out. Every
 * command starts with the shared parseRequest; every failure leaves through toCniError. Nothing here touches
 * process.* — main.ts and the agent's socket server both call runCni, which is what makes it testable
 * in-process.
 */
import { NetnsNotFoundError } from '../errors';
import type * as EngineModule from '../redirect/engine';
import type { ProxySettings, RedirectConfig } from '../redirect/config';
import { DEFAULT_AMBIENT_NODE, type AmbientConfig, type AmbientNodeSettings } from '../redirect/ambient/config';
import type { BackendName } from '../defaults';
import type { DecisionOptions } from '../mesh/decision';
import type { KubernetesArgs } from './request';
import { CniCode, CniError, toCniError } from '../errors';
import { AttachmentStore } from '../state/attachments';
import { writeRequestLog, type RequestLogLine } from './log';
import { DEFAULT_LOG_FILE, type LogLevel, type MeshNetConf } from './netconf';
import { classifyNetnsPath, type NetnsPathKind } from '../netns';
import { decidePod, isPromise, type PodSourceDeps } from '../kube/pod-lookup';
import { MAX_STDIN_BYTES, parseRequest, responseVersionOf, type NetworkRequest } from './request';
import { PhaseClock, type PhaseSeconds } from './phases';
import { checkProgramsForBackend } from './status';
import type { CniInvocation, CniResponse, CniVersionJson } from './types';
import { convertResult, CURRENT_VERSION, emptyResult, SUPPORTED_VERSIONS } from './version';

export type Engine = Pick<typeof EngineModule, 'applyRedirect' | 'removeRedirect' | 'checkRedirect'>;

export interface CniDeps extends PodSourceDeps {
  /** the redirect engine; loaded lazily so VERSION and pass-through ADDs never load it */
  engine?: Engine;
  /** the engine's annotation parser (tests stand in for it) */
  buildConfig?: (annotations: Record<string, string>, proxy?: ProxySettings) => RedirectConfig;
  classifyNetns?: (path: string) => NetnsPathKind;
  /** STATUS: resolves when ADDs can be served, throws a CniError (50/51) when not */
  status?: (netconf: MeshNetConf) => Promise<void>;
  /** what ADD saw per attachment (netns path, pod), for the reconciler; DEL and GC prune it. Default: the netconf's state_dir */
  attachments?: AttachmentStore;
  /** where lines go before the netconf (and its log_file) is known; null: stderr only */
  defaultLogFile?: string | null;
  /**
   * Write an ADD's attachment record after answering, not before (the agent: a long-lived process keeps the
   * write going; a failure is logged on a line of its own). The standalone plugin writes before it exits.
   */
  recordInBackground?: boolean;
  /**
   * Keep `backend: auto`'s answer in the netconf's state_dir for a minute (src/redirect/choose-backend.ts): the
   * standalone plugin, a process per request, would otherwise run the detection's programs on every one.
   */
  keepAutoDetection?: boolean;
  /** told about every request once it is answered (the agent's metrics), with an ADD's time by phase */
  onRequest?: (line: Readonly<RequestLogLine>, phases?: Readonly<PhaseSeconds>) => void;
  /** the agent's ambient side (src/agent/ambient.ts); absent in the standalone engine, which then refuses ambient pods */
  ambient?: AmbientHandler;
}

/** An ambient pod's ADD: the rules, then ztunnel's ack. Only the agent holds ztunnel's socket. */
export interface AmbientHandler {
  /** the node-wide settings the in-pod rules are made with */
  node: AmbientNodeSettings;
  /**
   * Programs the pod's rules and hands its netns to ztunnel, resolving once ztunnel acked; on any failure
   * takes the rules out again and rejects (fail closed: the sandbox never runs half enrolled).
   */
  add(a: { pod: KubernetesArgs; netns: string; config: AmbientConfig; backend: BackendName; ips: string[]; signal?: AbortSignal; laps?: PhaseClock }): Promise<{ backend: string; rules: number; via?: string }>;
  /** After DEL took the rules out: ztunnel is told the workload is gone (DelWorkload), if it had it. */
  deleted(pod: KubernetesArgs): Promise<void>;
}

/** What the pod decision is told: the netconf's namespaces and agent, and ambient as installed. */
function decisionOptions(req: NetworkRequest, deps: CniDeps): DecisionOptions {
  const ambient = req.netconf.ambient;
  return {
    excludeNamespaces: req.netconf.excludeNamespaces,
    agentPod: req.netconf.agentPod,
    buildConfig: deps.buildConfig,
    ...(ambient?.enabled ? { ambient: { ...ambient, node: deps.ambient?.node ?? DEFAULT_AMBIENT_NODE } } : {}),
  };
}

/** The pod's addresses from the previous plugin's result (`10.0.0.5/24` → `10.0.0.5`): ADD knows them before the API does. */
function addressesOf(req: NetworkRequest): string[] {
  const ips = (req.prevResult?.result as { ips?: Array<{ address?: unknown }> } | undefined)?.ips ?? [];
  return ips.map((ip) => (typeof ip.address === 'string' ? ip.address.split('/')[0]! : '')).filter(Boolean);
}

interface Outcome {
  stdout: string;
}

const EXIT_FAILURE = 1;

async function loadEngine(deps: CniDeps): Promise<Engine> {
  return deps.engine ?? (await import('../redirect/engine'));
}

function requireNetns(req: NetworkRequest, deps: CniDeps): void {
  const kind = (deps.classifyNetns ?? classifyNetnsPath)(req.netns);
  if (kind === 'missing') throw new CniError(CniCode.UnknownContainer, `CNI_NETNS ${req.netns} does not exist`, 'the pod sandbox may already be gone');
  if (kind === 'not-netns') throw new CniError(CniCode.InvalidEnvironment, `CNI_NETNS ${req.netns} is not a network namespace`);
  if (kind === 'own-netns') throw new CniError(CniCode.InvalidEnvironment, `CNI_NETNS ${req.netns} is the plugin's own network namespace`);
}

function attachmentsFor(req: NetworkRequest, deps: CniDeps): AttachmentStore {
  return deps.attachments ?? new AttachmentStore(req.netconf.stateDir);
}

function keptDetectionDir(req: NetworkRequest, deps: CniDeps): string | undefined {
  return deps.keepAutoDetection ? req.netconf.stateDir : undefined;
}

function podName(req: NetworkRequest): string | undefined {
  return req.kubernetes ? `${req.kubernetes.podNamespace}/${req.kubernetes.podName}` : undefined;
}

async function cmdAdd(req: NetworkRequest, deps: CniDeps, line: RequestLogLine, signal?: AbortSignal, clock?: PhaseClock): Promise<Outcome> {
  requireNetns(req, deps);
  // Converted before any rule is written, so an undecodable prevResult fails with nothing applied.
  const stdout = JSON.stringify(req.prevResult ? convertResult(req.prevResult, req.cniVersion) : emptyResult(req.cniVersion));
  clock?.lap('parse');
  if (!req.kubernetes) {
    Object.assign(line, { decision: 'skipped', reason: 'not-a-kubernetes-pod' });
    return { stdout };
  }
  const notes = line.notes ?? (line.notes = []);
  const found = decidePod(req.kubernetes, req.netconf, decisionOptions(req, deps), deps, notes);
  // Awaited only when the decision had to wait for something (an await is a turn of promise jobs).
  const { decision, source } = isPromise(found) ? await found : found;
  line.source = source;
  clock?.lap('decide');
  if (!decision.meshed) {
    Object.assign(line, { decision: 'skipped', reason: decision.reason });
    return { stdout };
  }
  let report: { backend: string; rules: number; via?: string };
  if (decision.dataplane === 'ambient') {
    if (!deps.ambient) {
      throw new CniError(
        CniCode.TryAgainLater,
        `pod ${req.kubernetes.podNamespace}/${req.kubernetes.podName} is ambient: only the mesh-cni agent can hand it to ztunnel, and the agent is not answering`,
        'the runtime retries the sandbox; it starts once the agent is back',
      );
    }
    report = await deps.ambient.add({ pod: req.kubernetes, netns: req.netns, config: decision.ambient, backend: req.netconf.backend, ips: addressesOf(req), signal, laps: clock });
    line.dataplane = 'ambient';
  } else {
    // The agent's engine is loaded already: no await (a turn of promise jobs) on an ADD's path for it.
    const engine = deps.engine ?? (await loadEngine(deps));
    // A fresh sandbox's one transaction proves its result; the read-back would double the ADD's processes.
    report = await engine.applyRedirect({ netns: req.netns, config: decision.config, backend: req.netconf.backend, keepDetectionIn: keptDetectionDir(req, deps), verify: 'when-replacing', signal, laps: clock });
  }
  line.decision = 'meshed';
  line.backend = report.backend;
  line.rules = report.rules;
  if (report.via) line.via = report.via;
  const k8s = req.kubernetes;
  // The rules are in place: from here nothing may fail the ADD (the record is a shortcut, never a condition).
  let note: string | undefined;
  try {
    const programmedAt = Date.now();
    const record = {
      containerId: req.containerId,
      ifName: req.ifName,
      netns: req.netns,
      pod: { namespace: k8s.podNamespace, name: k8s.podName, uid: k8s.podUid },
      backend: report.backend,
      rules: report.rules,
      ...(decision.dataplane === 'ambient' ? { dataplane: 'ambient' as const } : {}),
    };
    if (deps.recordInBackground) {
      // Started after the answer; the time it takes then is still this ADD's record phase (the agent's
      // metrics are observed after it, src/agent/agent.ts).
      attachmentsFor(req, deps).recordLater(record, programmedAt, (failed) => logLateNote(req, line, failed), clock && ((seconds) => clock.add('record', seconds)));
    } else {
      note = attachmentsFor(req, deps).record({ ...record, programmedAt: new Date(programmedAt).toISOString() });
    }
  } catch (err) {
    note = `attachment state not recorded (${(err as Error).message}); the reconciler will find the netns another way`;
  }
  if (note) notes.push(note);
  clock?.lap('record');
  return { stdout };
}

/** A note learned after the ADD was answered and logged (its record could not be written): a line of its own. */
function logLateNote(req: NetworkRequest, added: RequestLogLine, note: string): void {
  const line: RequestLogLine = { time: new Date().toISOString(), level: 'warn', command: 'ADD', containerId: added.containerId, pod: added.pod, netns: added.netns, decision: 'state-not-recorded', durationMs: 0, notes: [note] };
  // To the log file only: the runtime already has its answer, and with it the stderr copy of the ADD's line.
  writeRequestLog(line, { logFile: req.netconf.logFile, logLevel: req.netconf.logLevel });
}

async function cmdDel(req: NetworkRequest, deps: CniDeps, line: RequestLogLine, signal?: AbortSignal): Promise<Outcome> {
  // DEL is best effort and repeatable: a gone or never-programmed netns is success. A record still being
  // written is waited for, so it cannot land after the removal.
  const store = attachmentsFor(req, deps);
  await store.settled(req.containerId, req.ifName);
  store.forget(req.containerId, req.ifName);
  if (req.netns === '') {
    Object.assign(line, { decision: 'nothing-to-remove', reason: 'no-netns' });
    return { stdout: '' };
  }
  const kind = (deps.classifyNetns ?? classifyNetnsPath)(req.netns);
  if (kind !== 'netns') {
    Object.assign(line, { decision: 'nothing-to-remove', reason: `netns-${kind}` });
    return { stdout: '' };
  }
  const engine = await loadEngine(deps);
  try {
    const { removed } = await engine.removeRedirect({ netns: req.netns, backend: req.netconf.backend, keepDetectionIn: keptDetectionDir(req, deps), signal });
    Object.assign(line, { decision: 'removed', rules: removed });
  } catch (err) {
    if (!(err instanceof NetnsNotFoundError)) throw err;
    Object.assign(line, { decision: 'nothing-to-remove', reason: 'netns-missing' });
  }
  // The rules are out: ztunnel lets the workload go (Istio's RemovePodFromMesh: rules first, then DelWorkload).
  if (req.kubernetes && deps.ambient) await deps.ambient.deleted(req.kubernetes);
  return { stdout: '' };
}

async function cmdCheck(req: NetworkRequest, deps: CniDeps, line: RequestLogLine): Promise<Outcome> {
  requireNetns(req, deps);
  if (!req.kubernetes) {
    Object.assign(line, { decision: 'skipped', reason: 'not-a-kubernetes-pod' });
    return { stdout: '' };
  }
  const notes = line.notes ?? (line.notes = []);
  const { decision, source } = await decidePod(req.kubernetes, req.netconf, decisionOptions(req, deps), deps, notes);
  line.source = source;
  if (!decision.meshed) {
    Object.assign(line, { decision: 'skipped', reason: decision.reason });
    return { stdout: '' };
  }
  const engine = await loadEngine(deps);
  const target = { netns: req.netns, backend: req.netconf.backend, keepDetectionIn: keptDetectionDir(req, deps) };
  const result =
    decision.dataplane === 'ambient'
      ? await (await import('../redirect/ambient/apply')).checkAmbient({ ...target, config: decision.ambient })
      : await engine.checkRedirect({ ...target, config: decision.config });
  if (!result.ok) {
    const what = result.observedRules === 0 ? `no redirect rules in ${req.netns} (the pod's ${result.problems.length} planned rules are all missing)` : `redirect rules in ${req.netns} are missing or differ from the pod's annotations`;
    throw new CniError(CniCode.CheckFailed, what, result.problems.join('\n'));
  }
  line.decision = 'checked';
  return { stdout: '' };
}

async function cmdGc(req: NetworkRequest, deps: CniDeps, line: RequestLogLine): Promise<Outcome> {
  const valid = req.validAttachments ?? [];
  const store = attachmentsFor(req, deps);
  await store.settled();
  const dropped = store.gc(valid);
  Object.assign(line, { decision: 'collected', notes: [`${valid.length} valid attachments, ${dropped} stale records dropped`] });
  return { stdout: '' };
}

async function cmdStatus(req: NetworkRequest, deps: CniDeps, line: RequestLogLine): Promise<Outcome> {
  await (deps.status ?? defaultStatus)(req.netconf);
  line.decision = 'ready';
  return { stdout: '' };
}

/** Standalone readiness: the engine loads and the backend's programs are installed. */
async function defaultStatus(netconf: MeshNetConf): Promise<void> {
  const missing = checkProgramsForBackend(netconf.backend);
  if (missing) throw new CniError(CniCode.PluginNotAvailable, `mesh-cni cannot program pods: ${missing}`, 'install iptables or nftables on the node');
}

function versionAnswer(cniVersion: string): string {
  const answer: CniVersionJson = { cniVersion, supportedVersions: [...SUPPORTED_VERSIONS] };
  return JSON.stringify(answer);
}

const HANDLERS: Record<NetworkRequest['command'], (req: NetworkRequest, deps: CniDeps, line: RequestLogLine, signal?: AbortSignal, clock?: PhaseClock) => Promise<Outcome>> = {
  ADD: cmdAdd,
  DEL: cmdDel,
  CHECK: cmdCheck,
  GC: cmdGc,
  STATUS: cmdStatus,
};

/**
 * Runs one CNI invocation. Never throws: every failure becomes the spec's error JSON and a non-zero exit.
 * `signal` aborts when the caller abandoned the request (the agent's socket server): ADD and DEL then do
 * not start on the netns (code 11), and one already started is finished.
 */
export async function runCni(invocation: CniInvocation, deps: CniDeps = {}, signal?: AbortSignal): Promise<CniResponse> {
  const now = deps.now ?? Date.now;
  const started = now();
  const env = invocation.env;
  const line: RequestLogLine = { time: new Date(started).toISOString(), level: 'info', command: env.CNI_COMMAND ?? '', durationMs: 0 };
  if (env.CNI_CONTAINERID) line.containerId = env.CNI_CONTAINERID;
  if (env.CNI_NETNS) line.netns = env.CNI_NETNS;
  let netconf: MeshNetConf | undefined;
  let response: CniResponse;
  // Only where someone listens: the standalone plugin answers one request and exits.
  const clock = deps.onRequest && env.CNI_COMMAND === 'ADD' ? new PhaseClock() : undefined;
  try {
    const req = parseRequest(invocation);
    if (req.command === 'VERSION') {
      line.level = 'info';
      response = { exitCode: 0, stdout: versionAnswer(req.cniVersion), stderr: '' };
      line.decision = 'version';
    } else {
      netconf = req.netconf;
      if (netconf.deprecations) (line.notes ??= []).push(...netconf.deprecations);
      line.pod = podName(req);
      const outcome = await HANDLERS[req.command](req, deps, line, signal, clock);
      response = { exitCode: 0, stdout: outcome.stdout, stderr: '' };
    }
  } catch (err) {
    const cniError = toCniError(err);
    const version = invocation.stdin.length > MAX_STDIN_BYTES ? CURRENT_VERSION : responseVersionOf(invocation.stdin);
    line.level = 'error';
    line.error = { code: cniError.cniCode, msg: cniError.message };
    response = { exitCode: EXIT_FAILURE, stdout: JSON.stringify(cniError.toJson(version)), stderr: '' };
  }
  line.durationMs = now() - started;
  if (line.notes?.length === 0) delete line.notes;
  if (line.level === 'info' && line.notes && line.source === 'runtime+defaults') line.level = 'warn';
  const quiet = line.command === 'VERSION' || line.command === 'STATUS';
  const level: LogLevel = netconf?.logLevel ?? 'info';
  const logFile = netconf ? netconf.logFile : deps.defaultLogFile === undefined ? DEFAULT_LOG_FILE : deps.defaultLogFile ?? undefined;
  // VERSION and successful STATUS are polled by runtimes; they are logged at debug only.
  const threshold: LogLevel = quiet && line.level === 'info' && level !== 'debug' ? 'warn' : level;
  response.stderr = writeRequestLog(line, { logFile, logLevel: threshold });
  clock?.lap('log');
  deps.onRequest?.(line, clock?.seconds);
  return response;
}
