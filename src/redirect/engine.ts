/**
 * Apply, remove, check and show a pod's redirect rules: the thin side-effecting edge around the pure plan.
 *
 * A netns ends either fully programmed or with none of our rules: each family is one atomic transaction,
 * the result is read back and compared with the plan, and any failure removes everything of ours (every
 * family, links included) before the error is reported. When that removal fails too, the error says so
 * (RollbackFailedError, with the rules left listed) and the netns is remembered as broken, so CHECK and the
 * reconciler never call it healthy.
 *
 * Apply, remove and compare hold the netns to themselves (`withNetnsLock`): one request at a time per
 * namespace in this process, and an flock on the namespace file against every other mesh-cni process. Two
 * ADDs racing into one netns used to interleave their save and restore steps and one's rollback deleted
 * what the other had committed; serialised, each later apply replaces the earlier one's rules in one
 * transaction.
 */
import { RollbackFailedError, RuleMismatchError } from '../errors';
import { withNetnsLock } from '../netns';
import { chooseBackend } from './choose-backend';
import { widestConfig, type RedirectConfig } from './config';
import { planFor } from './prepare';
import { FAMILIES, type Family } from './constants';
import { clearLinks, detectFamilies, setLinks } from './routes';
import { buildPlan, type AnyPlan, type Plan } from './plan';
import type { ApplyLaps, Backend, ObservedRule } from './backend';
import { diffRules, markBroken, observeAll } from './rule-state';
import type { EngineOptions } from './options';
import { AMBIENT_LINKS } from './ambient/plan';

export { BACKEND_NAMES, type BackendName } from '../defaults';
export { planFor, preparedFor, type PreparedRedirect } from './prepare';
export { chooseBackend, rememberAutoDetection } from './choose-backend';
export { checkRedirect, compareRedirect, type RedirectComparison } from './compare';
export type { EngineOptions } from './options';

/**
 * How an apply proves its result. `always` reads the rules back and compares them with the plan (the CLI, the
 * reconciler's repair). `when-replacing` (a pod's ADD) skips the read-back when the backend says the one
 * transaction it ran cannot have left anything but the plan: iptables' fresh-sandbox restore, whose `-N`
 * lines fail the whole transaction if any chain of ours exists, and nft's script, which deletes and defines
 * our tables in one transaction. The read-back is two to six more processes; on the ADD path it would be
 * most of the cost.
 */
export type VerifyMode = 'always' | 'when-replacing';

export interface ApplyReport {
  backend: string;
  /** Why this backend: `--backend` named it, or what `auto` found on the host. */
  backendReason: string;
  families: Family[];
  rules: number;
  durationMs: number;
  /** How the backend reached the kernel, where it has a choice (nftables: `libnftables in-process (...)` or `the nft program (...)`). */
  via?: string;
}


/**
 * Takes out everything of ours after a failed apply. If that fails as well, the original error is not
 * enough: the netns holds rules nobody asked for, so the error becomes a RollbackFailedError naming them.
 */
async function rollBack(netns: string, named: string, backend: Backend, cause: unknown): Promise<never> {
  try {
    await removeAll(netns, backend);
  } catch (rollbackErr) {
    let left: string[] | undefined;
    let readError: unknown;
    try {
      left = (await observeAll(backend, netns, FAMILIES)).map((r) => `${r.family} ${r.table}/${r.chain}: ${r.text}`);
    } catch (err) {
      readError = err;
    }
    const err = new RollbackFailedError(named, cause, rollbackErr, left, readError);
    markBroken(netns, err.message);
    throw err;
  }
  throw cause;
}

/** Applies a plan (the lower-level entry; `applyRedirect` builds the plan from a config). */
export async function applyPlan(o: EngineOptions & { plan: AnyPlan; verify?: VerifyMode }): Promise<ApplyReport> {
  const started = process.hrtime.bigint();
  const { backend, reason } = await chooseBackend(o);
  // `netns` is the descriptor withNetnsLock opened and checked; `o.netns` is only named in messages.
  return withNetnsLock(o.netns, async (netns) => {
    const families = o.families ?? (await detectFamilies(netns));
    let rules = 0;
    try {
      // Choosing the backend, the lock and the families are part of applying.
      o.laps?.lap('apply');
      const outcome = await backend.apply(netns, o.plan, families, o.laps as ApplyLaps | undefined);
      const readBack = o.verify !== 'when-replacing' || !outcome.provenByTransaction;
      for (const family of families) {
        const fp = o.plan[family];
        await setLinks(netns, fp.links);
        if (readBack) {
          const problems = diffRules(backend.expected(family, fp.rules), await backend.observe(netns, family));
          if (problems.length > 0) {
            throw new RuleMismatchError(`the ${family} rules read back from ${o.netns} differ from the plan`, problems.join('\n'));
          }
        }
        rules += backend.expected(family, fp.rules).length;
      }
    } catch (err) {
      return rollBack(netns, o.netns, backend, err);
    }
    markBroken(netns, undefined);
    o.laps?.lap('apply');
    const via = backend.describeVia?.();
    return { backend: backend.name, backendReason: reason, families, rules, durationMs: Number(process.hrtime.bigint() - started) / 1e6, ...(via ? { via } : {}) };
  }, { signal: o.signal, allowOwn: o.allowHostNetns });
}

/** Applies a config: its plan is `plan` when the caller has it (preparedFor), else the plan cache's. */
export async function applyRedirect(o: EngineOptions & { config: RedirectConfig; plan?: Plan; verify?: VerifyMode }): Promise<ApplyReport> {
  const plan = o.plan ?? planFor(o.config);
  o.laps?.lap('plan');
  return applyPlan({ ...o, plan });
}

async function removeAll(netns: string, backend: Backend): Promise<number> {
  const removed = await backend.remove(netns);
  const widest = buildPlan(widestConfig());
  // Ambient's routing too: one `ip` process per family takes away both data planes' links.
  for (const family of FAMILIES) await clearLinks(netns, family, [widest, AMBIENT_LINKS]);
  return removed;
}

/** Removes every rule of ours from the netns (both families); throws NetnsNotFoundError when it is gone. */
export async function removeRedirect(o: EngineOptions): Promise<{ removed: number }> {
  const { backend } = await chooseBackend(o);
  return withNetnsLock(o.netns, async (netns) => {
    const removed = await removeAll(netns, backend);
    markBroken(netns, undefined);
    return { removed };
  }, { signal: o.signal, allowOwn: o.allowHostNetns });
}

/** Our rules as the kernel holds them now. */
export async function showRedirect(o: EngineOptions): Promise<{ backend: string; rules: ObservedRule[] }> {
  const { backend } = await chooseBackend(o);
  const rules: ObservedRule[] = [];
  for (const family of o.families ?? FAMILIES) rules.push(...(await backend.observe(o.netns, family)));
  return { backend: backend.name, rules };
}
