/**
 * A pod as the CLI commands see it: read from the API server, checked to be on this node, its netns found
 * the way the reconciler finds it (what ADD recorded, then a /proc scan), and the Events mesh-cni wrote on it.
 * @kubernetes/client-node is loaded only here, and only by commands that name a pod or list the node's pods.
 */
import type { CoreV1Api, KubeConfig, V1Pod } from '@kubernetes/client-node';
import { AttachmentStore, type AttachmentRecord } from '../cni/attachments';
import { ApiUnavailableError, MeshCniError, NetnsNotFoundError, PodNetnsUnknownError, PodNotFoundError, PodNotOnNodeError } from '../errors';
import { fromProcCgroups, pathExists, recordsForPod } from '../repair/locate';
import { fromCri } from '../repair/cri';
import { decideMeshing } from '../cni/decision';
import { podInfoFromPod } from '../cni/pod-api';
import type { RedirectConfig } from '../redirect/config';
import type { BackendName } from '../redirect/engine';
import { Reconciler, type Finding } from '../repair/reconciler';

export const POD_REF = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$/;

export interface PodRef {
  namespace: string;
  name: string;
}

/** For yargs' .check(): a message (usage error, exit 2) or true. */
export function checkPodRef(value: unknown, flag: string): true | string {
  if (value === undefined) return true;
  return typeof value === 'string' && POD_REF.test(value) ? true : `${flag} must be NAMESPACE/POD (got ${JSON.stringify(value)})`;
}

export function parsePodRef(value: string): PodRef {
  const m = POD_REF.exec(value);
  if (!m) throw new MeshCniError(`not a NAMESPACE/POD: ${JSON.stringify(value)}`);
  return { namespace: m[1], name: m[3] };
}

export interface Kube {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
}

const API_TIMEOUT_MS = 10_000;

/** A kubeconfig file, or the in-cluster service account; refuses early when there is neither. */
export async function connectKube(kubeconfigPath: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<Kube> {
  if (!kubeconfigPath && !env.KUBERNETES_SERVICE_HOST) {
    throw new ApiUnavailableError('no API server to ask: no --kubeconfig given and not running in a cluster');
  }
  const { loadKubeConfig } = await import('../kube/pod-cache');
  let kubeConfig: KubeConfig;
  try {
    kubeConfig = await loadKubeConfig(kubeconfigPath);
  } catch (err) {
    throw new ApiUnavailableError(`cannot load the kubeconfig: ${(err as Error).message}`, err);
  }
  const k8s = await import('@kubernetes/client-node');
  return { kubeConfig, core: kubeConfig.makeApiClient(k8s.CoreV1Api) };
}

function httpCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'number' ? code : undefined;
}

/** An API call bounded in time, with failures turned into ApiUnavailableError (the message says which call). */
export async function apiCall<T>(what: string, call: () => Promise<T>, timeoutMs = API_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    return await Promise.race([call(), late]);
  } catch (err) {
    const status = httpCode(err);
    const why = status ? `the API server answered ${status}` : (err as Error).message.split('\n')[0];
    const wrapped = new ApiUnavailableError(`${what}: ${why}`, err);
    (wrapped as { status?: number }).status = status;
    throw wrapped;
  } finally {
    clearTimeout(timer);
  }
}

export async function getPod(kube: Kube, ref: PodRef): Promise<V1Pod> {
  try {
    return await apiCall(`reading pod ${ref.namespace}/${ref.name}`, () => kube.core.readNamespacedPod(ref));
  } catch (err) {
    if ((err as { status?: number }).status === 404) throw new PodNotFoundError(ref.namespace, ref.name);
    throw err;
  }
}

export function requireOnNode(pod: V1Pod, nodeName: string | undefined): void {
  if (nodeName === undefined) return;
  const podNode = pod.spec?.nodeName;
  if (podNode !== nodeName) throw new PodNotOnNodeError(`${pod.metadata?.namespace}/${pod.metadata?.name}`, podNode, nodeName);
}

/** A namespace's labels (ambient can be enabled there); undefined when it cannot be read. */
export async function namespaceLabels(kube: Kube, namespace: string): Promise<Record<string, string> | undefined> {
  try {
    const ns = await apiCall(`reading namespace ${namespace}`, () => kube.core.readNamespace({ name: namespace }));
    return ns.metadata?.labels ?? {};
  } catch {
    return undefined;
  }
}

/** The pods of node `nodeName` (of every node when undefined), sorted by NAMESPACE/POD. */
export async function listNodePods(kube: Kube, nodeName: string | undefined, namespace?: string, timeoutMs?: number): Promise<V1Pod[]> {
  const fieldSelector = nodeName === undefined ? undefined : `spec.nodeName=${nodeName}`;
  const list = await apiCall(
    nodeName === undefined ? 'listing pods' : `listing the pods of node ${nodeName}`,
    () => (namespace ? kube.core.listNamespacedPod({ namespace, fieldSelector }) : kube.core.listPodForAllNamespaces({ fieldSelector })),
    timeoutMs,
  );
  return [...list.items].sort((a, b) => `${a.metadata?.namespace}/${a.metadata?.name}`.localeCompare(`${b.metadata?.namespace}/${b.metadata?.name}`));
}


/** What ADD recorded for this pod, newest sandbox first. */
export function recordsFor(store: AttachmentStore, pod: V1Pod): AttachmentRecord[] {
  return recordsForPod(store.list(), pod);
}

export interface NetnsLocation {
  /** the netns path, when one exists now */
  netns?: string;
  /** how it was found: `attachment` (what ADD recorded), `cri` (the runtime) or `proc` (a process in the pod's cgroup) */
  source?: 'attachment' | 'cri' | 'proc';
  /** the newest path ADD recorded, also when it no longer exists */
  recorded?: string;
  record?: AttachmentRecord;
}

/** The reconciler's order (src/repair/locate.ts), keeping what ADD recorded so "gone" can name the path. */
export async function locatePodNetns(pod: V1Pod, stateDir: string, procRoot: string, criSocket = ''): Promise<NetnsLocation> {
  const records = recordsFor(new AttachmentStore(stateDir), pod);
  const live = records.find((r) => pathExists(r.netns));
  if (live) return { netns: live.netns, source: 'attachment', recorded: live.netns, record: live };
  if (criSocket) {
    const cri = fromCri(criSocket);
    try {
      const fromRuntime = await cri(pod);
      if (fromRuntime) return { netns: fromRuntime, source: 'cri', recorded: records[0]?.netns, record: records[0] };
    } finally {
      cri.close();
    }
  }
  const fromProc = await fromProcCgroups(procRoot)(pod);
  if (fromProc) return { netns: fromProc, source: 'proc', recorded: records[0]?.netns, record: records[0] };
  return { recorded: records[0]?.netns, record: records[0] };
}

export interface LastAction {
  /** `event`: an Event mesh-cni wrote on the pod; `attachment`: the ADD that programmed it */
  source: 'event' | 'attachment';
  reason: string;
  message: string;
  at: string;
}

/** The Events mesh-cni wrote, newest per pod uid (or namespace/name when the Event carries no uid). */
export async function meshCniEvents(kube: Kube, namespace?: string): Promise<Map<string, LastAction>> {
  const fieldSelector = 'source=mesh-cni';
  const list = await apiCall('listing Events', () =>
    namespace ? kube.core.listNamespacedEvent({ namespace, fieldSelector }) : kube.core.listEventForAllNamespaces({ fieldSelector }),
  );
  const newest = new Map<string, LastAction>();
  for (const e of list.items) {
    const at = (e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp)?.toISOString?.() ?? String(e.lastTimestamp ?? '');
    const key = e.involvedObject.uid ?? `${e.involvedObject.namespace}/${e.involvedObject.name}`;
    const previous = newest.get(key);
    if (!previous || previous.at < at) newest.set(key, { source: 'event', reason: e.reason ?? '', message: e.message ?? '', at });
  }
  return newest;
}

/**
 * The Events, or none and a sentence saying why: a pods/explain row without them still stands (LAST ACTION then
 * shows what ADD recorded), but the reader must learn that it is incomplete, above all on a 403.
 */
/** The Events, or none and a warning saying why they could not be read. */
export interface EventsOrWhy {
  events: Map<string, LastAction>;
  warning?: string;
}

export async function meshCniEventsOrWhy(kube: Kube, namespace?: string): Promise<EventsOrWhy> {
  try {
    return { events: await meshCniEvents(kube, namespace) };
  } catch (err) {
    const status = (err as { status?: number }).status;
    const grant = status === 403 ? ': the service account may not list events (install/10-rbac.yaml grants it)' : '';
    return { events: new Map(), warning: `last actions are incomplete, ${(err as Error).message}${grant}` };
  }
}

/** The newest of the pod's mesh-cni Events and the ADD that programmed it. */
export function lastActionFor(pod: V1Pod, events: Map<string, LastAction>, record: AttachmentRecord | undefined): LastAction | undefined {
  const event = events.get(pod.metadata?.uid ?? '') ?? events.get(`${pod.metadata?.namespace}/${pod.metadata?.name}`);
  const add: LastAction | undefined = record
    ? { source: 'attachment', reason: 'Programmed', message: `ADD programmed ${record.rules} rules with ${record.backend}`, at: record.programmedAt }
    : undefined;
  if (!event) return add;
  if (!add) return event;
  return event.at >= add.at ? event : add;
}

/** "3m ago" for a person; JSON keeps the timestamp. */
export function ago(iso: string, now = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (!Number.isFinite(seconds)) return iso;
  if (seconds < 90) return `${seconds}s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}

export interface Target {
  netns: string;
  /** with --pod: the pod and the API it came from */
  pod?: V1Pod;
  ref?: PodRef;
}

export interface TargetArgs {
  netns?: string;
  pod?: string;
  kubeconfig?: string;
  'node-name'?: string;
  'state-dir': string;
  'proc-root': string;
  'cri-socket': string;
}

/** --netns as given, or the netns of --pod: from the API, on this node, then located like the reconciler does. */
export async function resolveTarget(args: TargetArgs): Promise<Target> {
  if (args.netns !== undefined) return { netns: args.netns };
  const ref = parsePodRef(args.pod ?? '');
  const pod = await getPod(await connectKube(args.kubeconfig), ref);
  requireOnNode(pod, args['node-name']);
  const where = await locatePodNetns(pod, args['state-dir'], args['proc-root'], args['cri-socket']);
  if (where.netns) return { netns: where.netns, pod, ref };
  const id = `${ref.namespace}/${ref.name}`;
  if (where.recorded) throw new NetnsNotFoundError(where.recorded, undefined, `ADD recorded it for ${id}, but the sandbox is gone; kubelet starts a new one, or delete the pod`);
  throw new PodNetnsUnknownError(id, args['state-dir']);
}

/** The config the plugin would program for this pod; a pod the plugin would leave alone is an error here. */
export function podConfig(pod: V1Pod, excludeNamespaces: readonly string[]): RedirectConfig {
  const id = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
  if (pod.spec?.hostNetwork) throw new MeshCniError(`pod ${id} uses the host network; mesh-cni never redirects it`);
  const decision = decideMeshing(podInfoFromPod(pod), { excludeNamespaces });
  if (!decision.meshed) {
    throw new MeshCniError(`pod ${id} is not meshed (${decision.reason}); the plugin leaves it alone`, {
      hint: `mesh-cni explain ${id} shows why; to program it anyway pass --netns with -a annotations`,
    });
  }
  return decision.config;
}

export interface InspectSettings {
  nodeName: string;
  namespace?: string;
  stateDir: string;
  procRoot: string;
  criSocket: string;
  backend: BackendName;
  excludeNamespaces: readonly string[];
}

/**
 * Every pod of this node looked at by the reconciler itself (`inspect`, which never acts), with the real
 * netns locator and rule check the agent uses, so the CLI and the agent judge a pod the same way.
 */
export async function inspectNodePods(kube: Kube, s: InspectSettings): Promise<Array<{ pod: V1Pod; finding: Finding }>> {
  const pods = await listNodePods(kube, s.nodeName, s.namespace);
  const { repairDeps } = await import('../repair/wiring');
  const deps = await repairDeps({ kubeConfig: kube.kubeConfig, nodeName: s.nodeName, pods: () => pods, attachments: new AttachmentStore(s.stateDir), procRoot: s.procRoot, criSocket: s.criSocket, backend: s.backend });
  const namespaces = new Map<string, Promise<Record<string, string> | undefined>>();
  deps.namespaceLabels = (namespace) => {
    if (!namespaces.has(namespace)) namespaces.set(namespace, namespaceLabels(kube, namespace));
    return namespaces.get(namespace)!;
  };
  try {
    const reconciler = new Reconciler({ mode: 'off', excludeNamespaces: s.excludeNamespaces, backend: s.backend, dryRun: true }, deps);
    const out: Array<{ pod: V1Pod; finding: Finding }> = [];
    for (const pod of pods) out.push({ pod, finding: await reconciler.inspect(pod) });
    return out;
  } finally {
    deps.close();
  }
}

export interface PodCounts {
  total: number;
  /** pods the plugin redirects (healthy + broken + unknown) */
  meshed: number;
  healthy: number;
  broken: number;
  /** meshed pods whose rules could not be judged (no IP yet, netns not found) */
  unknown: number;
  /** pods the plugin leaves alone (not meshed, host network, terminating) */
  skipped: number;
}

export function countFindings(findings: readonly Finding[]): PodCounts {
  const n = (v: Finding['verdict']) => findings.filter((f) => f.verdict === v).length;
  const healthy = n('healthy');
  const broken = n('broken');
  const unknown = n('unknown');
  return { total: findings.length, meshed: healthy + broken + unknown, healthy, broken, unknown, skipped: n('not-meshed') + n('skipped') };
}
