/**
 * Which pods are meshed, by the rules of Istio's CNI plugin (cni/pkg/plugin: CmdAdd, ExtractPodInfo,
 * NewRedirect), in its order. A pure function: PodInfo in, a decision and its trail out. Each skip has a
 * stable reason string that logs, metrics, `pods`, `explain` and tests match on.
 *
 * The same function serves two kinds of input. With the pod spec (watch cache, GET, the CLI) every fact is
 * known. With only the annotations the runtime passed (`--no-kubernetes`), the container lists come from
 * `sidecar.istio.io/status` and what annotations cannot tell (the proxy's env and args, its uid/gid, the
 * labels) is assumed at Istio's defaults; every such step says so (outcome `assumed`), and the decision
 * lists the assumptions so the request log and `explain` can name them.
 */
import { describeSelector, matchingSelector, type EnablementSelector } from './enablement';
import { AMBIENT_ANNOTATIONS, ANNOTATIONS, DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, effectiveProxyId, INIT_CONTAINER, INJECT_KEY, parseGoBool, PROXY_CONTAINER, PROXY_ENV, SIDECAR_STATUS_ANNOTATION, ZTUNNEL_APP_LABEL } from './istio-names';
import { RecentMap } from '../caches';
import { DEFAULT_AGENT_NAMESPACE, DEFAULT_AGENT_POD_PREFIX } from '../defaults';


export type ContainerList = 'initContainers' | 'containers';

/** What the istio-proxy container says, and which list it was found in. */
export interface ProxyFacts {
  /** the lists holding an istio-proxy (both, when a pod has one in each: the regular one is read last) */
  lists: ContainerList[];
  /** literal env values (`valueFrom` counts as the empty string, as in Istio) */
  env: Record<string, string>;
  /** `args[1]` when `args[0] == "proxy"` */
  proxyType?: string;
  runAsUser?: number;
  runAsGroup?: number;
}

export interface PodInfo {
  name: string;
  namespace: string;
  /** undefined when unknown (only the runtime's annotations were passed) */
  labels?: Record<string, string>;
  annotations: Record<string, string>;
  /** the namespace's labels, when they were read (ambient can be enabled on the namespace) */
  namespaceLabels?: Record<string, string>;
  /** every container name with its list, init containers first; undefined when only annotations are known */
  containers?: Array<{ name: string; list: ContainerList }>;
  /** the istio-proxy container, when the spec is known and has one */
  proxy?: ProxyFacts;
  /** spec.hostNetwork, when the spec is known: such a pod shares the node's netns and is never captured */
  hostNetwork?: boolean;
}

export const SKIP_REASONS = [
  'own-agent-pod',
  'not-a-kubernetes-pod',
  'namespace-excluded',
  'ztunnel',
  'ambient',
  'has-istio-init',
  'proxyless',
  'no-istio-proxy',
  'not-a-sidecar',
  'injection-disabled',
  'not-injected',
  'interception-mode-none',
] as const;
export type SkipReason = (typeof SKIP_REASONS)[number];

/**
 * What the istio-proxy container tells the redirect beyond annotations (its securityContext and env), as read:
 * a uid or gid is the container's own (absent or 0 is Istio's 1337, see effectiveProxyId); a flag is absent
 * when the env does not name it.
 */
export interface ProxySettings {
  proxyUid?: number;
  proxyGid?: number;
  /** Istio's ISTIO_META_DNS_CAPTURE in the proxy's environment. */
  dnsCapture?: boolean;
  /** INVALID_DROP in the proxy's environment: drop conntrack-INVALID packets instead of letting them reset. */
  invalidDrop?: boolean;
  /** ISTIO_DUAL_STACK in the proxy's environment (see RedirectConfig.dualStack). */
  dualStack?: boolean;
}

/** A meshed pod: the facts its redirect is made from (src/redirect/config.ts turns them into rules). */
export interface MeshedPod {
  meshed: true;
  dataplane?: 'sidecar';
  annotations: Readonly<Record<string, string>>;
  proxy: Readonly<ProxySettings>;
  assumed?: string[];
}

/** An ambient pod: the annotations its in-pod rules are made from. */
export interface AmbientPod {
  meshed: true;
  dataplane: 'ambient';
  annotations: Readonly<Record<string, string>>;
  assumed?: string[];
}

export type MeshDecision =
  | MeshedPod
  /** ambient: the pod's traffic goes to the node's ztunnel, handed the pod over ZDS (src/redirect/ambient/config.ts makes its rules) */
  | AmbientPod
  | { meshed: false; reason: SkipReason; assumed?: string[] }
  /** NONE still has its annotations checked: a pod whose other annotations are invalid is refused (101), not skipped */
  | { meshed: false; reason: 'interception-mode-none'; annotations: Record<string, string>; assumed?: string[] };

/** Istio's node-wide ambient settings the in-pod rules are made with (src/redirect/ambient/config.ts). */
export interface AmbientNodeSettings {
  /** AMBIENT_DNS_CAPTURE (`ambient.dnsCapture`, default true) */
  dnsCapture: boolean;
  /** AMBIENT_IPV6 (`ambient.ipv6`, default true): program IPv6 too, where the pod's netns has IPv6 */
  ipv6: boolean;
  /** HOST_PROBE_SNAT_IP: the address the node SNATs kubelet's probes to */
  hostProbeSnatIpv4: string;
  /** HOST_PROBE_SNAT_IPV6 */
  hostProbeSnatIpv6: string;
}

/** The agent's ambient mode: the decision's options and the node's settings. */
export interface AmbientSettings extends AmbientOptions {
  node: AmbientNodeSettings;
}

/** mesh-cni's ambient mode, off unless the agent is told (the chart's ambient.enabled). */
export interface AmbientOptions {
  enabled: boolean;
  /** Istio's enablement selectors (enablement.ts; the chart's ambient.enablementSelectors) */
  selectors: readonly EnablementSelector[];
  /** Istio's system namespace: its app=ztunnel pods are never captured (default istio-system) */
  systemNamespace: string;
}

export interface AgentPodMatch {
  namespace: string;
  podNamePrefix: string;
}

export interface DecisionOptions {
  excludeNamespaces: readonly string[];
  /** our own DaemonSet's pods; default mesh-cni-system/mesh-cni-* */
  agentPod?: AgentPodMatch;
  /** ambient mode; when absent or not enabled, an ambient-labelled pod is skipped (reason `ambient`) */
  ambient?: AmbientOptions;
}

/** One rule of the decision, in the order the plugin applies them: what it looked at and what it concluded. */
export interface DecisionStep {
  /** a stable name for the rule (the skip reason it can produce, or `annotations`/`meshed`) */
  rule: string;
  /**
   * pass: the rule let the pod through; skip: the rule decided the pod is not meshed; assumed: the fact the
   * rule needs is unknown (annotations only) and Istio's default was assumed; meshed: the final verdict
   */
  outcome: 'pass' | 'skip' | 'assumed' | 'meshed';
  detail: string;
  /** a skip that rests on an assumption (annotations only) names it here */
  assumption?: string;
}

export { parseGoBool };

type ContainerEntries = ReadonlyArray<Readonly<{ name: string; list: ContainerList }>>;

/** How many distinct status annotations are remembered (a node's pods come from a few Deployments). */
export const MAX_CACHED_STATUSES = 256;
const statuses = new RecentMap<string, ContainerEntries>(MAX_CACHED_STATUSES);

/**
 * The injected containers the status annotation lists, from both lists; `null` lists are empty. Remembered
 * per distinct annotation text (frozen: requests share it), most recently used last; a text that does not
 * parse is not remembered.
 */
export function injectedContainersFromStatus(status: string | undefined): ContainerEntries | undefined {
  if (status === undefined) return undefined;
  let entries = statuses.get(status);
  if (!entries) {
    const parsed = containersOfStatus(status);
    if (!parsed) return undefined;
    statuses.set(status, (entries = Object.freeze(parsed.map((c) => Object.freeze(c)))));
  }
  return entries;
}

/** How many status annotations are remembered now (for tests of the bound). */
export function cachedStatusCount(): number {
  return statuses.size;
}

function containersOfStatus(status: string): Array<{ name: string; list: ContainerList }> | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(status);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return undefined;
  const record = parsed as Record<string, unknown>;
  const names = (list: ContainerList) => {
    const v = record[list];
    return Array.isArray(v) ? v.filter((n): n is string => typeof n === 'string').map((name) => ({ name, list })) : [];
  };
  return [...names('initContainers'), ...names('containers')];
}

export function isOwnAgentPod(namespace: string, name: string, match: AgentPodMatch = { namespace: DEFAULT_AGENT_NAMESPACE, podNamePrefix: DEFAULT_AGENT_POD_PREFIX }): boolean {
  return namespace === match.namespace && name.startsWith(match.podNamePrefix);
}

/**
 * Whether the decision needs the namespace's labels. Ambient off: only a pod without sidecar status and without
 * its own ambient label can be ambient through its namespace; it is skipped either way, so callers read the
 * namespace only to give the right reason, best effort. Ambient on: every pod without sidecar status (and not
 * on the host network), since the enablement selectors may name the namespace; the lookup then must read it.
 */
export function needsNamespaceLabels(pod: PodInfo, options?: Pick<DecisionOptions, 'ambient'>): boolean {
  if (pod.labels === undefined || pod.namespaceLabels !== undefined || pod.annotations[SIDECAR_STATUS_ANNOTATION] !== undefined) return false;
  if (options?.ambient?.enabled) return pod.hostNetwork !== true;
  return pod.labels[DATAPLANE_MODE_LABEL] !== DATAPLANE_MODE_AMBIENT;
}

function isZtunnelPod(pod: PodInfo, ambient: AmbientOptions): boolean {
  return pod.namespace === ambient.systemNamespace && pod.labels?.app === ZTUNNEL_APP_LABEL;
}

/** The ambient rule: Istio's CompiledEnablementSelectors.Matches when ambient is on, a skip reason when it is off. */
function ambientStep({ pod, options }: View): DecisionStep {
  if (pod.annotations[SIDECAR_STATUS_ANNOTATION] !== undefined) return { rule: 'ambient', outcome: 'pass', detail: `${SIDECAR_STATUS_ANNOTATION} is set: a sidecar pod is never ambient` };
  if (pod.hostNetwork) return { rule: 'ambient', outcome: 'pass', detail: 'the pod uses the host network: never ambient (its netns is the node\'s)' };
  const podMode = pod.labels?.[DATAPLANE_MODE_LABEL];
  const ambient = options.ambient;
  if (!ambient?.enabled) {
    const off = "ztunnel's mode; mesh-cni's ambient mode is off (ambient.enabled)";
    if (podMode === DATAPLANE_MODE_AMBIENT) return { rule: 'ambient', outcome: 'skip', detail: `pod label ${DATAPLANE_MODE_LABEL}=ambient: ${off}` };
    if (pod.labels === undefined) return { rule: 'ambient', outcome: 'assumed', detail: 'labels unknown (annotations only): assumed not ambient' };
    const nsMode = pod.namespaceLabels?.[DATAPLANE_MODE_LABEL];
    if (nsMode === DATAPLANE_MODE_AMBIENT && podMode !== 'none') return { rule: 'ambient', outcome: 'skip', detail: `namespace label ${DATAPLANE_MODE_LABEL}=ambient: ${off}` };
    if (pod.namespaceLabels === undefined) return { rule: 'ambient', outcome: 'assumed', detail: 'namespace labels unknown: assumed not ambient (the pod has no sidecar status, so it is skipped below anyway)' };
    return { rule: 'ambient', outcome: 'pass', detail: `no ${DATAPLANE_MODE_LABEL}=ambient on the pod or its namespace` };
  }
  if (isZtunnelPod(pod, ambient)) return { rule: 'ztunnel', outcome: 'skip', detail: `app=${ZTUNNEL_APP_LABEL} in ${ambient.systemNamespace}: ztunnel itself is never captured` };
  if (pod.labels === undefined) return { rule: 'ambient', outcome: 'assumed', detail: 'labels unknown (annotations only): assumed not ambient' };
  if (pod.namespaceLabels === undefined) return { rule: 'ambient', outcome: 'assumed', detail: 'namespace labels unknown: assumed not ambient' };
  const i = matchingSelector(ambient.selectors, pod.labels, pod.namespaceLabels);
  if (i >= 0) return { rule: 'ambient', outcome: 'meshed', detail: `enablement selector ${i + 1} matches: ${describeSelector(ambient.selectors[i]!)} (pod ${DATAPLANE_MODE_LABEL}=${podMode ?? '(unset)'}, namespace ${DATAPLANE_MODE_LABEL}=${pod.namespaceLabels[DATAPLANE_MODE_LABEL] ?? '(unset)'})` };
  return { rule: 'ambient', outcome: 'pass', detail: `no enablement selector matches (${ambient.selectors.map(describeSelector).join('; ') || 'none configured'})` };
}

/** What a step sees: the pod, and where its container list came from. */
interface View {
  pod: PodInfo;
  options: DecisionOptions;
  /** the container list the steps use: the spec's, else the status annotation's, else unknown */
  containers?: ReadonlyArray<Readonly<{ name: string; list: ContainerList }>>;
  containersFrom: 'spec' | 'status' | 'unknown';
}

type Step = (v: View) => DecisionStep;

const where = (lists: ContainerList[]) => lists.join(' and ');

function listsOf(v: View, name: string): ContainerList[] {
  return [...new Set((v.containers ?? []).filter((c) => c.name === name).map((c) => c.list))];
}

function source(v: View): string {
  return v.containersFrom === 'spec' ? 'the pod spec' : `the ${SIDECAR_STATUS_ANNOTATION} annotation`;
}

function injectValue(pod: PodInfo): { value: string | undefined; from: string } {
  const label = pod.labels?.[INJECT_KEY];
  const annotation = pod.annotations[INJECT_KEY];
  // The label is the newer API: when present it wins, even over an annotation that says otherwise.
  if (label !== undefined) return { value: label, from: `label ${INJECT_KEY}=${label}` };
  if (annotation !== undefined) return { value: annotation, from: `annotation ${INJECT_KEY}=${annotation}` };
  return { value: undefined, from: `no ${INJECT_KEY} label or annotation` };
}

const STEPS: Step[] = [
  ({ pod, options }) =>
    isOwnAgentPod(pod.namespace, pod.name, options.agentPod)
      ? { rule: 'own-agent-pod', outcome: 'skip', detail: `${pod.namespace}/${pod.name} is one of mesh-cni's own agent pods` }
      : { rule: 'own-agent-pod', outcome: 'pass', detail: 'not one of mesh-cni\'s own agent pods' },
  ({ pod, options }) => {
    const list = `[${options.excludeNamespaces.join(', ')}]`;
    return options.excludeNamespaces.includes(pod.namespace)
      ? { rule: 'namespace-excluded', outcome: 'skip', detail: `namespace ${pod.namespace} is in exclude_namespaces ${list}` }
      : { rule: 'namespace-excluded', outcome: 'pass', detail: `namespace ${pod.namespace} is not in exclude_namespaces ${list}` };
  },
  ambientStep,
  (v) => {
    if (v.containersFrom === 'unknown') return { rule: 'has-istio-init', outcome: 'assumed', detail: 'container lists unknown (no pod spec, no readable status annotation): assumed no istio-init' };
    const lists = listsOf(v, INIT_CONTAINER);
    return lists.length > 0
      ? { rule: 'has-istio-init', outcome: 'skip', detail: `${INIT_CONTAINER} in ${where(lists)} (from ${source(v)}) programs the rules itself` }
      : { rule: 'has-istio-init', outcome: 'pass', detail: `no ${INIT_CONTAINER} in initContainers or containers (from ${source(v)})` };
  },
  ({ pod }) => {
    if (!pod.proxy) {
      return pod.containers === undefined
        ? { rule: 'proxyless', outcome: 'assumed', detail: `${PROXY_ENV.disableEnvoy} unknown (no pod spec): assumed unset` }
        : { rule: 'proxyless', outcome: 'pass', detail: `no ${PROXY_CONTAINER} env to read ${PROXY_ENV.disableEnvoy} from` };
    }
    const value = pod.proxy.env[PROXY_ENV.disableEnvoy];
    const at = `env of ${PROXY_CONTAINER} in ${where(pod.proxy.lists)}`;
    if (value !== undefined && parseGoBool(value) === true) return { rule: 'proxyless', outcome: 'skip', detail: `${PROXY_ENV.disableEnvoy}=${value} in the ${at}: no Envoy listens to redirect to` };
    return { rule: 'proxyless', outcome: 'pass', detail: value === undefined ? `no ${PROXY_ENV.disableEnvoy} in the ${at}` : `${PROXY_ENV.disableEnvoy}=${JSON.stringify(value)} in the ${at} is not true` };
  },
  (v) => {
    if (v.containersFrom === 'unknown') return { rule: 'no-istio-proxy', outcome: 'assumed', detail: `container lists unknown: assumed Istio's default proxy ${PROXY_CONTAINER}` };
    const lists = listsOf(v, PROXY_CONTAINER);
    if (lists.length > 0) return { rule: 'no-istio-proxy', outcome: 'pass', detail: `${PROXY_CONTAINER} in ${where(lists)} (from ${source(v)})` };
    const names = (v.containers ?? []).map((c) => c.name);
    return { rule: 'no-istio-proxy', outcome: 'skip', detail: `no ${PROXY_CONTAINER} among [${names.join(', ')}] (from ${source(v)})` };
  },
  ({ pod }) => {
    if (!pod.proxy) return { rule: 'not-a-sidecar', outcome: 'assumed', detail: `${PROXY_CONTAINER} args unknown (no pod spec): assumed proxy type sidecar` };
    const type = pod.proxy.proxyType;
    const at = `args of ${PROXY_CONTAINER} in ${where(pod.proxy.lists)}`;
    if (type !== undefined && type !== '' && type !== 'sidecar') return { rule: 'not-a-sidecar', outcome: 'skip', detail: `proxy type ${type} (${at}): a gateway, not a sidecar` };
    return { rule: 'not-a-sidecar', outcome: 'pass', detail: type ? `proxy type ${type} (${at})` : `no proxy type in the ${at}` };
  },
  ({ pod }) => {
    const { value, from } = injectValue(pod);
    const unknownLabels = pod.labels === undefined ? ' (labels unknown: assumed no label)' : '';
    // Go's ParseBool: only a parsable false disables; "maybe" or "" leaves the pod alone.
    if (value !== undefined && parseGoBool(value) === false) {
      return { rule: 'injection-disabled', outcome: 'skip', detail: `${from} disables injection${unknownLabels}`, ...(unknownLabels ? { assumption: 'no sidecar.istio.io/inject label overrides the annotation' } : {}) };
    }
    const note = value !== undefined && value !== '' && parseGoBool(value) === undefined ? ' (not a boolean: does not disable)' : '';
    return { rule: 'injection-disabled', outcome: unknownLabels ? 'assumed' : 'pass', detail: `${from}${note}${unknownLabels}` };
  },
  ({ pod }) =>
    pod.annotations[SIDECAR_STATUS_ANNOTATION] === undefined
      ? { rule: 'not-injected', outcome: 'skip', detail: `no ${SIDECAR_STATUS_ANNOTATION} annotation: the sidecar injector did not touch this pod` }
      : { rule: 'not-injected', outcome: 'pass', detail: `${SIDECAR_STATUS_ANNOTATION} is set: the sidecar was injected` },
];

function view(pod: PodInfo, options: DecisionOptions): View {
  if (pod.containers !== undefined) return { pod, options, containers: pod.containers, containersFrom: 'spec' };
  const fromStatus = injectedContainersFromStatus(pod.annotations[SIDECAR_STATUS_ANNOTATION]);
  return fromStatus ? { pod, options, containers: fromStatus, containersFrom: 'status' } : { pod, options, containersFrom: 'unknown' };
}

/** The proxy's settings for the config builder, and the ones assumed because the spec is unknown. */
function proxySettings(pod: PodInfo): { settings: ProxySettings; assumed: string[] } {
  const proxy = pod.proxy;
  if (!proxy) {
    return pod.containers === undefined
      ? { settings: {}, assumed: ['proxy uid/gid 1337', `${PROXY_ENV.dnsCapture} unset`, `${PROXY_ENV.invalidDrop} unset`, `${PROXY_ENV.dualStack} unset`] }
      : { settings: {}, assumed: [] };
  }
  const bool = (name: string) => {
    const v = proxy.env[name];
    // Istio logs an unparsable value and treats it as false.
    return v === undefined ? undefined : parseGoBool(v) ?? false;
  };
  const settings: ProxySettings = {};
  if (proxy.runAsUser !== undefined) settings.proxyUid = proxy.runAsUser;
  if (proxy.runAsGroup !== undefined) settings.proxyGid = proxy.runAsGroup;
  const dns = bool(PROXY_ENV.dnsCapture);
  if (dns !== undefined) settings.dnsCapture = dns;
  const drop = bool(PROXY_ENV.invalidDrop);
  if (drop !== undefined) settings.invalidDrop = drop;
  const dual = bool(PROXY_ENV.dualStack);
  if (dual !== undefined) settings.dualStack = dual;
  return { settings, assumed: [] };
}

/**
 * The decision with its trail: every rule looked at, in order, up to the one that decided. Annotations are not
 * validated here: a meshed pod's are parsed into rules by the redirect (src/redirect/config.ts), which names
 * a bad one (code 101) before anything is programmed.
 */
export function decideMeshing(pod: PodInfo, options: DecisionOptions, trail: DecisionStep[] = []): MeshDecision {
  const v = view(pod, options);
  const assumed: string[] = [];
  for (const step of STEPS) {
    const result = step(v);
    trail.push(result);
    if (result.outcome === 'assumed') assumed.push(result.detail);
    if (result.assumption) assumed.push(result.assumption);
    if (result.outcome === 'skip') return { meshed: false, reason: result.rule as SkipReason, ...(assumed.length ? { assumed } : {}) };
    if (result.outcome === 'meshed' && result.rule === 'ambient') return decideAmbient(pod, trail, assumed);
  }
  const proxy = proxySettings(pod);
  if (proxy.assumed.length > 0) {
    trail.push({ rule: 'proxy-settings', outcome: 'assumed', detail: `no pod spec: assumed ${proxy.assumed.join(', ')}` });
    assumed.push(...proxy.assumed);
  } else if (pod.proxy) {
    trail.push({ rule: 'proxy-settings', outcome: 'pass', detail: proxyDetail(pod.proxy) });
  }
  const withAssumed = assumed.length ? { assumed } : {};
  const mode = pod.annotations[ANNOTATIONS.interceptionMode];
  if (mode === 'NONE') {
    trail.push({ rule: 'interception-mode-none', outcome: 'skip', detail: `${ANNOTATIONS.interceptionMode}=NONE: the proxy captures nothing (mesh-cni answers ADD with no rules)` });
    return { meshed: false, reason: 'interception-mode-none', annotations: pod.annotations, ...withAssumed };
  }
  trail.push({ rule: 'annotations', outcome: 'pass', detail: `interception mode ${mode ?? 'REDIRECT (the default)'}` });
  trail.push({ rule: 'meshed', outcome: 'meshed', detail: 'the plugin programs the redirect rules' });
  return { meshed: true, annotations: pod.annotations, proxy: proxy.settings, ...withAssumed };
}

/** The annotations an ambient pod's in-pod rules read (getPodLevelTrafficOverrides). */
const AMBIENT_POD_ANNOTATIONS = [AMBIENT_ANNOTATIONS.dnsCapture, AMBIENT_ANNOTATIONS.bypassInboundCapture, ANNOTATIONS.rerouteVirtualInterfaces];

/** An ambient pod: its annotations are made into Istio's in-pod config with the node's settings by the redirect. */
function decideAmbient(pod: PodInfo, trail: DecisionStep[], assumed: string[]): AmbientPod {
  const set = AMBIENT_POD_ANNOTATIONS.filter((k) => pod.annotations[k] !== undefined).map((k) => `${k}=${pod.annotations[k]}`);
  trail.push({ rule: 'annotations', outcome: 'pass', detail: `ambient: ${set.length ? set.join('; ') : "no ambient annotations (the node's settings)"}` });
  trail.push({ rule: 'meshed', outcome: 'meshed', detail: "ambient: the plugin programs Istio's in-pod rules and hands the pod to ztunnel" });
  return { meshed: true, dataplane: 'ambient', annotations: pod.annotations, ...(assumed.length ? { assumed } : {}) };
}

function proxyDetail(proxy: ProxyFacts): string {
  const at = `${PROXY_CONTAINER} in ${where(proxy.lists)}`;
  const id = (v: number | undefined) => (v === undefined ? `absent → ${effectiveProxyId(v)}` : v === 0 ? `0 → ${effectiveProxyId(v)}` : String(v));
  const env = [PROXY_ENV.dnsCapture, PROXY_ENV.invalidDrop, PROXY_ENV.dualStack].map((n) => `${n}=${proxy.env[n] ?? '(unset)'}`).join(' ');
  return `securityContext of ${at}: runAsUser ${id(proxy.runAsUser)}, runAsGroup ${id(proxy.runAsGroup)}; env: ${env}`;
}

/**
 * A skip that the runtime's annotations alone make certain, so the pod never costs an API call: the status
 * annotation lists an istio-init (the first container rule; a pod with sidecar status is never ambient), or
 * there is no status annotation (the last rule skips it whatever the earlier ones say; the spec could
 * only give a more specific reason). Undefined when the spec is needed.
 */
export function certainSkipFromAnnotations(annotations: Record<string, string>, options?: Pick<DecisionOptions, 'ambient'>): SkipReason | undefined {
  const status = annotations[SIDECAR_STATUS_ANNOTATION];
  // With ambient on, a pod without sidecar status may be ambient: only its labels and its namespace's can tell.
  if (status === undefined) return options?.ambient?.enabled ? undefined : 'not-injected';
  if (injectedContainersFromStatus(status)?.some((c) => c.name === INIT_CONTAINER)) return 'has-istio-init';
  return undefined;
}
