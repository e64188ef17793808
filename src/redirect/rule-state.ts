/**
 * What the engine knows about a netns's rules beyond the kernel's listing: how expected and observed rules
 * differ, and which namespaces a failed rollback left in an unknown state.
 */
import type { Backend, ObservedRule } from './backend';
import type { Family } from './constants';
import { netnsIdentity } from '../netns/identity';

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


/** Remembers why the netns is broken, or (`why` undefined) forgets that it was. */
export function markBroken(netns: string, why: string | undefined): void {
  const key = netnsIdentity(netns);
  if (key === undefined) return;
  if (why === undefined) brokenNetns.delete(key);
  else brokenNetns.set(key, why);
}

/** Why the netns is known broken (a failed rollback there), if it is. */
export function knownBroken(netns: string): string | undefined {
  const key = netnsIdentity(netns);
  return key === undefined ? undefined : brokenNetns.get(key);
}

/** Every rule of ours in the given families, as the backend lists them (one listing when it can). */
export async function observeAll(backend: Backend, netns: string, families: readonly Family[]): Promise<ObservedRule[]> {
  if (backend.observeFamilies) return backend.observeFamilies(netns, families);
  return (await Promise.all(families.map((family) => backend.observe(netns, family)))).flat();
}
