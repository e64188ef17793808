/**
 * Pod metadata, fastest source first. Our own agent pods and excluded namespaces are decided from CNI_ARGS
 * before anything is looked up (so the agent can start while the API or its kubeconfig is unavailable).
 * Then the agent's watch cache (an interface the agent implements), then a skip the runtime's annotations
 * make certain (no API call for a pod that is clearly not meshed), then a GET with the netconf's kubeconfig,
 * retried with backoff for a bounded time and then answered with code 11 so kubelet retries.
 *
 * What annotations cannot tell (DISABLE_ENVOY, the proxy type, the uid/gid, the proxy's env, the labels) is
 * never guessed on a path that can program rules: it comes from the cache or the GET. Only when Kubernetes is
 * turned off (no kubeconfig in the netconf: `--no-kubernetes`) is a pod decided from its annotations alone,
 * and the notes name every fact that was assumed. Never a silent pass-through: when no source can tell,
 * ADD fails (fail closed).
 */
import { CniCode, CniError, RetryableLookupError } from '../errors';
import {
  certainSkipFromAnnotations,
  decideMeshing,
  isOwnAgentPod,
  needsNamespaceLabels,
  type AgentPodMatch,
  type AmbientOptions,
  type DecisionOptions,
  type MeshDecision,
  type PodInfo,
} from '../mesh/decision';
import { RecentMap } from '../caches';
import { checkEnablementSelectors, DEFAULT_ENABLEMENT_SELECTORS, type EnablementSelector } from '../mesh/enablement';
import { readKubeconfig } from './kubeconfig';
import { getNamespaceJson, getPodJson, namespaceLabelsFromNamespace, podInfoFromPod } from './pod-api';

/** The agent's node-scoped pod cache; undefined means "not in the cache", not "does not exist". */
export interface PodCache {
  /** a cache in memory answers at once (no promise: an ADD's decision then takes no turn of promise jobs) */
  lookup(namespace: string, name: string, uid?: string): PodInfo | undefined | Promise<PodInfo | undefined>;
  /** the namespace's labels; undefined when they cannot be read */
  namespaceLabels?(namespace: string): Promise<Record<string, string> | undefined>;
  /**
   * True while the watch is synced and connected: a pod bound to this node that is missing from the cache
   * is only moments behind (the ADD raced the watch event), so it is waited for rather than fetched.
   */
  watching?(): boolean;
}

/**
 * How long an ADD waits for a pod to reach a healthy watch cache before it asks the API server itself.
 * kubelet only runs the sandbox of a pod already bound to the node, so the watch event is normally on
 * its way; a GET per pod from every node is the load the cache exists to avoid.
 */
export const CACHE_WAIT_MS = 3000;

/** One GET of the pod object; throws RetryableLookupError for failures worth retrying. */
export type FetchPod = (kubeconfig: string, namespace: string, name: string, timeoutMs: number) => Promise<unknown>;
/** One GET of the namespace object. */
export type FetchNamespace = (kubeconfig: string, namespace: string, timeoutMs: number) => Promise<unknown>;

export const DEFAULT_POD_LOOKUP_TIMEOUT_MS = 30_000;

export interface PodSourceDeps {
  podCache?: PodCache;
  fetchPod?: FetchPod;
  fetchNamespace?: FetchNamespace;
  /** total time a GET is retried before code 11; Istio waits up to 30 s */
  podLookupTimeoutMs?: number;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
}

export type PodSourceName = 'cni-args' | 'runtime' | 'cache' | 'api' | 'runtime+defaults';

export interface PodDecision {
  decision: MeshDecision;
  source: PodSourceName;
  /** what the request log should know: a late lookup, an unreadable namespace, the facts assumed */
  notes: string[];
}

/** The pod a CNI request is for, as the runtime named it in CNI_ARGS. */
export interface KubernetesArgs {
  podName: string;
  podNamespace: string;
  podUid?: string;
}

/**
 * What a pod's decision needs of a CNI request: the pod, and the netconf's Kubernetes settings (its kubeconfig,
 * the namespaces excluded, our own agent's pods) and the annotations the runtime passed.
 */
export interface PodRequest {
  kubernetes: KubernetesArgs;
  netconf: PodNetconf;
}

interface PodNetconf {
  kubeconfig?: string;
  runtimeAnnotations?: Record<string, string>;
  excludeNamespaces: readonly string[];
  agentPod: AgentPodMatch;
  /** the netconf's ambient field (src/cni/netconf.ts NetconfAmbient) */
  ambient?: PodNetconfAmbient;
}

interface PodNetconfAmbient {
  enabled: boolean;
  selectors?: readonly unknown[];
  systemNamespace: string;
}

const defaultFetchPod: FetchPod = (kubeconfig, namespace, name, timeoutMs) =>
  getPodJson(readKubeconfig(kubeconfig), namespace, name, timeoutMs);

const defaultFetchNamespace: FetchNamespace = (kubeconfig, namespace, timeoutMs) => getNamespaceJson(readKubeconfig(kubeconfig), namespace, timeoutMs);

const NAMESPACE_TIMEOUT_MS = 2000;

const realSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function getPodWithRetry(k8s: KubernetesArgs, kubeconfig: string, deps: PodSourceDeps, notes: string[]): Promise<PodInfo> {
  const now = deps.now ?? Date.now;
  const sleep = deps.sleep ?? realSleep;
  const fetchPod = deps.fetchPod ?? defaultFetchPod;
  const budget = deps.podLookupTimeoutMs ?? DEFAULT_POD_LOOKUP_TIMEOUT_MS;
  const deadline = now() + budget;
  let backoff = 100;
  let attempts = 0;
  let lastProblem = '';
  for (;;) {
    attempts++;
    const remaining = deadline - now();
    try {
      const pod = podInfoFromPod(await fetchPod(kubeconfig, k8s.podNamespace, k8s.podName, Math.max(100, Math.min(5000, remaining))));
      // A pod recreated under the same name is a different pod: wait for the one this sandbox belongs to.
      if (k8s.podUid && pod.uid && pod.uid !== k8s.podUid) throw new RetryableLookupError(`API has pod uid ${pod.uid}, sandbox is for ${k8s.podUid}`);
      if (attempts > 1) notes.push(`pod found by the API after ${attempts} attempts`);
      return pod;
    } catch (err) {
      if (!(err instanceof RetryableLookupError)) throw err;
      lastProblem = err.message;
    }
    const left = deadline - now();
    if (left <= 0) break;
    await sleep(Math.min(backoff, left));
    backoff = Math.min(backoff * 2, 2000);
  }
  throw new CniError(
    CniCode.TryAgainLater,
    `pod ${k8s.podNamespace}/${k8s.podName} could not be read from the API within ${Math.round(budget / 1000)} s`,
    `${attempts} attempts; last: ${lastProblem}`,
  );
}

async function waitForCache(k8s: KubernetesArgs, cache: PodCache, deps: PodSourceDeps): Promise<PodInfo> {
  const budget = deps.podLookupTimeoutMs ?? DEFAULT_POD_LOOKUP_TIMEOUT_MS;
  const pod = await pollCache(k8s, cache, deps, budget);
  if (pod) return pod;
  throw new CniError(
    CniCode.TryAgainLater,
    `pod ${k8s.podNamespace}/${k8s.podName} did not reach the agent's watch cache within ${Math.round(budget / 1000)} s`,
    'the netconf names no kubeconfig, so the cache is the only source of the pod spec; kubelet retries',
  );
}

/** The pod once the cache has it, or undefined after `budget` ms. */
async function pollCache(k8s: KubernetesArgs, cache: PodCache, deps: PodSourceDeps, budget: number): Promise<PodInfo | undefined> {
  const now = deps.now ?? Date.now;
  const sleep = deps.sleep ?? realSleep;
  const deadline = now() + budget;
  let backoff = 50;
  for (;;) {
    const left = deadline - now();
    if (left <= 0) break;
    await sleep(Math.min(backoff, left));
    backoff = Math.min(backoff * 2, 1000);
    const pod = await cache.lookup(k8s.podNamespace, k8s.podName, k8s.podUid);
    if (pod) return { ...pod };
  }
  return undefined;
}

/** The decision for a pod the watch cache holds, with its namespace's labels from the cache where needed. */
function decideCached(pod: PodInfo, cache: PodCache, namespace: string, options: DecisionOptions, notes: string[]): PodDecision | Promise<PodDecision> {
  if (needsNamespaceLabels(pod, options) && cache.namespaceLabels) {
    return cache
      .namespaceLabels(namespace)
      .catch(() => undefined)
      .then((labels) => {
        if (labels === undefined) requireNamespaceLabels(pod, options, 'the agent cannot read it');
        pod.namespaceLabels = labels;
        return { decision: decideMeshing(pod, options), source: 'cache', notes };
      });
  }
  return { decision: decideMeshing(pod, options), source: 'cache', notes };
}

/**
 * With ambient on, a pod whose namespace cannot be read cannot be decided: its namespace's labels may enable
 * ambient for it. It fails with code 11 (the runtime retries) rather than start unredirected, as Istio's plugin
 * does with ENABLE_AMBIENT_DETECTION_RETRY (its default logs the error and carries on as if not ambient).
 */
function requireNamespaceLabels(pod: PodInfo, options: DecisionOptions, why: string): void {
  if (!options.ambient?.enabled) return;
  throw new CniError(CniCode.TryAgainLater, `namespace ${pod.namespace} of pod ${pod.namespace}/${pod.name} could not be read (${why}): its labels decide whether the pod is ambient`, 'the ClusterRole must grant get, list and watch on namespaces (ambient); the runtime retries');
}

function withAssumptions(decision: MeshDecision, notes: string[]): MeshDecision {
  if (decision.assumed?.length) notes.push(`decided from annotations alone (Kubernetes turned off); assumed: ${decision.assumed.join('; ')}`);
  return decision;
}

/** A promise or any thenable (a test's stand-in cache may hand one). */
export function isPromise<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown } | undefined)?.then === 'function';
}

/**
 * Throws (or rejects with) CniError (11, 104, 105, 7) when the pod cannot be known. Answers without a promise where nothing has to be waited for (the CNI_ARGS skips, the
 * runtime's annotations, a pod the cache holds), so an ADD's decision takes no turn of promise jobs.
 */
export function decidePod(req: PodRequest, deps: PodSourceDeps): PodDecision | Promise<PodDecision> {
  const { kubernetes: k8s, netconf } = req;
  const ambient = netconf.ambient?.enabled ? ambientOptions(netconf.ambient) : undefined;
  const options: DecisionOptions = { excludeNamespaces: netconf.excludeNamespaces, agentPod: netconf.agentPod, ...(ambient ? { ambient } : {}) };
  const notes: string[] = [];
  if (isOwnAgentPod(k8s.podNamespace, k8s.podName, options.agentPod)) return { decision: { meshed: false, reason: 'own-agent-pod' }, source: 'cni-args', notes };
  if (options.excludeNamespaces.includes(k8s.podNamespace)) return { decision: { meshed: false, reason: 'namespace-excluded' }, source: 'cni-args', notes };
  const cached = deps.podCache?.lookup(k8s.podNamespace, k8s.podName, k8s.podUid);
  if (isPromise(cached)) return cached.then((pod) => decideLookedUp(pod, k8s, netconf, options, deps, notes));
  return decideLookedUp(cached, k8s, netconf, options, deps, notes);
}

const compiledSelectors = new RecentMap<string, readonly EnablementSelector[]>(16);

/** The netconf's ambient field as the decision takes it: its enablement selectors checked (7 when bad) and kept compiled. */
function ambientOptions(a: PodNetconfAmbient): AmbientOptions {
  if (a.selectors === undefined) return { enabled: true, selectors: DEFAULT_ENABLEMENT_SELECTORS, systemNamespace: a.systemNamespace };
  const key = JSON.stringify(a.selectors);
  let selectors = compiledSelectors.get(key);
  if (!selectors) {
    try {
      selectors = checkEnablementSelectors(a.selectors);
    } catch (err) {
      throw new CniError(CniCode.InvalidNetworkConfig, `invalid netconf field "ambient.enablement_selectors": ${(err as Error).message}`, 'write them as Kubernetes label selectors, as Istio\'s ambient.enablementSelectors');
    }
    compiledSelectors.set(key, selectors);
  }
  return { enabled: true, selectors, systemNamespace: a.systemNamespace };
}

/** decidePod once the watch cache has answered. */
function decideLookedUp(cached: PodInfo | undefined, k8s: KubernetesArgs, netconf: PodNetconf, options: DecisionOptions, deps: PodSourceDeps, notes: string[]): PodDecision | Promise<PodDecision> {
  if (cached && deps.podCache) return decideCached({ ...cached }, deps.podCache, k8s.podNamespace, options, notes);
  const fromRuntime = netconf.runtimeAnnotations;
  if (fromRuntime) {
    const early = certainSkipFromAnnotations(fromRuntime, options);
    if (early) return { decision: { meshed: false, reason: early }, source: 'runtime', notes };
  }
  const cache = deps.podCache;
  if (!netconf.kubeconfig && cache) {
    // The agent runs with Kubernetes but the netconf names no kubeconfig: its watch cache is the only source
    // of the facts the annotations lack, so wait for the pod to reach it rather than assume them.
    return waitForCache(k8s, cache, deps).then((pod) => decideCached(pod, cache, k8s.podNamespace, options, notes));
  }
  if (netconf.kubeconfig) return decideFromApi(k8s, netconf.kubeconfig, options, deps, notes);
  if (fromRuntime) {
    const pod: PodInfo = { name: k8s.podName, namespace: k8s.podNamespace, annotations: fromRuntime };
    return { decision: withAssumptions(decideMeshing(pod, options), notes), source: 'runtime+defaults', notes };
  }
  throw new CniError(
    CniCode.InvalidNetworkConfig,
    `no source of pod metadata for ${k8s.podNamespace}/${k8s.podName}`,
    'declare the capability {"io.kubernetes.cri.pod-annotations": true} in the conflist entry or set kubernetes.kubeconfig',
  );
}

/** A pod the netconf's kubeconfig can read: from the watch cache once it catches up, else from the API. */
async function decideFromApi(k8s: KubernetesArgs, kubeconfig: string, options: DecisionOptions, deps: PodSourceDeps, notes: string[]): Promise<PodDecision> {
  if (deps.podCache?.watching?.()) {
    const pod = await pollCache(k8s, deps.podCache, deps, Math.min(CACHE_WAIT_MS, deps.podLookupTimeoutMs ?? CACHE_WAIT_MS));
    if (pod) return decideCached(pod, deps.podCache, k8s.podNamespace, options, notes);
    notes.push(`pod not in the watch cache after ${CACHE_WAIT_MS / 1000} s; read from the API`);
  }
  const pod: PodInfo = await getPodWithRetry(k8s, kubeconfig, deps, notes);
  if (needsNamespaceLabels(pod, options)) {
    const fetchNamespace = deps.fetchNamespace ?? defaultFetchNamespace;
    try {
      pod.namespaceLabels = namespaceLabelsFromNamespace(await fetchNamespace(kubeconfig, k8s.podNamespace, NAMESPACE_TIMEOUT_MS));
    } catch (err) {
      requireNamespaceLabels(pod, options, (err as Error).message);
      notes.push(`namespace ${k8s.podNamespace} not readable (${(err as Error).message}): its ambient label was not checked`);
    }
  }
  return { decision: decideMeshing(pod, options), source: 'api', notes };
}
