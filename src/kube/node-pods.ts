/**
 * One bounded API call, and the one lister of a node's pods: the CLI (status, pods, completion) and
 * `mesh-cni repair` list the same way, within the same timeout. The agent lists through its watch cache.
 */
import type { CoreV1Api, V1Pod } from '@kubernetes/client-node';
import { ApiUnavailableError } from '../errors';

/** How long one API call may take before the command reports the API as unavailable. */
export const API_TIMEOUT_MS = 10_000;

function httpCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'number' ? code : undefined;
}

/** An API call bounded in time, with failures turned into ApiUnavailableError (the message says which call). */
export async function apiCall<T>(what: string, call: () => Promise<T>, timeoutMs = API_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    return await Promise.race([call(), late]);
  } catch (err) {
    const status = httpCode(err);
    const why = status ? `the API server answered ${status}` : (err as Error).message.split('\n')[0];
    const wrapped = new ApiUnavailableError(`${what}: ${why}`, err);
    (wrapped as { status?: number }).status = status;
    throw wrapped;
  } finally {
    clearTimeout(timer);
  }
}

export interface ListOptions {
  /** only this namespace */
  namespace?: string;
  timeoutMs?: number;
}

/** The pods of node `nodeName` (of every node when undefined), sorted by NAMESPACE/POD. */
export async function listNodePods(core: CoreV1Api, nodeName: string | undefined, o: ListOptions = {}): Promise<V1Pod[]> {
  const fieldSelector = nodeName === undefined ? undefined : `spec.nodeName=${nodeName}`;
  const { namespace } = o;
  const list = await apiCall(
    nodeName === undefined ? 'listing pods' : `listing the pods of node ${nodeName}`,
    () => (namespace ? core.listNamespacedPod({ namespace, fieldSelector }) : core.listPodForAllNamespaces({ fieldSelector })),
    o.timeoutMs,
  );
  return [...list.items].sort((a, b) => `${a.metadata?.namespace}/${a.metadata?.name}`.localeCompare(`${b.metadata?.namespace}/${b.metadata?.name}`));
}
