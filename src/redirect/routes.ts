/**
 * The netns facts and settings outside the packet filter: which families a pod has, and the `ip` address,
 * rule and route settings a plan asks for (TPROXY's routing table, reroute addresses).
 */
import * as fs from 'node:fs';
import { MeshCniError } from '../errors';
import { run, withNetns } from '../netns';
import type { Family } from './constants';
import type { AnyPlan, LinkSetup } from './plan';

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

/** `fwmark 0x111/0xfff` with a mask (ambient), the bare number without (TPROXY's 1337). */
function fwmark(link: Extract<LinkSetup, { kind: 'rule' }>): string {
  return link.mask === undefined ? String(link.fwmark) : `0x${link.fwmark.toString(16)}/0x${link.mask.toString(16)}`;
}

/** The `ip` arguments after the family flag. */
function linkCommand(link: LinkSetup, op: 'add' | 'del'): string[] {
  switch (link.kind) {
    case 'address':
      return ['addr', op, link.cidr, 'dev', link.dev];
    case 'rule':
      return ['rule', op, 'fwmark', fwmark(link), ...(link.priority === undefined ? [] : ['pref', String(link.priority)]), 'lookup', String(link.table)];
    case 'route':
      return ['route', op, link.type, link.dst, 'dev', link.dev, 'table', String(link.table)];
  }
}

const familyFlag = (family: Family) => (family === 'ipv4' ? '-4' : '-6');

function linkArgs(link: LinkSetup, op: 'add' | 'del'): string[] {
  return [familyFlag(link.family), ...linkCommand(link, op)];
}

/** Whether a link setting is already there (`ip rule add` would happily add a duplicate). */
async function hasLink(netns: string, link: LinkSetup): Promise<boolean> {
  if (link.kind !== 'rule') return false;
  const fam = link.family === 'ipv4' ? '-4' : '-6';
  const r = await run(netns, 'ip', [fam, 'rule', 'list', 'fwmark', fwmark(link), 'lookup', String(link.table)], { packageHint: 'iproute2' });
  return r.code === 0 && r.stdout.trim() !== '';
}

export async function setLinks(netns: string, links: readonly LinkSetup[]): Promise<void> {
  for (const link of links) {
    if (await hasLink(netns, link)) continue;
    const r = await run(netns, 'ip', linkArgs(link, 'add'), { packageHint: 'iproute2' });
    if (r.code !== 0 && !/File exists|already assigned/.test(r.stderr)) {
      throw new MeshCniError(`ip ${linkArgs(link, 'add').join(' ')} failed: ${r.stderr.trim()}`, { hint: 'the rules were not applied' });
    }
  }
}

/**
 * Links our plans can create, taken away on remove (missing ones are fine): every plan's links of one family
 * in one `ip -force -batch` process, which goes on past a line that fails (a link that is not there).
 */
export async function clearLinks(netns: string, family: Family, plans: ReadonlyArray<AnyPlan>): Promise<void> {
  const lines = plans.flatMap((plan) => plan[family].links.filter((l) => l.family === family).map((l) => linkCommand(l, 'del').join(' ')));
  if (lines.length === 0) return;
  await run(netns, 'ip', [familyFlag(family), '-force', '-batch', '-'], { input: `${[...new Set(lines)].join('\n')}\n`, packageHint: 'iproute2' });
}
