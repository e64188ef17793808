/**
 * Pod metadata, fastest source first: the annotations the runtime passed in runtimeConfig, then the agent's
 * watch cache (an interface the agent implements), then a GET with the netconf's kubeconfig, retried with
 * backoff for a bounded time and then answered with code 11 so kubelet retries. Never a silent pass-through:
 * when no source can tell, ADD fails (fail closed).
 */
import { CniCode, CniError } from './errors';
import { decideMeshing, skipFromMetadata, type DecisionOptions, type MeshDecision, type PodInfo } from './decision';
import { readKubeconfig } from './kubeconfig';
import { getPodJson, podInfoFromPod, RetryableLookupError } from './pod-api';
import type { KubernetesArgs } from './request';

/** The agent's node-scoped pod cache; undefined means "not in the cache", not "does not exist". */
export interface PodCache {
  lookup(namespace: string, name: string, uid?: string): Promise<PodInfo | undefined>;
}

/** One GET of the pod object; throws RetryableLookupError for failures worth retrying. */
export type FetchPod = (kubeconfig: string, namespace: string, name: string, timeoutMs: number) => Promise<unknown>;

export const DEFAULT_POD_LOOKUP_TIMEOUT_MS = 30_000;

export interface PodSourceDeps {
  podCache?: PodCache;
  fetchPod?: FetchPod;
  /** total time a GET is retried before code 11; Istio waits up to 30 s */
  podLookupTimeoutMs?: number;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
}

export type PodSourceName = 'cni-args' | 'runtime' | 'cache' | 'api' | 'runtime+defaults';

export interface PodDecision {
  decision: MeshDecision;
  source: PodSourceName;
}

const defaultFetchPod: FetchPod = (kubeconfig, namespace, name, timeoutMs) =>
  getPodJson(readKubeconfig(kubeconfig), namespace, name, timeoutMs);

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

/** Throws CniError (11, 104, 105, 7) when the pod cannot be known, InvalidConfigError for bad annotations. */
export async function decidePod(
  k8s: KubernetesArgs,
  netconf: { kubeconfig?: string; runtimeAnnotations?: Record<string, string> },
  options: DecisionOptions,
  deps: PodSourceDeps,
  notes: string[],
): Promise<PodDecision> {
  if (options.excludeNamespaces.includes(k8s.podNamespace)) return { decision: { meshed: false, reason: 'namespace-excluded' }, source: 'cni-args' };
  const fromRuntime = netconf.runtimeAnnotations;
  if (fromRuntime) {
    const early = skipFromMetadata({ namespace: k8s.podNamespace, labels: {}, annotations: fromRuntime }, options.excludeNamespaces);
    if (early) return { decision: { meshed: false, reason: early }, source: 'runtime' };
  }
  const cached = deps.podCache ? await deps.podCache.lookup(k8s.podNamespace, k8s.podName, k8s.podUid) : undefined;
  if (cached) return { decision: decideMeshing(cached, options), source: 'cache' };
  if (netconf.kubeconfig) {
    const pod = await getPodWithRetry(k8s, netconf.kubeconfig, deps, notes);
    return { decision: decideMeshing(pod, options), source: 'api' };
  }
  if (fromRuntime) {
    notes.push('pod spec unavailable (no kubeconfig): containers from sidecar.istio.io/status, proxy uid/gid and DNS capture at Istio defaults');
    const pod: PodInfo = { name: k8s.podName, namespace: k8s.podNamespace, labels: {}, annotations: fromRuntime };
    return { decision: decideMeshing(pod, options), source: 'runtime+defaults' };
  }
  throw new CniError(
    CniCode.InvalidNetworkConfig,
    `no source of pod metadata for ${k8s.podNamespace}/${k8s.podName}`,
    'declare the capability {"io.kubernetes.cri.pod-annotations": true} in the conflist entry or set kubernetes.kubeconfig',
  );
}
