/**
 * What ADD saw, per attachment: the netns path and the pod, one small JSON file per attachment under the
 * state directory (/var/run/mesh-cni/attachments by default). The reconciler reads it to reach a pod's
 * netns without asking the runtime; DEL and GC remove entries. One file per attachment, written to a temp
 * name and renamed, so the agent and standalone plugin processes never corrupt each other's writes.
 *
 * The state is a shortcut, never a condition: if it cannot be written (read-only or full disk), ADD still
 * succeeds with the rules in place and the failure is noted in the log; the reconciler falls back to the
 * runtime or /proc.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_STATE_DIR } from '../paths';
import type { CniAttachment } from './types';


export interface AttachmentRecord {
  containerId: string;
  ifName: string;
  netns: string;
  pod?: { namespace: string; name: string; uid?: string };
  backend: string;
  rules: number;
  programmedAt: string;
}

const SAFE = /^[A-Za-z0-9_.-]+$/;

export class AttachmentStore {
  readonly dir: string;

  constructor(stateDir: string = DEFAULT_STATE_DIR) {
    this.dir = path.join(stateDir, 'attachments');
  }

  private file(containerId: string, ifName: string): string {
    if (!SAFE.test(containerId) || !SAFE.test(ifName)) throw new Error(`unsafe attachment id ${containerId}/${ifName}`);
    return path.join(this.dir, `${containerId}_${ifName}.json`);
  }

  /** Records an attachment; returns a note instead of throwing when the state cannot be written. */
  record(rec: AttachmentRecord): string | undefined {
    const target = this.file(rec.containerId, rec.ifName);
    const temp = `${target}.${process.pid}.tmp`;
    try {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      fs.writeFileSync(temp, `${JSON.stringify(rec)}\n`, { mode: 0o600 });
      fs.renameSync(temp, target);
      return undefined;
    } catch (err) {
      try {
        fs.rmSync(temp, { force: true });
      } catch {
        // the directory itself is unusable; nothing was written
      }
      return `attachment state not recorded (${(err as Error).message}); the reconciler will find the netns another way`;
    }
  }

  forget(containerId: string, ifName: string): void {
    try {
      fs.rmSync(this.file(containerId, ifName), { force: true });
    } catch {
      // best effort, like DEL itself
    }
  }

  list(): AttachmentRecord[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return [];
    }
    const out: AttachmentRecord[] = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      try {
        out.push(JSON.parse(fs.readFileSync(path.join(this.dir, name), 'utf8')) as AttachmentRecord);
      } catch {
        // a torn or foreign file: skip it, GC or the next ADD replaces it
      }
    }
    return out;
  }

  /** Drops every attachment not in `valid` (CNI GC); returns how many were dropped. */
  gc(valid: readonly CniAttachment[]): number {
    const keep = new Set(valid.map((a) => `${a.containerID}_${a.ifname}.json`));
    let dropped = 0;
    for (const rec of this.list()) {
      const name = `${rec.containerId}_${rec.ifName}.json`;
      if (!keep.has(name)) {
        this.forget(rec.containerId, rec.ifName);
        dropped++;
      }
    }
    return dropped;
  }
}
