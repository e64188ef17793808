/** NAMESPACE/POD as the CLI takes it: the pattern, the usage check for yargs, the parse. */
import { MeshCniError } from '../errors';

export const POD_REF = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$/;

export interface PodRef {
  namespace: string;
  name: string;
}

/** For yargs' .check(): a message (usage error, exit 2) or true. */
export function checkPodRef(value: unknown, flag: string): true | string {
  if (value === undefined) return true;
  return typeof value === 'string' && POD_REF.test(value) ? true : `${flag} must be NAMESPACE/POD (got ${JSON.stringify(value)})`;
}

export function parsePodRef(value: string): PodRef {
  const m = POD_REF.exec(value);
  if (!m) throw new MeshCniError(`not a NAMESPACE/POD: ${JSON.stringify(value)}`);
  return { namespace: m[1], name: m[3] };
}
