/**
 * Applying ambient's in-pod rules: the engine's one apply (one transaction per family for iptables, one for
 * both with nftables, fail closed, owned and removable as the sidecar rules are), with the families ambient
 * asks for. Removal is the engine's `removeRedirect`, which takes out every rule of ours whichever data plane
 * wrote it, and ambient's routing with the rest.
 */
import * as fs from 'node:fs';
import { deepFreeze, RecentMap } from '../../caches';
import { withNetns } from '../../netns';
import type { Family } from '../constants';
import { applyPlan, checkRedirect, compareRedirect, type ApplyReport, type RedirectComparison, type VerifyMode } from '../engine';
import type { EngineOptions } from '../options';
import type { Plan } from '../plan';
import type { AmbientConfig } from './config';
import { buildAmbientPlan } from './plan';

export interface NetnsIpv6 {
  /** the netns has IPv6 at all (its kernel was not booted with it disabled) */
  present: boolean;
  /** IPv6 is disabled on its loopback (net.ipv6.conf.lo.disable_ipv6 = 1) */
  loopbackDisabled: boolean;
}

/** What the pod's netns says about IPv6, read from inside it. */
export function netnsIpv6(netns: string): NetnsIpv6 {
  return withNetns(netns, () => {
    try {
      return { present: true, loopbackDisabled: fs.readFileSync('/proc/sys/net/ipv6/conf/lo/disable_ipv6', 'utf8').trim() === '1' };
    } catch {
      return { present: false, loopbackDisabled: true };
    }
  });
}

/**
 * IPv4 always; IPv6 when the node enables it (AMBIENT_IPV6) and the netns has IPv6, as Istio programs both
 * families whenever its setting is on. Istio skips only the IPv6 loopback route where the pod's loopback has
 * IPv6 disabled (cni/pkg/iptables/iptables_linux.go forEachLoopbackRoute); so does `withoutIpv6Route`.
 */
export function ambientFamilies(config: AmbientConfig, ipv6: NetnsIpv6): Family[] {
  return config.ipv6 && ipv6.present ? ['ipv4', 'ipv6'] : ['ipv4'];
}

const plans = new RecentMap<string, Plan<AmbientConfig>>(64);

/** The plan for a config, built once per distinct config and frozen (backends key rendered text on it). */
export function ambientPlanFor(config: AmbientConfig, ipv6: NetnsIpv6 = { present: true, loopbackDisabled: false }): Plan<AmbientConfig> {
  const key = JSON.stringify([config, ipv6.loopbackDisabled]);
  let plan = plans.get(key);
  if (!plan) {
    const built = buildAmbientPlan(structuredClone(config));
    if (ipv6.loopbackDisabled) built.ipv6 = { ...built.ipv6, links: built.ipv6.links.filter((l) => l.kind !== 'route') };
    plans.set(key, (plan = deepFreeze(built)));
  }
  return plan;
}

export async function applyAmbient(o: EngineOptions & { config: AmbientConfig; verify?: VerifyMode }): Promise<ApplyReport> {
  const ipv6 = netnsIpv6(o.netns);
  const plan = ambientPlanFor(o.config, ipv6);
  o.laps?.lap('plan');
  return applyPlan({ ...o, plan, families: o.families ?? ambientFamilies(o.config, ipv6) });
}

/** The netns against an ambient pod's plan (CHECK, `explain`): the families it would program, read back. */
export async function compareAmbient(o: EngineOptions & { config: AmbientConfig }): Promise<RedirectComparison> {
  const ipv6 = netnsIpv6(o.netns);
  return compareRedirect({ ...o, config: undefined, plan: ambientPlanFor(o.config, ipv6), families: o.families ?? ambientFamilies(o.config, ipv6) });
}

export async function checkAmbient(o: EngineOptions & { config: AmbientConfig }): Promise<{ ok: boolean; problems: string[]; observedRules?: number }> {
  const ipv6 = netnsIpv6(o.netns);
  return checkRedirect({ ...o, config: undefined, plan: ambientPlanFor(o.config, ipv6), families: o.families ?? ambientFamilies(o.config, ipv6) });
}
