/**
 * Plain JSON values as the node hands them to us (netconf, prevResult, conflists, kubeconfigs, nft's JSON): one
 * test of "a JSON object" for every reader, on the ground floor so every room may use it.
 */

/** A JSON object: not null, not an array. */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
