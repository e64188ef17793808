/**
 * The node's one netns locator chain, cheapest and surest first: what our ADD recorded; the runtime over CRI,
 * for pods whose ADD we never saw (each call has a deadline, src/repair/cri.ts); a /proc scan by pod cgroup.
 * The reconciler (agent and `mesh-cni repair`) and the CLI's `--pod`/`explain` locate a pod the same way.
 */
import type { AttachmentStore } from '../state/attachments';
import { fromCri } from './cri';
import { firstOf, fromAttachments, fromProcCgroups, type NetnsChain, type NetnsLocator, type NetnsSource } from './locate';

export interface NetnsChainOptions {
  attachments: AttachmentStore;
  /** Where the host's /proc is (the DaemonSet mounts it at /host/proc). */
  procRoot?: string;
  /** the runtime's CRI socket; empty: do not ask the runtime */
  criSocket?: string;
  /** a locator failed in a way an operator should hear about (e.g. the CRI socket cannot be reached) */
  onLocatorError?: (err: Error) => void;
}

export function nodeNetnsChain(o: NetnsChainOptions): NetnsChain {
  const cri = o.criSocket ? fromCri(o.criSocket, o.onLocatorError) : undefined;
  const locators: Array<[NetnsSource, NetnsLocator]> = [['attachment', fromAttachments(o.attachments)], ...(cri ? [['cri', cri] as [NetnsSource, NetnsLocator]] : []), ['proc', fromProcCgroups(o.procRoot)]];
  return firstOf(locators, () => cri?.close());
}
