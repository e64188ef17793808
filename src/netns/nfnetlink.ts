/**
 * nf_tables over netfilter netlink, without a program: the message layout (nlmsghdr, nfgenmsg, attributes)
 * and one synchronous request/answer exchange through libc. A netlink socket belongs to the netns it was
 * opened in, so callers open it inside `withNetns`; every call here is synchronous, which `withNetns` needs.
 * Used by the reconciler's cheap check (src/repair/nf-facts.ts) and the iptables-nft replay
 * (src/redirect/iptables/replay.ts).
 */
import { AF_NETLINK, errno, NETLINK_NETFILTER, SOCK_CLOEXEC, SOCK_RAW, type Libc } from './native';
import { EAGAIN } from './ffi';

export const NLMSG_HDRLEN = 16;
export const NFGENMSG_LEN = 4;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_APPEND = 0x800;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NFNL_SUBSYS_NFTABLES = 10;
export const NFNL_MSG_BATCH_BEGIN = 0x10;
export const NFNL_MSG_BATCH_END = 0x11;
/** enum nf_tables_msg_types (linux/netfilter/nf_tables.h), the ones used here. */
export const NFT_MSG = {
  NEWTABLE: 0,
  GETTABLE: 1,
  NEWCHAIN: 3,
  GETCHAIN: 4,
  NEWRULE: 6,
  GETRULE: 7,
  GETSET: 10,
  NEWGEN: 15,
  GETGEN: 16,
  GETOBJ: 19,
  GETFLOWTABLE: 23,
} as const;
/** nfgenmsg families (NFPROTO_*). */
export const NFPROTO = { unspec: 0, inet: 1, ipv4: 2, ipv6: 10 } as const;

export const MSG_DONTWAIT = 0x40;

export const align4 = (n: number): number => (n + 3) & ~3;

/** The nf_tables message type of a message (the low byte; the high byte is the subsystem). */
export const nftType = (msg: Buffer): number => msg.readUInt16LE(4) & 0xff;

/** One message: nlmsghdr + nfgenmsg (family, version 0, res_id) + the given attribute bytes. */
export function nfMessage(type: number, flags: number, seq: number, family: number, payload: Buffer = Buffer.alloc(0), subsys = NFNL_SUBSYS_NFTABLES, resId = 0): Buffer {
  const b = Buffer.alloc(NLMSG_HDRLEN + NFGENMSG_LEN + payload.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt16LE((subsys << 8) | type, 4);
  b.writeUInt16LE(flags, 6);
  b.writeUInt32LE(seq, 8);
  b.writeUInt32LE(0, 12);
  b.writeUInt8(family, NLMSG_HDRLEN);
  b.writeUInt8(0, NLMSG_HDRLEN + 1);
  b.writeUInt16BE(resId, NLMSG_HDRLEN + 2);
  payload.copy(b, NLMSG_HDRLEN + NFGENMSG_LEN);
  return b;
}

/** A request for every object of `type` in `family` (AF_UNSPEC: every family). */
export function dumpRequest(type: number, seq: number, family: number = NFPROTO.unspec): Buffer {
  return nfMessage(type, NLM_F_REQUEST | NLM_F_DUMP, seq, family);
}

export interface Attribute {
  /** Without the NLA_F_NESTED / NLA_F_NET_BYTEORDER bits. */
  type: number;
  /** The whole attribute, header and padding included: copy it as it is into another message. */
  raw: Buffer;
  value: Buffer;
}

/** The attributes packed in `buf` (a message's payload, or a nested attribute's value), in order. */
export function nestedAttributes(buf: Buffer): Attribute[] {
  const out: Attribute[] = [];
  let off = 0;
  while (off + 4 <= buf.length) {
    const len = buf.readUInt16LE(off);
    if (len < 4 || off + len > buf.length) break;
    out.push({ type: buf.readUInt16LE(off + 2) & 0x3fff, value: buf.subarray(off + 4, off + len), raw: buf.subarray(off, Math.min(buf.length, off + align4(len))) });
    off += align4(len);
  }
  return out;
}

/** The top-level attributes of one message, after the nfgenmsg header, in order. */
export function attributeList(msg: Buffer): Attribute[] {
  return nestedAttributes(msg.subarray(NLMSG_HDRLEN + NFGENMSG_LEN, Math.min(msg.length, msg.readUInt32LE(0))));
}

/** One attribute, padded: `nested` sets NLA_F_NESTED. */
export function attribute(type: number, value: Buffer, nested = false): Buffer {
  const b = Buffer.alloc(align4(4 + value.length));
  b.writeUInt16LE(4 + value.length, 0);
  b.writeUInt16LE(type | (nested ? 0x8000 : 0), 2);
  value.copy(b, 4);
  return b;
}

export const u32be = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};

/** The same as a map by type (the first of each). */
export function attributes(msg: Buffer): Map<number, Buffer> {
  const attrs = new Map<number, Buffer>();
  for (const a of attributeList(msg)) if (!attrs.has(a.type)) attrs.set(a.type, a.value);
  return attrs;
}

/** A NUL-terminated string attribute's text. */
export const attrString = (value: Buffer | undefined): string | undefined => value?.toString('utf8').replace(/\0+$/, '');

export function openNetfilterSocket(c: Libc): number {
  const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) throw new Error(`netlink socket failed (errno ${errno()})`);
  return fd;
}

export function sendAll(c: Libc, fd: number, req: Buffer): void {
  if (c.send(fd, req, req.length, 0) !== req.length) throw new Error(`netlink send failed (errno ${errno()})`);
}

let received: Buffer | undefined;
/** One buffer for every receive (every message is copied out of it): zeroing 64 KiB per call costs more than the call. */
const receiveBuffer = (): Buffer => (received ??= Buffer.alloc(64 * 1024));

/**
 * Every message queued on the socket now, never blocking: the kernel handles a netfilter request inside the
 * sender's send() and queues all of its answers (a batch's acks, each next part of a dump) before send returns,
 * so an empty queue means there is nothing more to come, and the event loop must not wait on it.
 */
export function drain(c: Libc, fd: number): Buffer[] {
  const buf = receiveBuffer();
  const out: Buffer[] = [];
  for (;;) {
    const n = Number(c.recv(fd, buf, buf.length, MSG_DONTWAIT));
    if (n < 0) {
      const code = errno();
      if (code === EAGAIN || out.length > 0) return out;
      throw new Error(`netlink recv failed (errno ${code})`);
    }
    if (n === 0) return out;
    out.push(...messagesIn(buf, n));
  }
}

/** The whole messages in the first `n` bytes of `buf`, each copied out of it. */
function messagesIn(buf: Buffer, n: number): Buffer[] {
  const out: Buffer[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= n) {
    const len = buf.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > n) break;
    out.push(Buffer.from(buf.subarray(off, off + len)));
    off += align4(len);
  }
  return out;
}

/** The errno an NLMSG_ERROR message carries (0: an acknowledgement). */
export const ackErrno = (msg: Buffer): number => -msg.readInt32LE(NLMSG_HDRLEN);

/**
 * Sends one request and collects the answers' messages until the dump ends (or, for a plain request, the
 * first answer). Throws on a netlink error.
 */
export function exchange(c: Libc, fd: number, req: Buffer, dump: boolean): Buffer[] {
  sendAll(c, fd, req);
  const seq = req.readUInt32LE(8);
  const out: Buffer[] = [];
  const buf = receiveBuffer();
  for (;;) {
    const n = Number(c.recv(fd, buf, buf.length, MSG_DONTWAIT));
    if (n <= 0) throw new Error(`netlink recv failed (errno ${errno()})`);
    for (const msg of messagesIn(buf, n)) {
      const type = msg.readUInt16LE(4);
      if (msg.readUInt32LE(8) !== seq) continue;
      if (type === NLMSG_DONE) return out;
      if (type === NLMSG_ERROR) {
        const code = ackErrno(msg);
        if (code === 0) return out;
        throw new Error(`netlink request failed (errno ${code})`);
      }
      out.push(msg);
      if (!dump) return out;
    }
  }
}

const NFTA_TABLE_NAME = 1;

/** The nf_tables tables of `fd`'s netns, as `family:name` (family as its NFPROTO number). */
export function tablesOf(c: Libc, fd: number, seq: number): Set<string> {
  const tables = new Set<string>();
  for (const m of exchange(c, fd, dumpRequest(NFT_MSG.GETTABLE, seq), true)) {
    if (nftType(m) !== NFT_MSG.NEWTABLE) continue;
    const name = attrString(attributes(m).get(NFTA_TABLE_NAME));
    if (name) tables.add(`${m.readUInt8(NLMSG_HDRLEN)}:${name}`);
  }
  return tables;
}
