/**
 * iptables-nft without a process on the ADD path: the node's own `iptables-restore` programs a plan's rules
 * once into an empty scratch netns, the kernel objects it made there (tables, chains, rules, read back over
 * netlink) become one nf_tables batch, and each fresh sandbox after that gets that batch in one transaction.
 *
 * Why it is the same as running the restore:
 * - iptables-nft is a front end of nf_tables: `iptables-restore` of a text into an empty netns produces
 *   exactly these objects and nothing else, so the batch carries exactly what the restore would send, read
 *   from the kernel rather than guessed (compat match/target blobs, rule comments in userdata, table
 *   userdata, chain hooks and policies); `iptables-save` and the reconciler read the result like any other.
 *   The one exception is a rule's compat protocol, which the kernel takes but never dumps: it is rebuilt
 *   from the rule's own protocol match, as iptables-nft derives it (`compatOf`).
 * - A template is used only once proven: replayed into a second scratch netns, the kernel must then hold the
 *   same objects as after the restore (the netlink dumps compared, handles aside) and `iptables-save` must
 *   print the same text. Anything it cannot copy faithfully (sets, stateful objects, flowtables, table
 *   ownership, an attribute it does not know) makes the plan's text restore-only.
 * - The batch only creates: every table and chain with NLM_F_EXCL. So it succeeds only into a netns that
 *   holds none of the template's tables (a fresh sandbox), and a netns with anything there (our rules from an
 *   earlier ADD, another tool's nat table) is left to the restore path, exactly as before. One nf_tables
 *   transaction: it commits whole or not at all, so a failed replay leaves nothing and the restore runs next.
 * - Legacy iptables makes no nf_tables objects: its scratch dump is empty, and no template is made.
 *
 * Templates are made in the background after a restore ADD (the agent turns that on; a one-shot standalone
 * engine never pays for one), keyed by the program and the exact text, and bounded.
 */
import { errno, loadLibc } from '../../netns/native';
import { openScratchNetns, run, withNetns } from '../../netns';
import {
  ackErrno,
  attribute,
  attributeList,
  nestedAttributes,
  u32be,
  type Attribute,
  attributes,
  attrString,
  drain,
  dumpRequest,
  exchange,
  nfMessage,
  NFNL_MSG_BATCH_BEGIN,
  NFNL_MSG_BATCH_END,
  NFNL_SUBSYS_NFTABLES,
  NFPROTO,
  NFT_MSG,
  nftType,
  NLM_F_ACK,
  NLM_F_APPEND,
  NLM_F_CREATE,
  NLM_F_EXCL,
  NLM_F_REQUEST,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  openNetfilterSocket,
} from '../../netns/nfnetlink';
import type { Family } from '../constants';
import { RecentMap } from '../../caches';
import { UncopyableError } from '../../errors';

/**
 * The attributes a creating message may carry, per object (linux/netfilter/nf_tables.h); the others in a dump
 * are the kernel's own (handles, use counts, padding, positions) and are dropped. A type in neither list
 * makes the dump uncopyable.
 */
const COPY = {
  // NFTA_TABLE_NAME, _FLAGS, _USERDATA
  [NFT_MSG.NEWTABLE]: { keep: new Set([1, 2, 6]), drop: new Set([3, 4, 5]) },
  // NFTA_CHAIN_TABLE, _NAME, _HOOK, _POLICY, _TYPE, _COUNTERS, _FLAGS, _USERDATA
  [NFT_MSG.NEWCHAIN]: { keep: new Set([1, 3, 4, 5, 7, 8, 10, 12]), drop: new Set([2, 6, 9, 11]) },
  // NFTA_RULE_TABLE, _CHAIN, _EXPRESSIONS, _COMPAT, _USERDATA
  [NFT_MSG.NEWRULE]: { keep: new Set([1, 2, 4, 5, 7]), drop: new Set([3, 6, 8, 9, 10, 11]) },
} as Record<number, { keep: Set<number>; drop: Set<number> }>;

const NFTA_TABLE_NAME = 1;
const NFTA_TABLE_FLAGS = 2;
const NFTA_RULE_EXPRESSIONS = 4;
const NFTA_RULE_COMPAT = 5;
const NFT_META_L4PROTO = 16;
const NFT_CMP_EQ = 0;
const NFT_CMP_NEQ = 1;
const NFT_RULE_COMPAT_F_INV = 1 << 1;

/**
 * NFTA_RULE_COMPAT, which the kernel takes but never dumps: the rule's `-p` protocol for the checks of its
 * x_tables matches and targets (TPROXY, for one, wants tcp or udp). iptables-nft sends it with every rule:
 * the protocol its `-p` became (`meta l4proto` compared by `cmp`), inverted for `! -p`, and 0 without `-p`.
 */
function compatOf(rule: Buffer): Buffer {
  let proto = 0;
  let flags = 0;
  const exprs = attributeList(rule).find((a) => a.type === NFTA_RULE_EXPRESSIONS);
  const list = exprs ? nestedAttributes(exprs.value).map((elem) => {
    const parts = nestedAttributes(elem.value);
    return { name: attrString(parts.find((p) => p.type === 1)?.value), data: nestedAttributes(parts.find((p) => p.type === 2)?.value ?? Buffer.alloc(0)) };
  }) : [];
  const u32 = (attrs: Attribute[], type: number) => {
    const v = attrs.find((a) => a.type === type)?.value;
    return v && v.length >= 4 ? v.readUInt32BE(0) : undefined;
  };
  for (let i = 0; i + 1 < list.length; i++) {
    const meta = list[i]!;
    const cmp = list[i + 1]!;
    if (meta.name !== 'meta' || u32(meta.data, 2 /* NFTA_META_KEY */) !== NFT_META_L4PROTO || cmp.name !== 'cmp') continue;
    const op = u32(cmp.data, 2 /* NFTA_CMP_OP */);
    const value = nestedAttributes(cmp.data.find((a) => a.type === 3 /* NFTA_CMP_DATA */)?.value ?? Buffer.alloc(0)).find((a) => a.type === 1 /* NFTA_DATA_VALUE */)?.value;
    if ((op !== NFT_CMP_EQ && op !== NFT_CMP_NEQ) || !value || value.length !== 1) throw new UncopyableError('a protocol match iptables-nft does not write');
    proto = value.readUInt8(0);
    flags = op === NFT_CMP_NEQ ? NFT_RULE_COMPAT_F_INV : 0;
    break;
  }
  return attribute(NFTA_RULE_COMPAT, Buffer.concat([attribute(1 /* NFTA_RULE_COMPAT_PROTO */, u32be(proto)), attribute(2 /* NFTA_RULE_COMPAT_FLAGS */, u32be(flags))]), true);
}

/** A dumped object as a creating message's payload: the kept attributes, in the kernel's order. */
function creatingPayload(msg: Buffer): Buffer {
  const type = nftType(msg);
  const rule = COPY[type];
  if (!rule) throw new UncopyableError(`nf_tables message type ${type}`);
  const parts: Buffer[] = [];
  let compat = false;
  for (const a of attributeList(msg)) {
    if (!rule.keep.has(a.type)) {
      if (!rule.drop.has(a.type)) throw new UncopyableError(`attribute ${a.type} of nf_tables message type ${type}`);
      continue;
    }
    parts.push(a.raw);
    if (type === NFT_MSG.NEWRULE && a.type === NFTA_RULE_COMPAT) compat = true;
    // Dormant or owned tables are not what a restore makes; nothing to copy faithfully.
    if (type === NFT_MSG.NEWTABLE && a.type === NFTA_TABLE_FLAGS && a.value.length >= 4 && a.value.readUInt32BE(0) !== 0) {
      throw new UncopyableError(`table flags ${a.value.readUInt32BE(0)}`);
    }
  }
  // A kernel that dumps the compat attribute has had it copied above.
  if (type === NFT_MSG.NEWRULE && !compat) parts.push(compatOf(msg));
  return Buffer.concat(parts);
}

/** One family's tables, chains and rules as the kernel holds them in the current netns, in creation order. */
interface Dumped {
  tables: Buffer[];
  chains: Buffer[];
  rules: Buffer[];
}

function dumpFamily(nfproto: number): Dumped {
  const c = loadLibc();
  const fd = openNetfilterSocket(c);
  try {
    const of = (type: number, seq: number) => exchange(c, fd, dumpRequest(type, seq, nfproto), true).filter((m) => m.readUInt8(NLMSG_HDRLEN) === nfproto);
    for (const [type, what] of [
      [NFT_MSG.GETSET, 'sets'],
      [NFT_MSG.GETOBJ, 'stateful objects'],
      [NFT_MSG.GETFLOWTABLE, 'flowtables'],
    ] as const) {
      if (of(type, 10 + type).length > 0) throw new UncopyableError(`the restore made ${what}`);
    }
    return { tables: of(NFT_MSG.GETTABLE, 1), chains: of(NFT_MSG.GETCHAIN, 2), rules: of(NFT_MSG.GETRULE, 3) };
  } finally {
    c.close(fd);
  }
}

/** What a dump says, without what the kernel assigns: the template's payloads, comparable byte for byte. */
function canonical(d: Dumped): string[] {
  return [...d.tables, ...d.chains, ...d.rules].map((m) => `${nftType(m)}:${creatingPayload(m).toString('hex')}`);
}

export interface ReplayTemplate {
  nfproto: number;
  /** Its tables' names, for messages. */
  tables: string[];
  /** BATCH_BEGIN, the creating messages (sequence 1..n, each asking for an ack), BATCH_END. */
  batch: Buffer;
  messages: number;
}

function buildTemplate(nfproto: number, d: Dumped): ReplayTemplate {
  const msgs: Buffer[] = [];
  let seq = 0;
  const create = (m: Buffer, flags: number) => msgs.push(nfMessage(nftType(m), NLM_F_REQUEST | NLM_F_ACK | flags, ++seq, nfproto, creatingPayload(m)));
  for (const t of d.tables) create(t, NLM_F_CREATE | NLM_F_EXCL);
  for (const ch of d.chains) create(ch, NLM_F_CREATE | NLM_F_EXCL);
  // A dump lists each chain's rules in order; appending them in that order rebuilds every chain.
  for (const r of d.rules) create(r, NLM_F_CREATE | NLM_F_APPEND);
  const begin = nfMessage(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFPROTO.unspec, Buffer.alloc(0), 0, NFNL_SUBSYS_NFTABLES);
  const end = nfMessage(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, NFPROTO.unspec, Buffer.alloc(0), 0, NFNL_SUBSYS_NFTABLES);
  const tables = d.tables.map((t) => attrString(attributes(t).get(NFTA_TABLE_NAME)) ?? '?');
  return { nfproto, tables, batch: Buffer.concat([begin, ...msgs, end]), messages: seq };
}

export type ReplayResult = { ok: true } | { ok: false; errno: number };

/**
 * Sends the template's batch in the current netns and reads every answer. Success only when each creating
 * message was acknowledged without error and nothing else (a commit failure is reported against the batch's
 * first message) came back.
 */
function sendTemplate(t: ReplayTemplate): ReplayResult {
  const c = loadLibc();
  const fd = openNetfilterSocket(c);
  try {
    if (c.send(fd, t.batch, t.batch.length, 0) !== t.batch.length) return { ok: false, errno: errno() };
    const acked = new Set<number>();
    for (const m of drain(c, fd)) {
      if (m.readUInt16LE(4) !== NLMSG_ERROR) return { ok: false, errno: -1 };
      const code = ackErrno(m);
      if (code !== 0) return { ok: false, errno: code };
      acked.add(m.readUInt32LE(8));
    }
    for (let seq = 1; seq <= t.messages; seq++) if (!acked.has(seq)) return { ok: false, errno: -1 };
    return { ok: true };
  } finally {
    c.close(fd);
  }
}

/** Replays a template into `netns` in one transaction (synchronous inside `withNetns`). */
export function replayTemplate(netns: string, t: ReplayTemplate): ReplayResult {
  return withNetns(netns, () => sendTemplate(t));
}

const NFPROTO_OF: Record<Family, number> = { ipv4: NFPROTO.ipv4, ipv6: NFPROTO.ipv6 };

/** `iptables-save`'s text without its timestamped comment lines. */
async function savedText(netns: string, saveProgram: string): Promise<string> {
  const r = await run(netns, saveProgram, [], { timeoutMs: 30_000, packageHint: 'iptables' });
  if (r.code !== 0) throw new UncopyableError(`${saveProgram} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .join('\n');
}

/**
 * Makes and proves the template for `text` restored by `restoreProgram` (read back with `saveProgram`). Throws
 * UncopyableError when the result cannot be replayed faithfully, any other error when something failed.
 */
export async function captureTemplate(family: Family, restoreProgram: string, saveProgram: string, text: string): Promise<ReplayTemplate> {
  const nfproto = NFPROTO_OF[family];
  const scratch = openScratchNetns();
  try {
    const r = await run(scratch.path, restoreProgram, ['--noflush'], { input: text, timeoutMs: 30_000, packageHint: 'iptables' });
    if (r.code !== 0) throw new Error(`${restoreProgram} exited ${r.code} in an empty netns: ${r.stderr.trim()}`);
    const original = withNetns(scratch.path, () => dumpFamily(nfproto));
    if (original.tables.length === 0) throw new UncopyableError(`${restoreProgram} made no nf_tables objects (legacy iptables)`);
    const template = buildTemplate(nfproto, original);
    const proof = openScratchNetns();
    try {
      const replayed = replayTemplate(proof.path, template);
      if (!replayed.ok) throw new UncopyableError(`the kernel refused the replayed batch (errno ${replayed.errno})`);
      const again = withNetns(proof.path, () => dumpFamily(nfproto));
      if (canonical(again).join('\n') !== canonical(original).join('\n')) throw new UncopyableError('the replayed objects differ from the restored ones');
      const [want, got] = await Promise.all([savedText(scratch.path, saveProgram), savedText(proof.path, saveProgram)]);
      if (want !== got) throw new UncopyableError(`${saveProgram} prints the replayed rules differently`);
    } finally {
      proof.close();
    }
    return template;
  } finally {
    scratch.close();
  }
}

/** A name for a template's tables, for messages: `ip nat`, `ip6 mangle, ip6 nat`. */
export function templateTables(t: ReplayTemplate): string {
  return t.tables.map((n) => `${t.nfproto === NFPROTO.ipv6 ? 'ip6' : 'ip'} ${n}`).join(', ');
}

/** `retryAt`: a failure that was not about the rules themselves (a program that could not start, say) is tried again. */
type Entry = { state: 'ready'; template: ReplayTemplate } | { state: 'making' } | { state: 'restore-only'; reason: string; retryAt?: number };
const RETRY_MS = 60_000;

/** Templates by program and text. A cluster runs few distinct plans; the bound is the engine's plan cache's. */
const templates = new RecentMap<string, Entry>(64);
let enabled = false;
let report: (event: { key: string; made: boolean; detail: string }) => void = () => undefined;

/** Environment override: `restore` keeps every ADD on `iptables-restore`. */
export const IPTABLES_MODE_ENV = 'MESH_CNI_IPTABLES';

/**
 * Turns template making on in this process (the agent; `MESH_CNI_IPTABLES=restore` keeps it off) and tells it
 * where to say what it made or could not make. Returns whether it is on.
 */
export function enableReplay(onEvent?: typeof report, env: NodeJS.ProcessEnv = process.env): boolean {
  enabled = env[IPTABLES_MODE_ENV] !== 'restore';
  if (onEvent) report = onEvent;
  return enabled;
}

export function replayEnabled(): boolean {
  return enabled;
}

export function replayCounts(): { ready: number; restoreOnly: number } {
  let ready = 0;
  let restoreOnly = 0;
  for (const e of templates.values()) {
    if (e.state === 'ready') ready++;
    else if (e.state === 'restore-only') restoreOnly++;
  }
  return { ready, restoreOnly };
}

const keyOf = (restoreProgram: string, text: string) => `${restoreProgram}\n${text}`;

/**
 * The fast path of a fresh sandbox's ADD: replays the ready template for this text, if any. `replayed` when
 * the rules are in; otherwise the caller runs the restore (a netns that already holds one of the tables
 * refuses the replay with EEXIST and nothing changes). A refusal for any other reason makes the text
 * restore-only from then on, and says why.
 */
export function tryReplay(netns: string, restoreProgram: string, text: string): 'replayed' | 'no-template' | 'refused' {
  if (!enabled) return 'no-template';
  const key = keyOf(restoreProgram, text);
  const entry = templates.peek(key);
  if (entry?.state !== 'ready') return 'no-template';
  const r = replayTemplate(netns, entry.template);
  if (r.ok) return 'replayed';
  if (r.errno !== EEXIST) {
    const reason = `the kernel refused a replay into ${netns} (errno ${r.errno}); this plan's rules go in by ${restoreProgram} from now on`;
    templates.set(key, { state: 'restore-only', reason });
    report({ key, made: false, detail: reason });
  }
  return 'refused';
}

const EEXIST = 17;

/**
 * After a restore ADD with no template for its text: makes one in the background, off the request's path (a
 * timer, so the answer goes out first). At most one making per text at a time.
 */
export function makeTemplateLater(family: Family, restoreProgram: string, saveProgram: string, text: string): void {
  if (!enabled) return;
  const key = keyOf(restoreProgram, text);
  const known = templates.peek(key);
  if (known && !(known.state === 'restore-only' && known.retryAt !== undefined && known.retryAt <= Date.now())) return;
  templates.set(key, { state: 'making' });
  const timer = setTimeout(() => {
    captureTemplate(family, restoreProgram, saveProgram, text).then(
      (template) => {
        templates.set(key, { state: 'ready', template });
        report({ key, made: true, detail: `${templateTables(template)}: ${template.messages} objects in one transaction` });
      },
      (err: unknown) => {
        const reason = err instanceof Error ? err.message : String(err);
        templates.set(key, { state: 'restore-only', reason, ...(err instanceof UncopyableError ? {} : { retryAt: Date.now() + RETRY_MS }) });
        report({ key, made: false, detail: reason });
      },
    );
  }, 20);
  timer.unref();
}

/** Forgets every template (tests). */
export function forgetTemplates(): void {
  templates.clear();
}
