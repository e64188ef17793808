/**
 * A pod's netns as the CLI finds it: the node's one locator chain (src/repair/netns-chain.ts, as the
 * reconciler), keeping what ADD recorded so "gone" can name the path; and the target of `--netns`/`--pod`.
 */
import type { V1Pod } from '@kubernetes/client-node';
import { AttachmentStore, type AttachmentRecord } from '../state/attachments';
import { NetnsNotFoundError, PodNetnsUnknownError } from '../errors';
import { recordsForPod, type NetnsSource } from '../repair/locate';
import { nodeNetnsChain } from '../repair/netns-chain';
import { connectKube, getPod, requireOnNode } from './kube-client';
import { parsePodRef, type PodRef } from './pod-ref';

/** What ADD recorded for this pod, newest sandbox first. */
export function recordsFor(store: AttachmentStore, pod: V1Pod): AttachmentRecord[] {
  return recordsForPod(store.list(), pod);
}

export interface NetnsLocation {
  /** the netns path, when one exists now */
  netns?: string;
  /** how it was found: `attachment` (what ADD recorded), `cri` (the runtime) or `proc` (a process in the pod's cgroup) */
  source?: NetnsSource;
  /** the newest path ADD recorded, also when it no longer exists */
  recorded?: string;
  record?: AttachmentRecord;
}

export async function locatePodNetns(pod: V1Pod, stateDir: string, procRoot: string, criSocket = ''): Promise<NetnsLocation> {
  const attachments = new AttachmentStore(stateDir);
  const records = recordsFor(attachments, pod);
  const chain = nodeNetnsChain({ attachments, procRoot, criSocket });
  try {
    const found = await chain.locate(pod);
    const record = found?.source === 'attachment' ? records.find((r) => r.netns === found.netns) : records[0];
    return { ...found, recorded: record?.netns, record };
  } finally {
    chain.close();
  }
}

export interface Target {
  netns: string;
  /** with --pod: the pod and the API it came from */
  pod?: V1Pod;
  ref?: PodRef;
}

export interface TargetArgs {
  netns?: string;
  pod?: string;
  kubeconfig?: string;
  'node-name'?: string;
  'state-dir': string;
  'proc-root': string;
  'cri-socket': string;
}

/** --netns as given, or the netns of --pod: from the API, on this node, then located like the reconciler does. */
export async function resolveTarget(args: TargetArgs): Promise<Target> {
  if (args.netns !== undefined) return { netns: args.netns };
  const ref = parsePodRef(args.pod ?? '');
  const pod = await getPod(await connectKube(args.kubeconfig), ref);
  requireOnNode(pod, args['node-name']);
  const where = await locatePodNetns(pod, args['state-dir'], args['proc-root'], args['cri-socket']);
  if (where.netns) return { netns: where.netns, pod, ref };
  const id = `${ref.namespace}/${ref.name}`;
  if (where.recorded) throw new NetnsNotFoundError(where.recorded, undefined, `ADD recorded it for ${id}, but the sandbox is gone; kubelet starts a new one, or delete the pod`);
  throw new PodNetnsUnknownError(id, args['state-dir']);
}
