/**
 * From a meshed pod's facts to what is programmed: its config and its plan, each made once per distinct input
 * and frozen so requests can share them. Apart from engine.ts, which touches the kernel, so that what only
 * prepares (the plugin's wiring, the reconciler) loads nothing native.
 */
import { deepFreeze, RecentMap } from '../caches';
import { redirectConfigFromAnnotations, type ProxySettings, type RedirectConfig } from './config';
import { buildPlan, type Plan } from './plan';

/** Plans by their config's JSON; a cluster runs few distinct configs, so a small bound holds them all. */
const plans = new RecentMap<string, Plan>(64);

/**
 * The plan for a config, built once per distinct config: the agent's ADDs and the reconciler's checks mostly
 * repeat a handful. Keyed by the config's whole JSON (every field is plain data), so any change in any field is
 * a different plan; frozen, so nothing can alter a plan another request shares, and the backends key their
 * rendered text on its rules (the bench's "agent's own work per ADD": render costs nothing for a known plan).
 */
export function planFor(config: RedirectConfig): Plan {
  const key = JSON.stringify(config);
  let plan = plans.get(key);
  if (!plan) plans.set(key, (plan = deepFreeze(buildPlan(structuredClone(config)))));
  return plan;
}

/** A meshed pod's redirect: its config (frozen) and its plan. */
export interface PreparedRedirect {
  config: Readonly<RedirectConfig>;
  plan: Plan;
}

/** Prepared redirects by the pod facts' JSON: a node's pods come from a few Deployments. */
const prepared = new RecentMap<string, PreparedRedirect>(256);

/**
 * The config and plan of a meshed pod's annotations and proxy settings, made once per distinct pair: the
 * annotation parser and the config's JSON are most of an ADD's plan phase (the bench's "agent's own work per
 * ADD"). Annotations that do not parse are not remembered, so their InvalidConfigError is raised every time.
 */
export function preparedFor(pod: { annotations: Readonly<Record<string, string>>; proxy: Readonly<ProxySettings> }): PreparedRedirect {
  const key = JSON.stringify([pod.annotations, pod.proxy]);
  let known = prepared.get(key);
  if (!known) {
    const config = deepFreeze(redirectConfigFromAnnotations(pod.annotations, pod.proxy));
    prepared.set(key, (known = { config, plan: planFor(config) }));
  }
  return known;
}

