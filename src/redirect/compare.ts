/**
 * Reading a netns against a config: what the plan says it should hold, what it holds, and how they differ
 * (CHECK, the reconciler, `explain`). Read under the netns lock, so an apply in progress is never seen half-way.
 */
import { withNetnsLock } from '../netns';
import { chooseBackend } from './choose-backend';
import type { RedirectConfig } from './config';
import { FAMILIES, type Family } from './constants';
import type { EngineOptions } from './options';
import { detectFamilies } from './routes';
import { buildPlan, type AnyPlan } from './plan';
import type { ObservedRule } from './backend';
import { diffRules, knownBroken, observeAll } from './rule-state';

export interface RedirectComparison {
  backend: string;
  /** families the config applies to in this netns (IPv6 only where the pod has a global IPv6 address) */
  families: Family[];
  /** what the plan says the kernel should hold, as the backend lists it back */
  expected: ObservedRule[];
  observed: ObservedRule[];
  /** one line per difference (`diffRules`), empty when they match */
  problems: string[];
}

/**
 * The expected rules (from the config's plan; none with `config: undefined`, a pod that should have none of
 * ours), the rules the netns holds, and how they differ. Both families are read, so stray rules show up too.
 */
export async function compareRedirect(o: EngineOptions & { config: RedirectConfig | undefined; plan?: AnyPlan }): Promise<RedirectComparison> {
  const { backend } = await chooseBackend(o);
  // A plan given (ambient's, with its families) is compared as it is; otherwise the sidecar config's.
  const plan = o.plan ?? (o.config ? buildPlan(o.config) : undefined);
  // Under the lock: an apply in progress (one transaction per family) is never seen half-way.
  return withNetnsLock(o.netns, async (netns) => {
    const families = o.families ?? (await detectFamilies(netns));
    const expected: ObservedRule[] = [];
    const problems: string[] = [];
    const broken = knownBroken(netns);
    if (broken) problems.push(`a failed rollback left this netns in an unknown state: ${broken}`);
    let observed: ObservedRule[];
    try {
      observed = await observeAll(backend, netns, FAMILIES);
    } catch (err) {
      if (!broken) throw err;
      return { backend: backend.name, families, expected, observed: [], problems: [...problems, `the rules could not be read: ${(err as Error).message}`] };
    }
    for (const family of FAMILIES) {
      const want = plan && families.includes(family) ? backend.expected(family, plan[family].rules) : [];
      expected.push(...want);
      problems.push(...diffRules(want, observed.filter((r) => r.family === family)));
    }
    return { backend: backend.name, families, expected, observed, problems };
  }, { allowOwn: o.allowHostNetns });
}

/**
 * Whether the netns holds exactly what the config asks for; `problems` says what differs, `observedRules` how
 * many of ours are there at all (0: none, which a reader must hear as "no rules", not as N differences).
 */
export async function checkRedirect(o: EngineOptions & { config: RedirectConfig | undefined; plan?: AnyPlan }): Promise<{ ok: boolean; problems: string[]; observedRules?: number }> {
  const { problems, observed } = await compareRedirect(o);
  return { ok: problems.length === 0, problems, observedRules: observed.length };
}
