/**
 * Finding a pod's network namespace without kubelet's help. First what ADD recorded (the attachment store:
 * netns path by pod uid, written by the plugin); then a /proc scan for a process in the pod's cgroup
 * (kubelet puts every pod under a cgroup named after its uid, `pod<uid>` or `pod<uid_with_underscores>`
 * with the systemd driver), whose /proc/PID/ns/net is the pod's netns.
 */
import * as fs from 'node:fs';
import type { V1Pod } from '@kubernetes/client-node';
import type { AttachmentRecord, AttachmentStore } from '../state/attachments';

export type NetnsLocator = (pod: V1Pod) => Promise<string | undefined>;

export function pathExists(path: string): boolean {
  try {
    fs.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Reads the records again only when the directory changed (every record and forget renames or removes a
 * file in it): a pass over 500 pods otherwise reads 500 files for each of them.
 */
function cachedList(store: AttachmentStore): () => ReturnType<AttachmentStore['list']> {
  let seen: { mtimeMs: number; records: ReturnType<AttachmentStore['list']> } | undefined;
  return () => {
    let mtimeMs: number;
    try {
      mtimeMs = fs.statSync(store.dir).mtimeMs;
    } catch {
      return [];
    }
    if (!seen || seen.mtimeMs !== mtimeMs) seen = { mtimeMs, records: store.list() };
    return seen.records;
  };
}

/** The records of one pod (by uid, or by name before the uid is known), newest sandbox first: that one is live. */
export function recordsForPod(records: readonly AttachmentRecord[], pod: V1Pod): AttachmentRecord[] {
  const { uid, name, namespace } = pod.metadata ?? {};
  return records
    .filter((r) => (uid && r.pod?.uid ? r.pod.uid === uid : r.pod?.name === name && r.pod?.namespace === namespace))
    .sort((a, b) => b.programmedAt.localeCompare(a.programmedAt));
}

export function fromAttachments(store: AttachmentStore): NetnsLocator {
  const list = cachedList(store);
  return async (pod) => recordsForPod(list(), pod).map((r) => r.netns).find(pathExists);
}

export function fromProcCgroups(procRoot = '/proc'): NetnsLocator {
  return async (pod) => {
    const uid = pod.metadata?.uid;
    if (!uid) return undefined;
    const needles = [`pod${uid}`, `pod${uid.replace(/-/g, '_')}`];
    let pids: string[];
    try {
      pids = fs.readdirSync(procRoot).filter((d) => /^\d+$/.test(d));
    } catch {
      return undefined;
    }
    for (const pid of pids) {
      let cgroup: string;
      try {
        cgroup = fs.readFileSync(`${procRoot}/${pid}/cgroup`, 'utf8');
      } catch {
        continue;
      }
      if (needles.some((n) => cgroup.includes(n))) return `${procRoot}/${pid}/ns/net`;
    }
    return undefined;
  };
}

/** How a netns was found: what ADD recorded, the runtime over CRI, or a process in the pod's cgroup. */
export type NetnsSource = 'attachment' | 'cri' | 'proc';

export interface NetnsChain {
  locate(pod: V1Pod): Promise<{ netns: string; source: NetnsSource } | undefined>;
  close(): void;
}

/** Tries each locator in turn; the first that finds the netns names the source. */
export function firstOf(locators: ReadonlyArray<[NetnsSource, NetnsLocator]>, close: () => void = () => undefined): NetnsChain {
  return {
    async locate(pod) {
      for (const [source, locate] of locators) {
        const netns = await locate(pod);
        if (netns) return { netns, source };
      }
      return undefined;
    },
    close,
  };
}
