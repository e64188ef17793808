/**
 * Finding a pod's network namespace without kubelet's help. First what ADD recorded (the attachment store:
 * netns path by pod uid, written by the plugin); then a /proc scan for a process in the pod's cgroup
 * (kubelet puts every pod under a cgroup named after its uid, `pod<uid>` or `pod<uid_with_underscores>`
 * with the systemd driver), whose /proc/PID/ns/net is the pod's netns.
 */
import * as fs from 'node:fs';
import type { V1Pod } from '@kubernetes/client-node';
import type { AttachmentStore } from '../cni/attachments';

export type NetnsLocator = (pod: V1Pod) => Promise<string | undefined>;

function exists(path: string): boolean {
  try {
    fs.statSync(path);
    return true;
  } catch {
    return false;
  }
}

export function fromAttachments(store: AttachmentStore): NetnsLocator {
  return async (pod) => {
    const uid = pod.metadata?.uid;
    const { name, namespace } = pod.metadata ?? {};
    const records = store.list().filter((r) => (uid && r.pod?.uid ? r.pod.uid === uid : r.pod?.name === name && r.pod?.namespace === namespace));
    // The newest sandbox of the pod is the live one.
    records.sort((a, b) => b.programmedAt.localeCompare(a.programmedAt));
    return records.map((r) => r.netns).find(exists);
  };
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

/** Tries each locator in turn. */
export function firstOf(...locators: NetnsLocator[]): NetnsLocator {
  return async (pod) => {
    for (const locate of locators) {
      const found = await locate(pod);
      if (found) return found;
    }
    return undefined;
  };
}
