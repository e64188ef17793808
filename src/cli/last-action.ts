/**
 * What last happened to a pod, for `pods` and `explain`: the Events mesh-cni wrote on it (newest per pod) and
 * the ADD that programmed it, whichever is newer; and "3m ago" for a person.
 */
import type { V1Pod } from '@kubernetes/client-node';
import type { AttachmentRecord } from '../state/attachments';
import { apiCall } from '../kube/node-pods';
import type { Kube } from './kube-client';

export interface LastAction {
  /** `event`: an Event mesh-cni wrote on the pod; `attachment`: the ADD that programmed it */
  source: 'event' | 'attachment';
  reason: string;
  message: string;
  at: string;
}

/** The Events mesh-cni wrote, newest per pod uid (or namespace/name when the Event carries no uid). */
export async function meshCniEvents(kube: Kube, namespace?: string): Promise<Map<string, LastAction>> {
  const fieldSelector = 'source=mesh-cni';
  const list = await apiCall('listing Events', () =>
    namespace ? kube.core.listNamespacedEvent({ namespace, fieldSelector }) : kube.core.listEventForAllNamespaces({ fieldSelector }),
  );
  const newest = new Map<string, LastAction>();
  for (const e of list.items) {
    const at = (e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp)?.toISOString?.() ?? String(e.lastTimestamp ?? '');
    const key = e.involvedObject.uid ?? `${e.involvedObject.namespace}/${e.involvedObject.name}`;
    const previous = newest.get(key);
    if (!previous || previous.at < at) newest.set(key, { source: 'event', reason: e.reason ?? '', message: e.message ?? '', at });
  }
  return newest;
}

/**
 * The Events, or none and a sentence saying why: a pods/explain row without them still stands (LAST ACTION then
 * shows what ADD recorded), but the reader must learn that it is incomplete, above all on a 403.
 */
/** The Events, or none and a warning saying why they could not be read. */
export interface EventsOrWhy {
  events: Map<string, LastAction>;
  warning?: string;
}

export async function meshCniEventsOrWhy(kube: Kube, namespace?: string): Promise<EventsOrWhy> {
  try {
    return { events: await meshCniEvents(kube, namespace) };
  } catch (err) {
    const status = (err as { status?: number }).status;
    const grant = status === 403 ? ': the service account may not list events (install/10-rbac.yaml grants it)' : '';
    return { events: new Map(), warning: `last actions are incomplete, ${(err as Error).message}${grant}` };
  }
}

/** The newest of the pod's mesh-cni Events and the ADD that programmed it. */
export function lastActionFor(pod: V1Pod, events: Map<string, LastAction>, record: AttachmentRecord | undefined): LastAction | undefined {
  const event = events.get(pod.metadata?.uid ?? '') ?? events.get(`${pod.metadata?.namespace}/${pod.metadata?.name}`);
  const add: LastAction | undefined = record
    ? { source: 'attachment', reason: 'Programmed', message: `ADD programmed ${record.rules} rules with ${record.backend}`, at: record.programmedAt }
    : undefined;
  if (!event) return add;
  if (!add) return event;
  return event.at >= add.at ? event : add;
}

/** "3m ago" for a person; JSON keeps the timestamp. */
export function ago(iso: string, now = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (!Number.isFinite(seconds)) return iso;
  if (seconds < 90) return `${seconds}s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}
