/**
 * Which pods ambient captures: Istio's enablement selectors (cni/pkg/util/enablement_selector.go), each a pod
 * label selector and a namespace label selector, Kubernetes' LabelSelector semantics. A pod matches when any
 * one selector's two halves both match; a host-network pod and a pod with a sidecar never do. The selectors
 * are the chart's `ambient.enablementSelectors` (Istio's AMBIENT_ENABLEMENT_SELECTOR); the default is Istio's:
 * the pod labelled `istio.io/dataplane-mode=ambient`, or its namespace so labelled unless the pod says `none`.
 */
import { MeshCniError } from '../errors';
import { DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE } from './istio-names';

export interface LabelSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

export interface EnablementSelector {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
}

/** manifests/charts/istio-cni/values.yaml `ambient.enablementSelectors` at Istio HEAD. */
export const DEFAULT_ENABLEMENT_SELECTORS: readonly EnablementSelector[] = Object.freeze([
  { podSelector: { matchLabels: { [DATAPLANE_MODE_LABEL]: DATAPLANE_MODE_AMBIENT } } },
  {
    podSelector: { matchExpressions: [{ key: DATAPLANE_MODE_LABEL, operator: 'NotIn', values: [DATAPLANE_MODE_NONE] }] },
    namespaceSelector: { matchLabels: { [DATAPLANE_MODE_LABEL]: DATAPLANE_MODE_AMBIENT } },
  },
]);

const isEmpty = (s: LabelSelector | undefined) => !s || (Object.keys(s.matchLabels ?? {}).length === 0 && (s.matchExpressions ?? []).length === 0);

/** Kubernetes' LabelSelector: every matchLabels pair and every expression must hold; an empty selector matches everything. */
export function selectorMatches(selector: LabelSelector | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    const value = labels[e.key];
    switch (e.operator) {
      case 'In':
        if (!has || !(e.values ?? []).includes(value!)) return false;
        break;
      case 'NotIn':
        // absent counts as "not in", as in Kubernetes
        if (has && (e.values ?? []).includes(value!)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
    }
  }
  return true;
}

/** Which selector (0-based) captures the pod, or -1: the pod's labels and its namespace's. */
export function matchingSelector(selectors: readonly EnablementSelector[], podLabels: Readonly<Record<string, string>>, namespaceLabels: Readonly<Record<string, string>>): number {
  return selectors.findIndex((s) => selectorMatches(s.podSelector, podLabels) && selectorMatches(s.namespaceSelector, namespaceLabels));
}

/** Istio's MatchesNamespace: a namespace whose labels alone enable ambient (a selector with a non-empty namespace half). */
export function namespaceEnabled(selectors: readonly EnablementSelector[], namespaceLabels: Readonly<Record<string, string>>): boolean {
  return selectors.some((s) => !isEmpty(s.namespaceSelector) && selectorMatches(s.namespaceSelector, namespaceLabels));
}

/** A selector as a person writes it in the ConfigMap, for `explain`. */
export function describeSelector(s: EnablementSelector): string {
  const half = (sel: LabelSelector | undefined) => {
    if (isEmpty(sel)) return 'any';
    const parts = [...Object.entries(sel!.matchLabels ?? {}).map(([k, v]) => `${k}=${v}`), ...(sel!.matchExpressions ?? []).map((e) => `${e.key} ${e.operator}${e.values ? ` (${e.values.join(', ')})` : ''}`)];
    return parts.join(', ');
  };
  return `pod [${half(s.podSelector)}] in namespace [${half(s.namespaceSelector)}]`;
}

/**
 * The selectors from their YAML or JSON text (Istio's AMBIENT_ENABLEMENT_SELECTOR is the chart's list as YAML;
 * JSON is YAML too). Refuses what Kubernetes would refuse, naming the selector.
 */
export function parseEnablementSelectors(text: string): EnablementSelector[] {
  // js-yaml is already what reads kubeconfigs; loaded only when selectors are given.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const yaml = require('js-yaml') as typeof import('js-yaml');
  let parsed: unknown;
  try {
    parsed = yaml.load(text);
  } catch (err) {
    throw new MeshCniError(`ambient enablement selectors do not parse: ${(err as Error).message}`, { hint: 'give a YAML list of {podSelector, namespaceSelector}, as the chart\'s ambient.enablementSelectors' });
  }
  return checkEnablementSelectors(parsed);
}

/** Selectors already decoded (from JSON: the netconf), checked as Kubernetes checks a LabelSelector. */
export function checkEnablementSelectors(value: unknown): EnablementSelector[] {
  if (!Array.isArray(value)) throw new MeshCniError('ambient enablement selectors must be a list', { hint: 'e.g. - podSelector: {matchLabels: {istio.io/dataplane-mode: ambient}}' });
  return value.map((s, i) => checkSelector(s, i));
}

function checkSelector(s: unknown, i: number): EnablementSelector {
  const where = `enablement selector ${i + 1}`;
  if (typeof s !== 'object' || s === null) throw new MeshCniError(`${where} is not an object`);
  const out: EnablementSelector = {};
  for (const [k, v] of Object.entries(s)) {
    if (k !== 'podSelector' && k !== 'namespaceSelector') throw new MeshCniError(`${where}: unknown field ${k} (podSelector, namespaceSelector)`);
    out[k] = checkLabelSelector(v, `${where} ${k}`);
  }
  return out;
}

function checkLabelSelector(v: unknown, where: string): LabelSelector {
  if (v === null || v === undefined) return {};
  if (typeof v !== 'object') throw new MeshCniError(`${where} is not an object`);
  const o = v as Record<string, unknown>;
  const out: LabelSelector = {};
  for (const key of Object.keys(o)) if (key !== 'matchLabels' && key !== 'matchExpressions') throw new MeshCniError(`${where}: unknown field ${key} (matchLabels, matchExpressions)`);
  if (o.matchLabels !== undefined && o.matchLabels !== null) {
    if (typeof o.matchLabels !== 'object') throw new MeshCniError(`${where}.matchLabels is not a map`);
    out.matchLabels = Object.fromEntries(Object.entries(o.matchLabels as object).map(([k, val]) => [k, String(val)]));
  }
  if (o.matchExpressions !== undefined && o.matchExpressions !== null) {
    if (!Array.isArray(o.matchExpressions)) throw new MeshCniError(`${where}.matchExpressions is not a list`);
    out.matchExpressions = o.matchExpressions.map((e: unknown, j: number) => {
      const r = e as Partial<LabelSelectorRequirement>;
      if (typeof r?.key !== 'string' || !['In', 'NotIn', 'Exists', 'DoesNotExist'].includes(String(r.operator))) {
        throw new MeshCniError(`${where}.matchExpressions[${j}] needs a key and an operator In, NotIn, Exists or DoesNotExist`);
      }
      const values = Array.isArray(r.values) ? r.values.map(String) : undefined;
      if ((r.operator === 'In' || r.operator === 'NotIn') && !values?.length) throw new MeshCniError(`${where}.matchExpressions[${j}]: ${r.operator} needs values`);
      if ((r.operator === 'Exists' || r.operator === 'DoesNotExist') && values?.length) throw new MeshCniError(`${where}.matchExpressions[${j}]: ${r.operator} takes no values`);
      return { key: r.key, operator: r.operator as LabelSelectorRequirement['operator'], ...(values ? { values } : {}) };
    });
  }
  return out;
}
