/**
 * The netns facts and settings outside the packet filter: which families a pod has, and the `ip` address,
 * rule and route settings a plan asks for (TPROXY's routing table, reroute addresses).
 */
import * as fs from 'node:fs';
import { MeshCniError } from '../errors';
import { run, withNetns } from '../netns';
import type { Family } from './constants';
import type { LinkSetup, Plan } from './plan';

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

export async function setLinks(netns: string, links: readonly LinkSetup[]): Promise<void> {
  for (const link of links) {
    if (await hasLink(netns, link)) continue;
    const r = await run(netns, 'ip', linkArgs(link, 'add'), { packageHint: 'iproute2' });
    if (r.code !== 0 && !/File exists|already assigned/.test(r.stderr)) {
      throw new MeshCniError(`ip ${linkArgs(link, 'add').join(' ')} failed: ${r.stderr.trim()}`, { hint: 'the rules were not applied' });
    }
  }
}

/** Links our plans can create, taken away on remove (missing ones are fine). */
export async function clearLinks(netns: string, family: Family, plan: Plan): Promise<void> {
  for (const link of plan[family].links) await run(netns, 'ip', linkArgs(link, 'del'), { packageHint: 'iproute2' });
}
