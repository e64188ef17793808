/**
 * nf_tables over raw netlink, for the few questions that need no library: which tables a netns holds and
 * its generation id. Synchronous through libc on a NETLINK_NETFILTER socket opened by the caller in the
 * netns it asks about (a netlink socket belongs to the netns it was created in), so it fits `withNetns`.
 * Used by the repair check (repair/nf-facts.ts) and by the nftables backend, which asks whether a sandbox
 * holds any table of ours before it picks its script.
 */
import { AF_NETLINK, errno, loadLibc, NETLINK_NETFILTER, SOCK_CLOEXEC, SOCK_RAW, type Libc } from './native';

const MSG_DONTWAIT = 0x40;
const NLM_F_REQUEST = 0x1;
export const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NFNL_SUBSYS_NFTABLES = 10;
export const NFT_MSG_NEWTABLE = 0;
export const NFT_MSG_GETTABLE = 1;
export const NFT_MSG_NEWGEN = 15;
export const NFT_MSG_GETGEN = 16;
export const NFTA_TABLE_NAME = 1;
export const NFTA_GEN_ID = 1;
export const NLMSG_HDRLEN = 16;
const NFGENMSG_LEN = 4;

const align4 = (n: number) => (n + 3) & ~3;

export function request(type: number, flags: number, seq: number): Buffer {
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
export function attributes(msg: Buffer): Map<number, Buffer> {
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
export function exchange(c: Libc, fd: number, req: Buffer, dump: boolean): Buffer[] {
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

/** The nf_tables tables of `fd`'s netns, as `family:name` (family as its NFPROTO number). */
export function tablesOf(c: Libc, fd: number, seq: number): Set<string> {
  const tables = new Set<string>();
  for (const m of exchange(c, fd, request(NFT_MSG_GETTABLE, NLM_F_DUMP, seq), true)) {
    if ((m.readUInt16LE(4) & 0xff) !== NFT_MSG_NEWTABLE) continue;
    const name = attributes(m).get(NFTA_TABLE_NAME);
    if (name) tables.add(`${m.readUInt8(NLMSG_HDRLEN)}:${name.toString('utf8').replace(/\0+$/, '')}`);
  }
  return tables;
}

/** The nf_tables tables of the netns this thread is in now (see `tablesOf`); throws when netlink refuses. */
export function tablesHere(): Set<string> {
  const c = loadLibc();
  const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) throw new Error(`netlink socket failed (errno ${errno()})`);
  try {
    return tablesOf(c, fd, 1);
  } finally {
    c.close(fd);
  }
}
