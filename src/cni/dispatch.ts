/**
 * The dispatcher: one CNI invocation (env + stdin) in, one response (exit code, stdout, stderr) out. Every
 * command starts with the shared parseRequest; every failure leaves through toCniError. It speaks the CNI
 * spec only: which pods are meshed, the redirect engine, the attachment records and the netns check come
 * through `CniDeps` (src/standalone/wiring.ts gives the real ones, to the standalone plugin and to the agent),
 * and each handler returns what it found as a value, from which the request log line is made. Nothing here
 * touches process.*, which is what makes it testable in-process.
 */
import { CniCode, CniError, NetnsNotFoundError, OwnNetnsError, toCniError } from '../errors';
import type { BackendName } from '../defaults';
import { writeRequestLog, type RequestLogLine } from './log';
import { DEFAULT_LOG_FILE, type LogLevel, type MeshNetConf } from './netconf';
import { MAX_STDIN_BYTES, parseRequest, responseVersionOf, type KubernetesArgs, type NetworkRequest } from './request';
import { PhaseClock, type PhaseSeconds } from './phases';
import type { CniInvocation, CniResponse, CniVersionJson } from './types';
import { convertResult, CURRENT_VERSION, emptyResult, SUPPORTED_VERSIONS } from './version';

/** A request for a Kubernetes pod: CNI_ARGS named it. */
export type PodRequest = NetworkRequest & { kubernetes: KubernetesArgs };

/** A meshed pod, as the decision hands it to the engine; what it holds is the decision's and the engine's business. */
export interface Meshed {
  meshed: true;
}

/** Which pods are meshed, and where the facts came from. */
export interface Decided<P extends Meshed> {
  decision: P | { meshed: false; reason: string };
  /** where the pod's facts came from (`cache`, `api`, `runtime`, ...) */
  source: string;
  notes: readonly string[];
}

/** The redirect engine as a CNI command uses it. */
export interface RedirectEngine<P extends Meshed> {
  /** Programs a meshed pod's netns (one transaction per family, nothing of ours left on failure). */
  apply(o: { netns: string; pod: P; k8s: KubernetesArgs; ips: string[]; backend: BackendName; keepDetectionIn?: string; signal?: AbortSignal; laps?: PhaseClock }): Promise<AppliedReport>;
  /** Removes every rule of ours (and lets go of the pod where something else held it); a netns that is gone throws NetnsNotFoundError. */
  remove(o: { netns: string; k8s?: KubernetesArgs; backend: BackendName; keepDetectionIn?: string; signal?: AbortSignal }): Promise<{ removed: number }>;
  /** Whether the netns holds exactly the pod's rules. */
  check(o: { netns: string; pod: P; backend: BackendName; keepDetectionIn?: string }): Promise<{ ok: boolean; problems: string[]; observedRules?: number }>;
}

export interface AppliedReport {
  backend: string;
  rules: number;
  via?: string;
  /** set for a pod whose traffic goes to the node's ztunnel */
  dataplane?: 'ambient';
}

/** What ADD recorded per attachment, for the reconciler; DEL and GC prune it (src/state/attachments.ts). */
export interface AttachmentRecords {
  record(rec: AttachmentFacts & { programmedAt: string }): string | undefined;
  recordLater(rec: AttachmentFacts, programmedAtMs: number, onFailure: (note: string) => void, onStarted?: (seconds: number) => void): void;
  settled(containerId?: string, ifName?: string): Promise<void>;
  forget(containerId: string, ifName: string): void;
  gc(valid: ReadonlyArray<{ containerID: string; ifname: string }>): number;
}

export interface AttachmentFacts {
  containerId: string;
  ifName: string;
  netns: string;
  pod: { namespace: string; name: string; uid?: string };
  backend: string;
  rules: number;
  dataplane?: 'ambient';
}

/** What CNI_NETNS names: a pod's netns, nothing, something else, or the plugin's own netns. */
export type NetnsKind = 'netns' | 'missing' | 'not-netns' | 'own-netns';

export interface CniDeps<P extends Meshed = Meshed> {
  /** the mesh decision over the pod lookup; answers without a promise when nothing has to be waited for */
  decide(req: PodRequest): Decided<P> | Promise<Decided<P>>;
  /** the redirect engine, loaded when a command first needs it (VERSION and pass-through ADDs never load it) */
  engine(): RedirectEngine<P> | Promise<RedirectEngine<P>>;
  /** the attachment records of a state dir */
  attachments(stateDir: string): AttachmentRecords;
  classifyNetns(path: string): NetnsKind;
  /** STATUS: resolves when ADDs can be served, throws a CniError (50/51) when not */
  status(netconf: MeshNetConf): Promise<void>;
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
  now?: () => number;
}

/** What a command found, as a value: the answer's stdout and what the request log line says of it. */
type Outcome = Pick<RequestLogLine, 'decision' | 'reason' | 'source' | 'backend' | 'via' | 'rules' | 'dataplane'> & { stdout: string; notes?: readonly string[] };

type Handler = (req: NetworkRequest, deps: CniDeps, signal?: AbortSignal, clock?: PhaseClock) => Promise<Outcome>;

const EXIT_FAILURE = 1;

/** A promise or any thenable (a test's stand-in may hand one). */
function isPromise<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown } | undefined)?.then === 'function';
}

function requireNetns(req: NetworkRequest, deps: CniDeps): void {
  const kind = deps.classifyNetns(req.netns);
  if (kind === 'missing') throw new CniError(CniCode.UnknownContainer, `CNI_NETNS ${req.netns} does not exist`, 'the pod sandbox may already be gone');
  if (kind === 'not-netns') throw new CniError(CniCode.InvalidEnvironment, `CNI_NETNS ${req.netns} is not a network namespace`);
  if (kind === 'own-netns') throw new CniError(CniCode.InvalidEnvironment, `CNI_NETNS ${req.netns} is the plugin's own network namespace`);
}

function keptDetectionDir(req: NetworkRequest, deps: CniDeps): string | undefined {
  return deps.keepAutoDetection ? req.netconf.stateDir : undefined;
}

function podName(req: NetworkRequest): string | undefined {
  return req.kubernetes ? `${req.kubernetes.podNamespace}/${req.kubernetes.podName}` : undefined;
}

/** The pod's addresses from the previous plugin's result (`10.0.0.5/24` → `10.0.0.5`): ADD knows them before the API does. */
function addressesOf(req: NetworkRequest): string[] {
  const ips = (req.prevResult?.result as { ips?: Array<{ address?: unknown }> } | undefined)?.ips ?? [];
  return ips.map((ip) => (typeof ip.address === 'string' ? ip.address.split('/')[0]! : '')).filter(Boolean);
}

function isPodRequest(req: NetworkRequest): req is PodRequest {
  return req.kubernetes !== undefined;
}

async function cmdAdd(req: NetworkRequest, deps: CniDeps, signal?: AbortSignal, clock?: PhaseClock): Promise<Outcome> {
  requireNetns(req, deps);
  // Converted before any rule is written, so an undecodable prevResult fails with nothing applied.
  const stdout = JSON.stringify(req.prevResult ? convertResult(req.prevResult, req.cniVersion) : emptyResult(req.cniVersion));
  clock?.lap('parse');
  if (!isPodRequest(req)) return { stdout, decision: 'skipped', reason: 'not-a-kubernetes-pod' };
  const found = deps.decide(req);
  // Awaited only when the decision had to wait for something (an await is a turn of promise jobs).
  const { decision, source, notes } = isPromise(found) ? await found : found;
  clock?.lap('decide');
  if (!decision.meshed) return { stdout, decision: 'skipped', reason: decision.reason, source, notes };
  // The agent's engine is loaded already: no await (a turn of promise jobs) on an ADD's path for it.
  const loaded = deps.engine();
  const engine = isPromise(loaded) ? await loaded : loaded;
  const report = await engine.apply({ netns: req.netns, pod: decision, k8s: req.kubernetes, ips: addressesOf(req), backend: req.netconf.backend, keepDetectionIn: keptDetectionDir(req, deps), signal, laps: clock });
  // The rules are in place: from here nothing may fail the ADD (the record is a shortcut, never a condition).
  const recorded = recordAttachment(req, report, deps, clock);
  clock?.lap('record');
  return { stdout, decision: 'meshed', source, backend: report.backend, rules: report.rules, ...(report.via ? { via: report.via } : {}), ...(report.dataplane ? { dataplane: report.dataplane } : {}), notes: recorded ? [...notes, recorded] : notes };
}

/** Records what ADD programmed; a note when the record could not be written (the reconciler finds the netns another way). */
function recordAttachment(req: PodRequest, report: AppliedReport, deps: CniDeps, clock?: PhaseClock): string | undefined {
  const k8s = req.kubernetes;
  try {
    const programmedAt = Date.now();
    const record: AttachmentFacts = {
      containerId: req.containerId,
      ifName: req.ifName,
      netns: req.netns,
      pod: { namespace: k8s.podNamespace, name: k8s.podName, uid: k8s.podUid },
      backend: report.backend,
      rules: report.rules,
      ...(report.dataplane ? { dataplane: report.dataplane } : {}),
    };
    const store = deps.attachments(req.netconf.stateDir);
    if (!deps.recordInBackground) return store.record({ ...record, programmedAt: new Date(programmedAt).toISOString() });
    // Started after the answer; the time it takes then is still this ADD's record phase (the agent's metrics
    // are observed after it, src/agent/agent.ts).
    store.recordLater(record, programmedAt, (failed) => logLateNote(req, failed), clock && ((seconds) => clock.add('record', seconds)));
    return undefined;
  } catch (err) {
    return `attachment state not recorded (${(err as Error).message}); the reconciler will find the netns another way`;
  }
}

/** A note learned after the ADD was answered and logged (its record could not be written): a line of its own. */
function logLateNote(req: PodRequest, note: string): void {
  const line: RequestLogLine = { time: new Date().toISOString(), level: 'warn', command: 'ADD', containerId: req.containerId, pod: podName(req), netns: req.netns, decision: 'state-not-recorded', durationMs: 0, notes: [note] };
  // To the log file only: the runtime already has its answer, and with it the stderr copy of the ADD's line.
  writeRequestLog(line, { logFile: req.netconf.logFile, logLevel: req.netconf.logLevel });
}

async function cmdDel(req: NetworkRequest, deps: CniDeps, signal?: AbortSignal): Promise<Outcome> {
  // DEL is best effort and repeatable: a gone or never-programmed netns is success. A record still being
  // written is waited for, so it cannot land after the removal.
  const store = deps.attachments(req.netconf.stateDir);
  await store.settled(req.containerId, req.ifName);
  store.forget(req.containerId, req.ifName);
  if (req.netns === '') return { stdout: '', decision: 'nothing-to-remove', reason: 'no-netns' };
  const kind = deps.classifyNetns(req.netns);
  if (kind !== 'netns') return { stdout: '', decision: 'nothing-to-remove', reason: `netns-${kind}` };
  const engine = await deps.engine();
  try {
    const { removed } = await engine.remove({ netns: req.netns, ...(req.kubernetes ? { k8s: req.kubernetes } : {}), backend: req.netconf.backend, keepDetectionIn: keptDetectionDir(req, deps), signal });
    return { stdout: '', decision: 'removed', rules: removed };
  } catch (err) {
    if (!(err instanceof NetnsNotFoundError || err instanceof OwnNetnsError)) throw err;
    // Own: the path named our own netns by the time the engine opened it, as classifying it above would say.
    return { stdout: '', decision: 'nothing-to-remove', reason: err instanceof OwnNetnsError ? 'netns-own-netns' : 'netns-missing' };
  }
}

async function cmdCheck(req: NetworkRequest, deps: CniDeps): Promise<Outcome> {
  requireNetns(req, deps);
  if (!isPodRequest(req)) return { stdout: '', decision: 'skipped', reason: 'not-a-kubernetes-pod' };
  const { decision, source, notes } = await deps.decide(req);
  if (!decision.meshed) return { stdout: '', decision: 'skipped', reason: decision.reason, source, notes };
  const engine = await deps.engine();
  const result = await engine.check({ netns: req.netns, pod: decision, backend: req.netconf.backend, keepDetectionIn: keptDetectionDir(req, deps) });
  if (!result.ok) {
    const what = result.observedRules === 0 ? `no redirect rules in ${req.netns} (the pod's ${result.problems.length} planned rules are all missing)` : `redirect rules in ${req.netns} are missing or differ from the pod's annotations`;
    throw new CniError(CniCode.CheckFailed, what, result.problems.join('\n'));
  }
  return { stdout: '', decision: 'checked', source, notes };
}

async function cmdGc(req: NetworkRequest, deps: CniDeps): Promise<Outcome> {
  const valid = req.validAttachments ?? [];
  const store = deps.attachments(req.netconf.stateDir);
  await store.settled();
  const dropped = store.gc(valid);
  return { stdout: '', decision: 'collected', notes: [`${valid.length} valid attachments, ${dropped} stale records dropped`] };
}

async function cmdStatus(req: NetworkRequest, deps: CniDeps): Promise<Outcome> {
  await deps.status(req.netconf);
  return { stdout: '', decision: 'ready' };
}

function versionAnswer(cniVersion: string): string {
  const answer: CniVersionJson = { cniVersion, supportedVersions: [...SUPPORTED_VERSIONS] };
  return JSON.stringify(answer);
}

const HANDLERS: Record<NetworkRequest['command'], Handler> = {
  ADD: cmdAdd,
  DEL: cmdDel,
  CHECK: cmdCheck,
  GC: cmdGc,
  STATUS: cmdStatus,
};

/** The log line's fields from what a command found; a line with notes decided from assumed facts is a warning. */
function describe(line: RequestLogLine, outcome: Outcome): void {
  const { stdout: _stdout, notes, ...fields } = outcome;
  Object.assign(line, fields);
  if (notes && notes.length > 0) line.notes = [...(line.notes ?? []), ...notes];
}

/**
 * Runs one CNI invocation. Never throws: every failure becomes the spec's error JSON and a non-zero exit.
 * `signal` aborts when the caller abandoned the request (the agent's socket server): ADD and DEL then do
 * not start on the netns (code 11), and one already started is finished.
 */
export async function runCni<P extends Meshed>(invocation: CniInvocation, deps: CniDeps<P>, signal?: AbortSignal): Promise<CniResponse> {
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
      response = { exitCode: 0, stdout: versionAnswer(req.cniVersion), stderr: '' };
      line.decision = 'version';
    } else {
      netconf = req.netconf;
      if (netconf.deprecations) line.notes = [...netconf.deprecations];
      line.pod = podName(req);
      const outcome = await HANDLERS[req.command](req, deps as unknown as CniDeps, signal, clock);
      describe(line, outcome);
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
