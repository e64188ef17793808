/**
 * Our netconf fields: defaults and strict validation. Standard CNI keys pass untouched; a key we do not know
 * is refused with code 2 (the spec wants key and value in the message), a known key with a bad value with 7.
 * Field names are snake_case, as in the issue and the README.
 */
import { BACKEND_NAMES, DEFAULT_AGENT_NAMESPACE, DEFAULT_AGENT_POD_PREFIX, DEFAULT_STATE_DIR, type BackendName } from '../defaults';
import { CniCode, CniError } from '../errors';
import type { SupportedVersion } from './version';

/**
 * Ambient, as the agent that installed our entry runs it (Istio's plugin config carries the same:
 * ambient_enabled, enablement_selectors). The standalone engine needs it to know a pod is ambient, and then
 * refuses it: only the agent can hand a pod to ztunnel.
 */
export interface NetconfAmbient {
  enabled: boolean;
  /**
   * Istio's enablement selectors as written (absent: Istio's default); Kubernetes label selectors, which the
   * pod lookup compiles and checks (src/kube/pod-lookup.ts), refusing bad ones with code 7 before any rule
   */
  selectors?: readonly unknown[];
  systemNamespace: string;
}

export const DEFAULT_ISTIO_SYSTEM_NAMESPACE = 'istio-system';

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const DEFAULT_LOG_FILE = '/var/log/mesh-cni/cni.log';
export const DEFAULT_EXCLUDED_NAMESPACES: readonly string[] = ['kube-system'];
export const POD_ANNOTATIONS_CAPABILITY = 'io.kubernetes.cri.pod-annotations';

/** Keys any CNI plugin may be handed (spec section 1 and 3, plus GC's input); they are not ours to judge. */
const STANDARD_KEYS = new Set([
  'cniVersion',
  'cniVersions',
  'name',
  'type',
  'disableCheck',
  'disableGC',
  'args',
  'ipMasq',
  'ipam',
  'dns',
  'capabilities',
  'runtimeConfig',
  'prevResult',
  'cni.dev/valid-attachments',
]);
const OUR_KEYS = new Set(['log_level', 'log_file', 'kubernetes', 'backend', 'state_dir', 'ambient']);
const OUR_AMBIENT_KEYS = new Set(['enabled', 'enablement_selectors', 'system_namespace']);
/**
 * Keys older mesh-cni installers wrote that nothing reads any more: accepted (a conflist already on a node
 * must not start failing ADDs) and ignored, with a note in the request log.
 */
const DEPRECATED_KEYS: Record<string, string> = {
  agent_socket: 'netconf key agent_socket is ignored (the shim finds the agent at $MESH_CNI_AGENT_SOCKET, default /var/run/mesh-cni/agent.sock); reinstalling mesh-cni writes the conflist without it',
};
const OUR_KUBERNETES_KEYS = new Set(['kubeconfig', 'exclude_namespaces', 'agent_namespace', 'agent_pod_prefix']);

/** Our own agent's pods: their namespace and the DaemonSet's pod-name prefix. */
export interface AgentPodMatch {
  namespace: string;
  podNamePrefix: string;
}

export interface MeshNetConf {
  name: string;
  type?: string;
  cniVersion: SupportedVersion;
  logLevel: LogLevel;
  logFile: string;
  kubeconfig?: string;
  excludeNamespaces: readonly string[];
  /** our own agent's pods (namespace and DaemonSet pod-name prefix): never redirected, decided before any lookup */
  agentPod: AgentPodMatch;
  backend: BackendName;
  /** notes for the request log about deprecated keys the netconf carried (accepted and ignored) */
  deprecations?: string[];
  /** where ADD records what it programmed (the reconciler reads it) */
  stateDir: string;
  /** the pod's annotations, when the runtime passed them (capability io.kubernetes.cri.pod-annotations) */
  runtimeAnnotations?: Record<string, string>;
  /** ambient mode (absent: off) */
  ambient?: NetconfAmbient;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** How deep a value is (a scalar 0, `{}` 1), counted level by level without recursion: a 10^5-level value must not overflow the stack. Stops past `limit`. */
export function jsonDepth(value: unknown, limit: number): number {
  let depth = 0;
  let level: unknown[] = [value];
  while (depth <= limit) {
    const next: unknown[] = [];
    let objects = false;
    for (const v of level) {
      if (typeof v !== 'object' || v === null) continue;
      objects = true;
      for (const child of Object.values(v)) next.push(child);
    }
    if (!objects) return depth;
    depth++;
    level = next;
  }
  return depth;
}

/**
 * A value for a message: scalars as JSON, cut at 80 characters; objects and arrays by their shape only
 * (key names, never nested values), so a credential nested under a field we do not know
 * (`"auth":{"bearer":"..."}`) is never echoed, and a deeply nested value cannot overflow the stack.
 */
function shown(value: unknown): string {
  let text: string;
  if (Array.isArray(value)) text = `(a list of ${value.length})`;
  else if (typeof value === 'object' && value !== null) {
    const keys = Object.keys(value);
    text = `(an object with ${keys.length === 0 ? 'no keys' : `keys ${keys.slice(0, 5).map((k) => JSON.stringify(k)).join(', ')}${keys.length > 5 ? ', ...' : ''}`})`;
  } else text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function invalid(key: string, value: unknown, why: string): CniError {
  return new CniError(CniCode.InvalidNetworkConfig, `invalid netconf field "${key}": ${shown(value)} ${why}`);
}

/** Code 2 must quote key and value, except where the key suggests a credential: those stay out of logs. */
const LOOKS_SECRET = /token|password|passwd|pass|secret|credential|key|cert|auth|bearer|jwt|private/i;

function unsupported(key: string, value: unknown, known: Iterable<string>): CniError {
  return new CniError(
    CniCode.UnsupportedField,
    `unsupported netconf field "${key}": ${LOOKS_SECRET.test(key) ? '(value withheld)' : shown(value)}`,
    `mesh-cni knows: ${[...known].join(', ')}`,
  );
}

function absolutePath(key: string, value: unknown): string {
  if (typeof value !== 'string' || !value.startsWith('/') || value.includes('\0')) {
    throw invalid(key, value, 'must be an absolute path');
  }
  return value;
}

const NAMESPACE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

interface KubernetesFields {
  kubeconfig?: string;
  excludeNamespaces: readonly string[];
  agentPod: AgentPodMatch;
}

const DEFAULT_AGENT_POD: AgentPodMatch = { namespace: DEFAULT_AGENT_NAMESPACE, podNamePrefix: DEFAULT_AGENT_POD_PREFIX };

function parseKubernetes(value: unknown): KubernetesFields {
  if (!isObject(value)) throw invalid('kubernetes', value, 'must be an object');
  for (const key of Object.keys(value)) {
    if (!OUR_KUBERNETES_KEYS.has(key)) throw unsupported(`kubernetes.${key}`, value[key], [...OUR_KUBERNETES_KEYS].map((k) => `kubernetes.${k}`));
  }
  const kubeconfig = value.kubeconfig === undefined ? undefined : absolutePath('kubernetes.kubeconfig', value.kubeconfig);
  let excludeNamespaces = DEFAULT_EXCLUDED_NAMESPACES;
  if (value.exclude_namespaces !== undefined) {
    const list = value.exclude_namespaces;
    if (!Array.isArray(list) || !list.every((n) => typeof n === 'string' && NAMESPACE_NAME.test(n))) {
      throw invalid('kubernetes.exclude_namespaces', list, 'must be a list of namespace names');
    }
    excludeNamespaces = list as string[];
  }
  const agentNamespace = value.agent_namespace ?? DEFAULT_AGENT_NAMESPACE;
  if (typeof agentNamespace !== 'string' || !NAMESPACE_NAME.test(agentNamespace)) throw invalid('kubernetes.agent_namespace', agentNamespace, 'must be a namespace name');
  const prefix = value.agent_pod_prefix ?? DEFAULT_AGENT_POD_PREFIX;
  if (typeof prefix !== 'string' || !/^[a-z0-9][-.a-z0-9]*$/.test(prefix)) throw invalid('kubernetes.agent_pod_prefix', prefix, 'must be the start of a pod name (lower case letters, digits, "-", ".")');
  return { kubeconfig, excludeNamespaces, agentPod: { namespace: agentNamespace, podNamePrefix: prefix } };
}

function parseAmbient(value: unknown): NetconfAmbient {
  if (!isObject(value)) throw invalid('ambient', value, 'must be an object');
  for (const key of Object.keys(value)) {
    if (!OUR_AMBIENT_KEYS.has(key)) throw unsupported(`ambient.${key}`, value[key], [...OUR_AMBIENT_KEYS].map((k) => `ambient.${k}`));
  }
  if (value.enabled !== undefined && typeof value.enabled !== 'boolean') throw invalid('ambient.enabled', value.enabled, 'must be true or false');
  const ns = value.system_namespace ?? DEFAULT_ISTIO_SYSTEM_NAMESPACE;
  if (typeof ns !== 'string' || !NAMESPACE_NAME.test(ns)) throw invalid('ambient.system_namespace', ns, 'must be a namespace name');
  const selectors = value.enablement_selectors;
  if (selectors !== undefined && !Array.isArray(selectors)) throw invalid('ambient.enablement_selectors', selectors, 'must be a list of label selectors');
  return { enabled: value.enabled === true, ...(selectors === undefined ? {} : { selectors }), systemNamespace: ns };
}

function parseRuntimeAnnotations(runtimeConfig: unknown): Record<string, string> | undefined {
  if (runtimeConfig === undefined) return undefined;
  if (!isObject(runtimeConfig)) throw invalid('runtimeConfig', runtimeConfig, 'must be an object');
  const annotations = runtimeConfig[POD_ANNOTATIONS_CAPABILITY];
  if (annotations === undefined) return undefined;
  // containerd 1.6 sends null for a pod without annotations (a nil Go map): the runtime did answer, the pod
  // simply has none, so it is not meshed. Treating it as "no source" failed every such pod's ADD with 7.
  if (annotations === null) return {};
  const key = `runtimeConfig["${POD_ANNOTATIONS_CAPABILITY}"]`;
  if (!isObject(annotations)) throw invalid(key, annotations, 'must be an object of annotation names to strings');
  for (const [name, v] of Object.entries(annotations)) {
    if (typeof v !== 'string') throw invalid(`${key}["${name}"]`, v, 'must be a string');
  }
  return annotations as Record<string, string>;
}

function deprecationsOf(raw: Record<string, unknown>): Pick<MeshNetConf, 'deprecations'> {
  const notes = Object.keys(DEPRECATED_KEYS).filter((key) => Object.hasOwn(raw, key)).map((key) => DEPRECATED_KEYS[key]!);
  return notes.length > 0 ? { deprecations: notes } : {};
}

/** Validates the decoded stdin object (already known to carry a supported cniVersion and a valid name). */
export function parseMeshNetConf(raw: Record<string, unknown>, cniVersion: SupportedVersion): MeshNetConf {
  for (const key of Object.keys(raw)) {
    // Own keys only: `in` would also find a plain object's prototype (__proto__, constructor, toString).
    if (!STANDARD_KEYS.has(key) && !OUR_KEYS.has(key) && !Object.hasOwn(DEPRECATED_KEYS, key)) throw unsupported(key, raw[key], OUR_KEYS);
  }
  if (raw.type !== undefined && typeof raw.type !== 'string') throw invalid('type', raw.type, 'must be a string');
  if (raw.capabilities !== undefined) {
    if (!isObject(raw.capabilities) || !Object.values(raw.capabilities).every((v) => typeof v === 'boolean')) {
      throw invalid('capabilities', raw.capabilities, 'must map capability names to true or false');
    }
  }
  const logLevel = raw.log_level ?? 'info';
  if (!(LOG_LEVELS as readonly unknown[]).includes(logLevel)) throw invalid('log_level', logLevel, `must be one of ${LOG_LEVELS.join(', ')}`);
  const backend = raw.backend ?? 'auto';
  if (!(BACKEND_NAMES as readonly unknown[]).includes(backend)) throw invalid('backend', backend, `must be one of ${BACKEND_NAMES.join(', ')}`);
  const kubernetes: KubernetesFields = raw.kubernetes === undefined ? { excludeNamespaces: DEFAULT_EXCLUDED_NAMESPACES, agentPod: DEFAULT_AGENT_POD } : parseKubernetes(raw.kubernetes);
  return {
    name: raw.name as string,
    type: raw.type as string | undefined,
    cniVersion,
    logLevel: logLevel as LogLevel,
    logFile: raw.log_file === undefined ? DEFAULT_LOG_FILE : absolutePath('log_file', raw.log_file),
    kubeconfig: kubernetes.kubeconfig,
    excludeNamespaces: kubernetes.excludeNamespaces,
    agentPod: kubernetes.agentPod,
    backend: backend as BackendName,
    stateDir: raw.state_dir === undefined ? DEFAULT_STATE_DIR : absolutePath('state_dir', raw.state_dir),
    ...(raw.ambient === undefined ? {} : { ambient: parseAmbient(raw.ambient) }),
    runtimeAnnotations: parseRuntimeAnnotations(raw.runtimeConfig),
    ...deprecationsOf(raw),
  };
}
