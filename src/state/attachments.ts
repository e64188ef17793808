/**
 * What ADD saw, per attachment: the netns path and the pod, one small JSON file per attachment under the
 * state directory (/var/run/mesh-cni/attachments by default). The reconciler reads it to reach a pod's
 * netns without asking the runtime; DEL and GC remove entries. One file per attachment, written to a temp
 * name and renamed, so the agent and standalone plugin processes never corrupt each other's writes.
 *
 * The state is a shortcut, never a condition: if it cannot be written (read-only or full disk), ADD still
 * succeeds with the rules in place and the failure is noted in the log; the reconciler falls back to the
 * runtime or /proc.
 *
 * The agent writes the record after answering (`recordLater`), as it writes its log line: the ADD's answer
 * does not wait on the disk. Writes to one attachment's file are kept in order, and DEL and GC wait for the
 * writes in flight (`settled`) before they remove, so a late write never brings back what a DEL took away.
 */
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_STATE_DIR, STATE_FILES } from '../defaults';


export interface AttachmentRecord {
  containerId: string;
  ifName: string;
  netns: string;
  pod?: { namespace: string; name: string; uid?: string };
  backend: string;
  rules: number;
  programmedAt: string;
  /** `ambient` for a pod handed to ztunnel (its rules are Istio's in-pod ones); absent for a sidecar pod */
  dataplane?: 'ambient';
}

/** Characters a file name part keeps as they are; everything else (the separator `_` included) is %XX. */
const KEPT = /[A-Za-z0-9.-]/;
const ALL_KEPT = /^[A-Za-z0-9.-]*$/;

/**
 * One part of a record's file name: UTF-8 bytes outside [A-Za-z0-9.-] written as %XX. `_` is escaped, so
 * the one `_` between container id and interface is unambiguous and the naming is injective: (`a_b`,`c`)
 * and (`a`,`b_c`) no longer share a file. Any CNI_IFNAME the kernel accepts (`eth0@x`, `eth+`, `ethé`)
 * has a name, so recording never fails on it.
 */
function encodePart(part: string): string {
  // Nearly every container id and interface name is all kept characters: one test instead of one per character.
  if (ALL_KEPT.test(part)) return part;
  let out = '';
  for (const ch of part) {
    if (KEPT.test(ch)) out += ch;
    else for (const byte of Buffer.from(ch, 'utf8')) out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The name records were written under before the injective naming; still read, forgotten and collected. */
const LEGACY_SAFE = /^[A-Za-z0-9_.-]+$/;
function legacyName(containerId: string, ifName: string): string | undefined {
  return LEGACY_SAFE.test(containerId) && LEGACY_SAFE.test(ifName) ? `${containerId}_${ifName}.json` : undefined;
}

/** Directories this process made or found; an ADD's record then costs a write and a rename, no mkdir. */
const knownDirs = new Set<string>();

const TMPFS_MAGIC = 0x01021994;
/** Whether a state dir is on tmpfs, asked once per dir (of its nearest existing ancestor while it is missing). */
const onTmpfs = new Map<string, boolean>();
function inMemory(dir: string): boolean {
  let known = onTmpfs.get(dir);
  if (known === undefined) {
    known = false;
    for (let d = dir; ; d = path.dirname(d)) {
      try {
        known = fs.statfsSync(d).type === TMPFS_MAGIC;
        break;
      } catch {
        if (path.dirname(d) === d) break;
      }
    }
    onTmpfs.set(dir, known);
  }
  return known;
}

/** Background writes by target file, each after the one before it for the same file. */
const inFlight = new Map<string, Promise<void>>();

/**
 * fsp.writeFile(file, text, { mode: 0o600 }) with fs's callbacks: the same open (O_WRONLY|O_CREAT|O_TRUNC),
 * writes and close, but a third less work on this thread to start (no FileHandle, no promise per step).
 */
function writeNewFile(file: string, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.open(file, 'w', 0o600, (openErr, fd) => {
      if (openErr) return reject(openErr);
      const data = Buffer.from(text, 'utf8');
      const done = (cause: Error | null) => fs.close(fd, (closeErr) => (cause ?? closeErr ? reject(cause ?? closeErr) : resolve()));
      const writeFrom = (offset: number): void =>
        fs.write(fd, data, offset, data.length - offset, null, (writeErr, written) => {
          if (writeErr) return done(writeErr);
          if (written <= 0) return done(new Error(`nothing written to ${file}`));
          if (offset + written < data.length) return writeFrom(offset + written);
          done(null);
        });
      writeFrom(0);
    });
  });
}

/** writeFileSync(file, text, { mode: 0o600 }) as its three calls, without its option handling (a fifth of its cost cold). */
function writeNewFileSync(file: string, text: string): void {
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  try {
    const data = Buffer.from(text, 'utf8');
    for (let off = 0; off < data.length; ) {
      const written = fs.writeSync(fd, data, off, data.length - off);
      if (written <= 0) throw new Error(`nothing written to ${file}`);
      off += written;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Resolves after the current turn of the event loop (once an answer being sent has been sent). */
function afterThisTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Resolves when every background write of this process has finished, or after `timeoutMs`. */
export async function flushAttachmentWrites(timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(inFlight.values()), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
  clearTimeout(timer);
}

export class AttachmentStore {
  readonly dir: string;

  constructor(stateDir: string = DEFAULT_STATE_DIR) {
    this.dir = path.join(stateDir, STATE_FILES.attachments);
  }

  private name(containerId: string, ifName: string): string {
    return `${encodePart(containerId)}_${encodePart(ifName)}.json`;
  }

  /** Records an attachment; returns a note instead of throwing when the state cannot be written. */
  record(rec: AttachmentRecord): string | undefined {
    let temp: string | undefined;
    try {
      const target = path.join(this.dir, this.name(rec.containerId, rec.ifName));
      temp = `${target}.${process.pid}.tmp`;
      const text = `${JSON.stringify(rec)}\n`;
      try {
        if (!knownDirs.has(this.dir)) throw Object.assign(new Error('not known yet'), { code: 'ENOENT' });
        writeNewFileSync(temp, text);
      } catch (err) {
        // Made on first use, and again whenever someone removed it since.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
        knownDirs.add(this.dir);
        writeNewFileSync(temp, text);
      }
      fs.renameSync(temp, target);
      this.dropLegacy(rec.containerId, rec.ifName);
      return undefined;
    } catch (err) {
      try {
        if (temp) fs.rmSync(temp, { force: true });
      } catch {
        // the directory itself is unusable; nothing was written
      }
      return `attachment state not recorded (${(err as Error).message}); the reconciler will find the netns another way`;
    }
  }

  /**
   * `record` after the caller has moved on: the write starts once the current turn of the event loop is over
   * (the agent has sent its answer by then) and goes to libuv's threads; `onFailure` gets the same note
   * `record` would have returned; `programmedAtMs` (Date.now() when the rules were in place) is written as
   * `programmedAt`. `onStarted` is told the CPU time starting the write took (the record's text
   * and handing the file to libuv), so the agent can count that work in the ADD's record phase. Started from
   * a promise continuation instead, the start ran before the agent answered.
   */
  recordLater(rec: Omit<AttachmentRecord, 'programmedAt'>, programmedAtMs: number, onFailure: (note: string) => void, onStarted?: (seconds: number) => void): void {
    const target = path.join(this.dir, this.name(rec.containerId, rec.ifName));
    const write = async () => {
      if (inMemory(this.dir)) {
        // tmpfs (a node's /var/run): nothing can block, so the three calls run here, cheaper than four trips
        // through libuv's threads and their wake-ups; the answer has gone out already.
        const note = this.record({ ...rec, programmedAt: new Date(programmedAtMs).toISOString() });
        if (note) onFailure(note);
        return;
      }
      const temp = `${target}.${process.pid}.tmp`;
      // The time is taken by the caller and only written out here, after the answer.
      const record: AttachmentRecord = { ...rec, programmedAt: new Date(programmedAtMs).toISOString() };
      const text = `${JSON.stringify(record)}\n`;
      try {
        if (!knownDirs.has(this.dir)) {
          await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
          knownDirs.add(this.dir);
        }
        await writeNewFile(temp, text).catch(async (err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
          await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
          await writeNewFile(temp, text);
        });
        await fsp.rename(temp, target);
        this.dropLegacy(rec.containerId, rec.ifName);
      } catch (err) {
        await fsp.rm(temp, { force: true }).catch(() => undefined);
        onFailure(`attachment state not recorded (${(err as Error).message}); the reconciler will find the netns another way`);
      }
    };
    const start = () => {
      const started = onStarted && process.cpuUsage();
      // An async function runs up to its first await when called: the work done here on the record's behalf.
      const written = write();
      if (started) {
        const used = process.cpuUsage(started);
        onStarted!((used.user + used.system) / 1e6);
      }
      return written;
    };
    const before = inFlight.get(target);
    const mine = (before ? before.then(afterThisTurn) : afterThisTurn()).then(start);
    inFlight.set(target, mine);
    void mine.then(() => {
      if (inFlight.get(target) === mine) inFlight.delete(target);
    });
  }

  /** Resolves once the background writes of this attachment (or, without one named, of every attachment here) are done. */
  async settled(containerId?: string, ifName?: string): Promise<void> {
    if (containerId !== undefined && ifName !== undefined) {
      await inFlight.get(path.join(this.dir, this.name(containerId, ifName)));
      return;
    }
    await Promise.all([...inFlight].filter(([file]) => path.dirname(file) === this.dir).map(([, p]) => p));
  }

  /**
   * Removes the record an older version wrote for this attachment, but only when it really is this one's:
   * the old names collided, so the file may hold the other attachment of the pair.
   */
  private dropLegacy(containerId: string, ifName: string): void {
    const legacy = legacyName(containerId, ifName);
    if (!legacy || legacy === this.name(containerId, ifName)) return;
    const file = path.join(this.dir, legacy);
    try {
      const rec = JSON.parse(fs.readFileSync(file, 'utf8')) as AttachmentRecord;
      if (rec.containerId === containerId && rec.ifName === ifName) fs.rmSync(file, { force: true });
    } catch {
      // absent or unreadable: nothing of this attachment's to drop
    }
  }

  forget(containerId: string, ifName: string): void {
    try {
      fs.rmSync(path.join(this.dir, this.name(containerId, ifName)), { force: true });
      this.dropLegacy(containerId, ifName);
    } catch {
      // best effort, like DEL itself
    }
  }

  private entries(): Array<{ file: string; rec: AttachmentRecord }> {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return [];
    }
    const out: Array<{ file: string; rec: AttachmentRecord }> = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      try {
        out.push({ file: path.join(this.dir, name), rec: JSON.parse(fs.readFileSync(path.join(this.dir, name), 'utf8')) as AttachmentRecord });
      } catch {
        // a torn or foreign file: skip it, GC or the next ADD replaces it
      }
    }
    return out;
  }

  list(): AttachmentRecord[] {
    return this.entries().map((e) => e.rec);
  }

  /** Drops every attachment not in `valid` (CNI GC); returns how many were dropped. */
  gc(valid: ReadonlyArray<{ containerID: string; ifname: string }>): number {
    const keep = new Set(valid.map((a) => JSON.stringify([a.containerID, a.ifname])));
    let dropped = 0;
    for (const { file, rec } of this.entries()) {
      if (!keep.has(JSON.stringify([rec.containerId, rec.ifName]))) {
        try {
          fs.rmSync(file, { force: true });
        } catch {
          // best effort
        }
        dropped++;
      }
    }
    return dropped;
  }
}
