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
import { AF_NETLINK, errno, loadLibc, NETLINK_NETFILTER, SOCK_CLOEXEC, SOCK_RAW, SOL_SOCKET, type Libc } from '../netns/native';

/** nfgenmsg families (NFPROTO_*). */
export const NFPROTO = { inet: 1, ipv4: 2, ipv6: 10 } as const;

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

const MSG_DONTWAIT = 0x40;
const SO_NETNS_COOKIE = 71;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NFNL_SUBSYS_NFTABLES = 10;
const NFT_MSG_NEWTABLE = 0;
const NFT_MSG_GETTABLE = 1;
const NFT_MSG_NEWGEN = 15;
const NFT_MSG_GETGEN = 16;
const NFTA_TABLE_NAME = 1;
const NFTA_GEN_ID = 1;
const NLMSG_HDRLEN = 16;
const NFGENMSG_LEN = 4;

const align4 = (n: number) => (n + 3) & ~3;

function request(type: number, flags: number, seq: number): Buffer {
  const b = Buffer.alloc(NLMSG_HDRLEN + NFGENMSG_LEN);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt16LE((NFNL_SUBSYS_NFTABLES << 8) | type, 4);
  b.writeUInt16LE(NLM_F_REQUEST | flags, 6);
  b.writeUInt32LE(seq, 8);
  b.writeUInt32LE(0, 12);
  // nfgenmsg: AF_UNSPEC (every family), version 0, res_id 0
  return b;
}

/** The netlink attributes of one message's payload after the nfgenmsg header. */
function attributes(msg: Buffer): Map<number, Buffer> {
  const attrs = new Map<number, Buffer>();
  let off = NLMSG_HDRLEN + NFGENMSG_LEN;
  while (off + 4 <= msg.length) {
    const len = msg.readUInt16LE(off);
    if (len < 4) break;
    attrs.set(msg.readUInt16LE(off + 2) & 0x3fff, msg.subarray(off + 4, off + len));
    off += align4(len);
  }
  return attrs;
}

/**
 * Sends one request and collects the answers' messages until the dump ends (or, for a plain request, the
 * first answer). Throws on a netlink error.
 */
function exchange(c: Libc, fd: number, req: Buffer, dump: boolean): Buffer[] {
  if (c.send(fd, req, req.length, 0) !== req.length) throw new Error(`netlink send failed (errno ${errno()})`);
  const seq = req.readUInt32LE(8);
  const out: Buffer[] = [];
  const buf = Buffer.alloc(64 * 1024);
  for (;;) {
    // Never blocking: the kernel queues a request's answer (and each next part of a dump) before send and
    // recv return, so an empty queue means something is wrong, and the event loop must not wait on it.
    const n = Number(c.recv(fd, buf, buf.length, MSG_DONTWAIT));
    if (n <= 0) throw new Error(`netlink recv failed (errno ${errno()})`);
    let off = 0;
    while (off + NLMSG_HDRLEN <= n) {
      const len = buf.readUInt32LE(off);
      const type = buf.readUInt16LE(off + 4);
      if (len < NLMSG_HDRLEN || off + len > n) break;
      const msg = Buffer.from(buf.subarray(off, off + len));
      off += align4(len);
      if (msg.readUInt32LE(8) !== seq) continue;
      if (type === NLMSG_DONE) return out;
      if (type === NLMSG_ERROR) {
        const code = -msg.readInt32LE(NLMSG_HDRLEN);
        if (code === 0) return out;
        throw new Error(`netlink request failed (errno ${code})`);
      }
      out.push(msg);
      if (!dump) return out;
    }
  }
}

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
    const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) throw new Error(`netlink socket failed (errno ${errno()})`);
    try {
      let cookie: bigint | undefined;
      const value = Buffer.alloc(8);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(8);
      if (c.getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, value, len) === 0) cookie = value.readBigUInt64LE(0);
      const gen = exchange(c, fd, request(NFT_MSG_GETGEN, 0, 1), false).find((m) => (m.readUInt16LE(4) & 0xff) === NFT_MSG_NEWGEN);
      const genAttr = gen ? attributes(gen).get(NFTA_GEN_ID) : undefined;
      const nftTables = new Set<string>();
      for (const m of exchange(c, fd, request(NFT_MSG_GETTABLE, NLM_F_DUMP, 2), true)) {
        if ((m.readUInt16LE(4) & 0xff) !== NFT_MSG_NEWTABLE) continue;
        const name = attributes(m).get(NFTA_TABLE_NAME);
        if (name) nftTables.add(`${m.readUInt8(NLMSG_HDRLEN)}:${name.toString('utf8').replace(/\0+$/, '')}`);
      }
      return { cookie, genId: genAttr && genAttr.length >= 4 ? genAttr.readUInt32BE(0) : undefined, nftTables, legacyTables };
    } finally {
      c.close(fd);
    }
  });
}
