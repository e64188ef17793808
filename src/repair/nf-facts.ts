/**
 * What the kernel can tell about a netns's packet filter without a process: which nf_tables tables exist
 * (and in which family), the nf_tables generation id, and the namespace's cookie. One NETLINK_NETFILTER
 * socket opened inside the netns (a netlink socket belongs to the netns it was created in), two requests,
 * all synchronous through libc, so it fits `withNetns`. The legacy x_tables of a netns are listed in
 * /proc/thread-self/net/ip{,6}_tables_names, read from inside it.
 *
 * Why the reconciler wants these:
 * - a family with none of the tables our rules live in cannot hold any of them, so its `iptables-save` (a
 *   process per pod and family) is not needed;
 * - the generation id goes up on every committed nf_tables transaction in that netns (iptables-nft and nft
 *   both commit through it) and never otherwise, and the cookie names the netns for the whole boot (never
 *   reused, unlike an inode): a check that found the rules right, under the same cookie and generation,
 *   still holds. Counters change without a new generation, but the comparison never looks at them.
 */
import * as fs from 'node:fs';
import { withNetns } from '../netns';
import { loadLibc, SOL_SOCKET } from '../netns/native';
import { attributes, exchange, nfMessage, NFPROTO, NFT_MSG, nftType, NLM_F_REQUEST, openNetfilterSocket, tablesOf } from '../netns/nfnetlink';

export { NFPROTO };

export interface NfFacts {
  /** SO_NETNS_COOKIE; undefined where the kernel does not have it (before 5.14). */
  cookie?: bigint;
  /** NFTA_GEN_ID of the netns's nf_tables. */
  genId?: number;
  /** nf_tables tables as `family:name` (family as NFPROTO number). */
  nftTables: Set<string>;
  /** legacy x_tables tables per family (read only when asked for). */
  legacyTables: { ipv4: Set<string>; ipv6: Set<string> };
}

const SO_NETNS_COOKIE = 71;
const NFTA_GEN_ID = 1;

function readLegacy(file: string): Set<string> {
  try {
    return new Set(fs.readFileSync(file, 'utf8').split('\n').filter(Boolean));
  } catch {
    return new Set();
  }
}

/** Reads the facts inside `netns` (synchronous inside; throws when netlink refuses). */
export function nfFacts(netns: string, o: { legacy?: boolean } = {}): NfFacts {
  const c = loadLibc();
  return withNetns(netns, () => {
    const legacyTables = o.legacy
      ? { ipv4: readLegacy('/proc/thread-self/net/ip_tables_names'), ipv6: readLegacy('/proc/thread-self/net/ip6_tables_names') }
      : { ipv4: new Set<string>(), ipv6: new Set<string>() };
    const fd = openNetfilterSocket(c);
    try {
      let cookie: bigint | undefined;
      const value = Buffer.alloc(8);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(8);
      if (c.getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, value, len) === 0) cookie = value.readBigUInt64LE(0);
      const gen = exchange(c, fd, nfMessage(NFT_MSG.GETGEN, NLM_F_REQUEST, 1, NFPROTO.unspec), false).find((m) => nftType(m) === NFT_MSG.NEWGEN);
      const genAttr = gen ? attributes(gen).get(NFTA_GEN_ID) : undefined;
      const nftTables = tablesOf(c, fd, 2);
      return { cookie, genId: genAttr && genAttr.length >= 4 ? genAttr.readUInt32BE(0) : undefined, nftTables, legacyTables };
    } finally {
      c.close(fd);
    }
  });
}
