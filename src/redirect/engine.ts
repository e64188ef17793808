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
import * as fs from 'node:fs';
import { MeshCniError, RollbackFailedError, RuleMismatchError } from '../errors';
import { isHostNetns, run, withNetns, withNetnsLock } from '../netns';
import { widestConfig, type RedirectConfig } from './config';
import { FAMILIES, type Family } from './constants';
import { buildPlan, type LinkSetup, type Plan } from './plan';
import { IptablesBackend } from './backend/iptables';
import { NftablesBackend } from './backend/nftables';
import type { Backend, ObservedRule } from './backend/types';
import { detectBackend, type BackendChoice } from './detect';

/**
 * How an apply proves its result. `always` reads the rules back and compares them with the plan (the CLI, the
 * reconciler's repair). `when-replacing` (a pod's ADD) skips the read-back when the backend says the one
 * transaction it ran cannot have left anything but the plan: iptables' fresh-sandbox restore, whose `-N`
 * lines fail the whole transaction if any chain of ours exists, and nft's script, which deletes and defines
 * our tables in one transaction. The read-back is two to six more processes; on the ADD path it would be
 * most of the cost.
 */
export type VerifyMode = 'always' | 'when-replacing' | 'never';

export type BackendName = 'auto' | 'iptables' | 'iptables-nft' | 'iptables-legacy' | 'nftables';
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'iptables', 'iptables-nft', 'iptables-legacy', 'nftables'];
export { FAMILIES };

export interface ApplyReport {
  backend: string;
  /** Why this backend: `--backend` named it, or what `auto` found on the host. */
  backendReason: string;
  families: Family[];
  rules: number;
  durationMs: number;
}

export interface EngineOptions {
  netns: string;
  backend?: BackendName;
  /** Which families to program; by default IPv4, and IPv6 when the netns has a global IPv6 address. */
  families?: Family[];
  /** Programming the namespace this process runs in is refused unless asked for (it is the node's). */
  allowHostNetns?: boolean;
  /** Where `auto` looks for the node's existing rules: the netns the agent runs in, unless a test says otherwise. */
  hostNetns?: string;
  /** A backend object to use instead of `backend` (fault tests hand one whose programs are stand-ins). */
  backendInstance?: Backend;
  /**
   * Aborted when the request is abandoned (its caller went away). Checked once the netns lock is held,
   * before anything in the netns is read or changed; an apply already under way is finished, not cut.
   */
  signal?: AbortSignal;
}

/** A backend by its explicit name; `auto` must be resolved first (`chooseBackend`), it depends on the host. */
export function backendFor(name: Exclude<BackendName, 'auto'>): Backend {
  switch (name) {
    case 'iptables':
      return new IptablesBackend('default');
    case 'iptables-nft':
      return new IptablesBackend('nft');
    case 'iptables-legacy':
      return new IptablesBackend('legacy');
    case 'nftables':
      return new NftablesBackend();
  }
}

interface CachedChoice {
  choice: Promise<BackendChoice>;
  at: number;
  refreshing?: boolean;
}

/** `auto` detections kept by host netns, when a long-running process asked for it (rememberAutoDetection). */
const detections = new Map<string, CachedChoice>();
let detectionTtlMs = 0;

/**
 * Keeps what `auto` found for `ttlMs` instead of running its five programs on every call. The agent asks
 * for this: the host's packet filter changes rarely, and a pod's ADD should not pay for looking. After the
 * TTL the last answer is still used while a new detection runs in the background. 0 turns it off.
 */
export function rememberAutoDetection(ttlMs: number): void {
  detectionTtlMs = ttlMs;
  detections.clear();
}

function detectCached(hostNetns: string | undefined): Promise<BackendChoice> {
  if (detectionTtlMs <= 0) return detectBackend(hostNetns);
  const key = hostNetns ?? '';
  const cached = detections.get(key);
  const fresh = () => {
    const entry: CachedChoice = { choice: detectBackend(hostNetns), at: Date.now() };
    // A failed detection is not remembered.
    entry.choice.catch(() => detections.delete(key));
    return entry;
  };
  if (!cached) {
    const entry = fresh();
    detections.set(key, entry);
    return entry.choice;
  }
  if (Date.now() - cached.at > detectionTtlMs && !cached.refreshing) {
    cached.refreshing = true;
    const next = fresh();
    next.choice.then(() => detections.set(key, next), () => (cached.refreshing = false));
  }
  return cached.choice;
}

/** The backend to use and why: the named one, or for `auto` what the host already uses. */
export async function chooseBackend(o: Pick<EngineOptions, 'backend' | 'hostNetns' | 'backendInstance'>): Promise<{ backend: Backend; reason: string }> {
  if (o.backendInstance) return { backend: o.backendInstance, reason: 'given by the caller' };
  const name = o.backend ?? 'auto';
  if (name !== 'auto') return { backend: backendFor(name), reason: 'named with --backend' };
  const choice: BackendChoice = await detectCached(o.hostNetns);
  return { backend: backendFor(choice.backend), reason: `auto: ${choice.reason}` };
}

const IF_INET6_SCOPE_GLOBAL = '00';

/**
 * IPv4 always; IPv6 when the namespace has a global IPv6 address (a dual-stack or IPv6 pod). Read from the
 * kernel's address table as seen from inside the netns (no `ip` process); no file means IPv6 is disabled.
 */
export async function detectFamilies(netns: string): Promise<Family[]> {
  const table = withNetns(netns, () => {
    try {
      return fs.readFileSync('/proc/thread-self/net/if_inet6', 'utf8');
    } catch {
      return '';
    }
  });
  // Columns: address, ifindex, prefix length, scope, flags, name.
  const global = table.split('\n').some((line) => line.trim().split(/\s+/)[3] === IF_INET6_SCOPE_GLOBAL);
  return global ? ['ipv4', 'ipv6'] : ['ipv4'];
}

function guardHost(o: EngineOptions): void {
  if (!o.allowHostNetns && isHostNetns(o.netns)) {
    throw new MeshCniError(`${o.netns} is this node's own network namespace; refusing to redirect its traffic`, {
      hint: 'pass the pod sandbox netns (for example /var/run/netns/cni-...)',
    });
  }
}

function linkArgs(link: LinkSetup, op: 'add' | 'del'): string[] {
  const fam = link.family === 'ipv4' ? '-4' : '-6';
  switch (link.kind) {
    case 'address':
      return [fam, 'addr', op, link.cidr, 'dev', link.dev];
    case 'rule':
      return [fam, 'rule', op, 'fwmark', String(link.fwmark), 'lookup', String(link.table)];
    case 'route':
      return [fam, 'route', op, link.type, link.dst, 'dev', link.dev, 'table', String(link.table)];
  }
}

/** Whether a link setting is already there (`ip rule add` would happily add a duplicate). */
async function hasLink(netns: string, link: LinkSetup): Promise<boolean> {
  if (link.kind !== 'rule') return false;
  const fam = link.family === 'ipv4' ? '-4' : '-6';
  const r = await run(netns, 'ip', [fam, 'rule', 'list', 'fwmark', String(link.fwmark), 'lookup', String(link.table)], { packageHint: 'iproute2' });
  return r.code === 0 && r.stdout.trim() !== '';
}

async function setLinks(netns: string, links: readonly LinkSetup[]): Promise<void> {
  for (const link of links) {
    if (await hasLink(netns, link)) continue;
    const r = await run(netns, 'ip', linkArgs(link, 'add'), { packageHint: 'iproute2' });
    if (r.code !== 0 && !/File exists|already assigned/.test(r.stderr)) {
      throw new MeshCniError(`ip ${linkArgs(link, 'add').join(' ')} failed: ${r.stderr.trim()}`, { hint: 'the rules were not applied' });
    }
  }
}

/** Links our plans can create, taken away on remove (missing ones are fine). */
async function clearLinks(netns: string, family: Family, plan: Plan): Promise<void> {
  for (const link of plan[family].links) await run(netns, 'ip', linkArgs(link, 'del'), { packageHint: 'iproute2' });
}

/** Compares what a chain should hold with what it holds; one line per difference, empty when equal. */
export function diffRules(expected: readonly ObservedRule[], observed: readonly ObservedRule[]): string[] {
  const key = (r: ObservedRule) => `${r.family} ${r.table}/${r.chain}`;
  const chains = [...new Set([...expected.map(key), ...observed.map(key)])];
  const problems: string[] = [];
  for (const chain of chains) {
    const want = expected.filter((r) => key(r) === chain);
    const have = observed.filter((r) => key(r) === chain);
    const haveLeft = [...have];
    for (const w of want) {
      const i = haveLeft.findIndex((h) => h.signature === w.signature);
      if (i < 0) problems.push(`missing in ${chain}: ${w.text}`);
      else haveLeft.splice(i, 1);
    }
    for (const h of haveLeft) problems.push(`unexpected in ${chain}: ${h.text}`);
    if (problems.length === 0 && want.map((r) => r.signature).join('\n') !== have.map((r) => r.signature).join('\n')) {
      problems.push(`rules in ${chain} are in the wrong order`);
    }
  }
  return problems;
}

/**
 * Namespaces (by dev:inode) where a failed rollback left rules of ours: CHECK and the reconciler report them
 * broken until an apply or remove succeeds there.
 */
const brokenNetns = new Map<string, string>();

function netnsKey(netns: string): string | undefined {
  try {
    const st = fs.statSync(netns);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

function markBroken(netns: string, why: string | undefined): void {
  const key = netnsKey(netns);
  if (key === undefined) return;
  if (why === undefined) brokenNetns.delete(key);
  else brokenNetns.set(key, why);
}

/** Why the netns is known broken (a failed rollback there), if it is. */
export function knownBroken(netns: string): string | undefined {
  const key = netnsKey(netns);
  return key === undefined ? undefined : brokenNetns.get(key);
}

/**
 * Takes out everything of ours after a failed apply. If that fails as well, the original error is not
 * enough: the netns holds rules nobody asked for, so the error becomes a RollbackFailedError naming them.
 */
async function rollBack(netns: string, backend: Backend, cause: unknown): Promise<never> {
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
    const err = new RollbackFailedError(netns, cause, rollbackErr, left, readError);
    markBroken(netns, err.message);
    throw err;
  }
  throw cause;
}

/** Applies a plan (the lower-level entry; `applyRedirect` builds the plan from a config). */
export async function applyPlan(o: EngineOptions & { plan: Plan; verify?: boolean | VerifyMode }): Promise<ApplyReport> {
  const started = process.hrtime.bigint();
  guardHost(o);
  const { backend, reason } = await chooseBackend(o);
  return withNetnsLock(o.netns, async () => {
    const families = o.families ?? (await detectFamilies(o.netns));
    let rules = 0;
    try {
      const outcome = await backend.apply(o.netns, o.plan, families);
      const mode: VerifyMode = o.verify === false ? 'never' : o.verify === true || o.verify === undefined ? 'always' : o.verify;
      const readBack = mode === 'always' || (mode === 'when-replacing' && !outcome.provenByTransaction);
      for (const family of families) {
        const fp = o.plan[family];
        await setLinks(o.netns, fp.links);
        if (readBack) {
          const problems = diffRules(backend.expected(family, fp.rules), await backend.observe(o.netns, family));
          if (problems.length > 0) {
            throw new RuleMismatchError(`the ${family} rules read back from ${o.netns} differ from the plan`, problems.join('\n'));
          }
        }
        rules += backend.expected(family, fp.rules).length;
      }
    } catch (err) {
      return rollBack(o.netns, backend, err);
    }
    markBroken(o.netns, undefined);
    return { backend: backend.name, backendReason: reason, families, rules, durationMs: Number(process.hrtime.bigint() - started) / 1e6 };
  }, { signal: o.signal });
}

export async function applyRedirect(o: EngineOptions & { config: RedirectConfig; verify?: boolean | VerifyMode }): Promise<ApplyReport> {
  return applyPlan({ ...o, plan: buildPlan(o.config) });
}

async function removeAll(netns: string, backend: Backend): Promise<number> {
  const removed = await backend.remove(netns);
  const widest = buildPlan(widestConfig());
  for (const family of FAMILIES) await clearLinks(netns, family, widest);
  return removed;
}

/** Removes every rule of ours from the netns (both families); throws NetnsNotFoundError when it is gone. */
export async function removeRedirect(o: EngineOptions): Promise<{ removed: number }> {
  guardHost(o);
  const { backend } = await chooseBackend(o);
  return withNetnsLock(o.netns, async () => {
    const removed = await removeAll(o.netns, backend);
    markBroken(o.netns, undefined);
    return { removed };
  }, { signal: o.signal });
}

async function observeAll(backend: Backend, netns: string, families: readonly Family[]): Promise<ObservedRule[]> {
  if (backend.observeFamilies) return backend.observeFamilies(netns, families);
  return (await Promise.all(families.map((family) => backend.observe(netns, family)))).flat();
}

/** Our rules as the kernel holds them now. */
export async function showRedirect(o: EngineOptions): Promise<{ backend: string; rules: ObservedRule[] }> {
  const { backend } = await chooseBackend(o);
  const rules: ObservedRule[] = [];
  for (const family of o.families ?? FAMILIES) rules.push(...(await backend.observe(o.netns, family)));
  return { backend: backend.name, rules };
}

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
export async function compareRedirect(o: EngineOptions & { config: RedirectConfig | undefined }): Promise<RedirectComparison> {
  const { backend } = await chooseBackend(o);
  const plan = o.config ? buildPlan(o.config) : undefined;
  // Under the lock: an apply in progress (one transaction per family) is never seen half-way.
  return withNetnsLock(o.netns, async () => {
    const families = o.families ?? (await detectFamilies(o.netns));
    const expected: ObservedRule[] = [];
    const problems: string[] = [];
    const broken = knownBroken(o.netns);
    if (broken) problems.push(`a failed rollback left this netns in an unknown state: ${broken}`);
    let observed: ObservedRule[];
    try {
      observed = await observeAll(backend, o.netns, FAMILIES);
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
  });
}

/**
 * Whether the netns holds exactly what the config asks for; `problems` says what differs, `observedRules` how
 * many of ours are there at all (0: none, which a reader must hear as "no rules", not as N differences).
 */
export async function checkRedirect(o: EngineOptions & { config: RedirectConfig }): Promise<{ ok: boolean; problems: string[]; observedRules?: number }> {
  const { problems, observed } = await compareRedirect(o);
  return { ok: problems.length === 0, problems, observedRules: observed.length };
}
