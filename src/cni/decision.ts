/**
 * Which pods are meshed, by Istio's rules. A pure function: PodInfo in, a decision out. Each skip has a
 * stable reason string that logs, metrics and tests can match on.
 */
import type { ProxySettings, RedirectConfig } from '../redirect/config';

export const SIDECAR_STATUS_ANNOTATION = 'sidecar.istio.io/status';
export const INJECT_KEY = 'sidecar.istio.io/inject';
export const PROXY_CONTAINER = 'istio-proxy';
export const INIT_CONTAINER = 'istio-init';

export interface PodInfo {
  name: string;
  namespace: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** names; undefined when only the runtime's annotations are known */
  containers?: string[];
  initContainers?: string[];
  proxyUid?: number;
  proxyGid?: number;
  dnsCapture?: boolean;
}

export const SKIP_REASONS = [
  'not-a-kubernetes-pod',
  'namespace-excluded',
  'not-injected',
  'injection-disabled',
  'has-istio-init',
  'no-istio-proxy',
  'interception-mode-none',
] as const;
export type SkipReason = (typeof SKIP_REASONS)[number];

export type MeshDecision = { meshed: true; config: RedirectConfig } | { meshed: false; reason: SkipReason };

export interface DecisionOptions {
  excludeNamespaces: readonly string[];
  /** the engine's annotation parser; injected only so tests can stand in for it */
  buildConfig?: (annotations: Record<string, string>, proxy?: ProxySettings) => RedirectConfig;
}

/** Go's strconv.ParseBool, which Istio uses for sidecar.istio.io/inject. */
function parseBool(value: string): boolean | undefined {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(value)) return false;
  return undefined;
}

function injectionDisabled(pod: PodInfo): boolean {
  // The label wins over the annotation when both are set, as in Istio's injector.
  const value = pod.labels[INJECT_KEY] ?? pod.annotations[INJECT_KEY];
  return value !== undefined && parseBool(value) === false;
}

/**
 * The status annotation the injector wrote lists what it injected; it stands in for the container lists
 * when only the runtime's annotations are known.
 */
export function injectedContainersFromStatus(status: string | undefined): { containers: string[]; initContainers: string[] } | undefined {
  if (status === undefined) return undefined;
  try {
    const parsed: unknown = JSON.parse(status);
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const { containers, initContainers } = parsed as { containers?: unknown; initContainers?: unknown };
    const names = (v: unknown): string[] => (Array.isArray(v) ? v.filter((n): n is string => typeof n === 'string') : []);
    return { containers: names(containers), initContainers: names(initContainers) };
  } catch {
    return undefined;
  }
}

function containerLists(pod: PodInfo): { containers?: string[]; initContainers?: string[] } {
  if (pod.containers !== undefined) return { containers: pod.containers, initContainers: pod.initContainers ?? [] };
  return injectedContainersFromStatus(pod.annotations[SIDECAR_STATUS_ANNOTATION]) ?? {};
}

function proxySettings(pod: PodInfo): ProxySettings {
  const proxy: ProxySettings = {};
  if (pod.proxyUid !== undefined) proxy.proxyUid = pod.proxyUid;
  if (pod.proxyGid !== undefined) proxy.proxyGid = pod.proxyGid;
  if (pod.dnsCapture !== undefined) proxy.dnsCapture = pod.dnsCapture;
  return proxy;
}

/**
 * Everything that can be decided from namespace and annotations alone, without the pod spec. Used first so
 * that pods which are clearly not meshed never cost an API call.
 */
export function skipFromMetadata(pod: Pick<PodInfo, 'namespace' | 'labels' | 'annotations'>, excludeNamespaces: readonly string[]): SkipReason | undefined {
  // The decision's own first steps: the ones that need only the namespace, labels and annotations.
  for (const step of STEPS.slice(0, METADATA_STEPS)) {
    const result = step(pod as PodInfo, { excludeNamespaces });
    if (result.outcome === 'skip') return result.rule as SkipReason;
  }
  return undefined;
}

/** One rule of the decision, in the order the plugin applies them: what it looked at and what it concluded. */
export interface DecisionStep {
  /** a stable name for the rule (the skip reason it can produce, or `annotations`/`meshed`) */
  rule: string;
  /** pass: the rule let the pod through; skip: the rule decided the pod is not meshed; meshed: the final verdict */
  outcome: 'pass' | 'skip' | 'meshed';
  detail: string;
}

type Step = (pod: PodInfo, options: DecisionOptions) => DecisionStep;
const METADATA_STEPS = 3;

function injectValue(pod: PodInfo): string {
  const label = pod.labels[INJECT_KEY];
  const annotation = pod.annotations[INJECT_KEY];
  if (label !== undefined) return `label ${INJECT_KEY}=${label}`;
  if (annotation !== undefined) return `annotation ${INJECT_KEY}=${annotation}`;
  return `no ${INJECT_KEY} label or annotation`;
}

/** The rules before the annotations are parsed, each a pure check; the order is the plugin's. */
const STEPS: Step[] = [
  // The first METADATA_STEPS look only at namespace, labels and annotations (skipFromMetadata runs them alone).
  (pod, o) =>
    o.excludeNamespaces.includes(pod.namespace)
      ? { rule: 'namespace-excluded', outcome: 'skip', detail: `namespace ${pod.namespace} is in exclude_namespaces [${o.excludeNamespaces.join(', ')}]` }
      : { rule: 'namespace-excluded', outcome: 'pass', detail: `namespace ${pod.namespace} is not in exclude_namespaces [${o.excludeNamespaces.join(', ')}]` },
  (pod) =>
    pod.annotations[SIDECAR_STATUS_ANNOTATION] === undefined
      ? { rule: 'not-injected', outcome: 'skip', detail: `no ${SIDECAR_STATUS_ANNOTATION} annotation: the sidecar injector did not touch this pod` }
      : { rule: 'not-injected', outcome: 'pass', detail: `${SIDECAR_STATUS_ANNOTATION} is set: the sidecar was injected` },
  (pod) =>
    injectionDisabled(pod)
      ? { rule: 'injection-disabled', outcome: 'skip', detail: `${injectValue(pod)} disables injection` }
      : { rule: 'injection-disabled', outcome: 'pass', detail: injectValue(pod) },
  (pod) => {
    const { initContainers } = containerLists(pod);
    return initContainers?.includes(INIT_CONTAINER)
      ? { rule: 'has-istio-init', outcome: 'skip', detail: `init container ${INIT_CONTAINER} programs the rules itself` }
      : { rule: 'has-istio-init', outcome: 'pass', detail: `no ${INIT_CONTAINER} init container` };
  },
  (pod) => {
    const { containers } = containerLists(pod);
    if (containers === undefined) return { rule: 'no-istio-proxy', outcome: 'pass', detail: `containers unknown: assuming Istio's default proxy ${PROXY_CONTAINER}` };
    return containers.includes(PROXY_CONTAINER)
      ? { rule: 'no-istio-proxy', outcome: 'pass', detail: `container ${PROXY_CONTAINER} present` }
      : { rule: 'no-istio-proxy', outcome: 'skip', detail: `no ${PROXY_CONTAINER} container among [${containers.join(', ')}]` };
  },
];

/**
 * The decision with its trail: every rule looked at, in order, up to the one that decided. Throws
 * InvalidConfigError (from the engine's parser) when the pod's annotations are invalid; `trail` is then
 * what was decided before the annotations were parsed (see `explainMeshing`'s caller).
 */
export function explainMeshing(pod: PodInfo, options: DecisionOptions, trail: DecisionStep[] = []): MeshDecision {
  for (const step of STEPS) {
    const result = step(pod, options);
    trail.push(result);
    if (result.outcome === 'skip') return { meshed: false, reason: result.rule as SkipReason };
  }
  // The annotation parser (and ip-address, ~10 ms to load) only once a pod is found to be meshed.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const build = options.buildConfig ?? (require('../redirect/config') as typeof import('../redirect/config')).redirectConfigFromAnnotations;
  const config = build(pod.annotations, proxySettings(pod));
  if (config.mode === 'NONE') {
    trail.push({ rule: 'interception-mode-none', outcome: 'skip', detail: 'sidecar.istio.io/interceptionMode=NONE: the proxy captures nothing' });
    return { meshed: false, reason: 'interception-mode-none' };
  }
  trail.push({ rule: 'annotations', outcome: 'pass', detail: `interception mode ${config.mode}, proxy uid ${config.proxyUid} gid ${config.proxyGid}` });
  trail.push({ rule: 'meshed', outcome: 'meshed', detail: 'the plugin programs the redirect rules' });
  return { meshed: true, config };
}

/** Throws InvalidConfigError (from the engine's parser) when the pod's annotations are invalid. */
export function decideMeshing(pod: PodInfo, options: DecisionOptions): MeshDecision {
  return explainMeshing(pod, options);
}
