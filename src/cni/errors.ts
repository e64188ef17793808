/**
 * The one place where failures become CNI error results. A CniError is a value with the spec's numeric code;
 * anything else that escapes a command is mapped here, and anything unknown becomes 999 — without wrapping an
 * error that already is a CniError (as containernetworking/cni's skel does).
 * Every code is documented in the README (Error codes); keep the two in step.
 */
import {
  CommandFailedError,
  InvalidConfigError,
  MeshCniError,
  NetnsBusyError,
  NetnsNotFoundError,
  NotANetnsError,
  OwnNetnsError,
  RequestAbandonedError,
  RuleMismatchError,
} from '../errors';
import type { CniErrorJson } from './types';

export const CniCode = {
  /** 1: the netconf's cniVersion is not one we speak, or too old for the command */
  IncompatibleVersion: 1,
  /** 2: a field of ours we do not know; the message names key and value */
  UnsupportedField: 2,
  /** 3: the container's netns does not exist */
  UnknownContainer: 3,
  /** 4: a CNI_* variable is missing or malformed; the message names it */
  InvalidEnvironment: 4,
  /** 5: reading stdin failed, or stdin was larger than we accept */
  IoFailure: 5,
  /** 6: stdin (or prevResult inside it) is not decodable */
  DecodingFailure: 6,
  /** 7: a decodable netconf whose values are invalid */
  InvalidNetworkConfig: 7,
  /** 11: transient; the runtime should retry (pod not yet visible, API unreachable, agent timeout) */
  TryAgainLater: 11,
  /** 50: STATUS: cannot service ADDs */
  PluginNotAvailable: 50,
  /** 51: STATUS: cannot service ADDs and existing pods may have limited connectivity */
  LimitedConnectivity: 51,
  /** 100: the redirect engine could not program the pod's netns (a program failed or is missing) */
  RedirectFailed: 100,
  /** 101: the pod's annotations cannot be turned into redirect rules */
  InvalidPodAnnotation: 101,
  /** 102: rules were applied but the kernel's copy differed; they were rolled back */
  RuleMismatch: 102,
  /** 103: CHECK found our rules missing or different from what the pod's annotations ask for */
  CheckFailed: 103,
  /** 104: the API server refused the pod lookup (401/403): credentials or RBAC are wrong */
  PodLookupRefused: 104,
  /** 105: the kubeconfig named in the netconf cannot be read or is not supported */
  KubeconfigInvalid: 105,
  /** 999: anything we did not anticipate */
  Internal: 999,
} as const;

export type CniCodeNumber = (typeof CniCode)[keyof typeof CniCode];

export class CniError extends Error {
  constructor(
    readonly cniCode: number,
    message: string,
    readonly details?: string,
    options: { cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CniError';
  }

  toJson(cniVersion: string): CniErrorJson {
    const json: CniErrorJson = { cniVersion, code: this.cniCode, msg: this.message };
    if (this.details) json.details = this.details;
    return json;
  }
}

function detailsOf(err: MeshCniError): string | undefined {
  const parts = [err.hint ? `hint: ${err.hint}` : '', err.details ?? ''].filter((p) => p.trim() !== '');
  return parts.length > 0 ? parts.join('\n') : undefined;
}

/** Maps anything thrown by a command to a CniError; a CniError is returned as is (never wrapped twice). */
export function toCniError(err: unknown): CniError {
  if (err instanceof CniError) return err;
  if (err instanceof MeshCniError) {
    const details = detailsOf(err);
    if (err instanceof InvalidConfigError) return new CniError(CniCode.InvalidPodAnnotation, err.message, details, { cause: err });
    if (err instanceof NetnsNotFoundError) return new CniError(CniCode.UnknownContainer, err.message, details, { cause: err });
    if (err instanceof NotANetnsError) {
      return new CniError(CniCode.InvalidEnvironment, `CNI_NETNS: ${err.message}`, details, { cause: err });
    }
    if (err instanceof OwnNetnsError) return new CniError(CniCode.InvalidEnvironment, `CNI_NETNS: ${err.message}`, details, { cause: err });
    if (err instanceof NetnsBusyError) return new CniError(CniCode.TryAgainLater, err.message, details, { cause: err });
    if (err instanceof RequestAbandonedError) return new CniError(CniCode.TryAgainLater, err.message, details, { cause: err });
    if (err instanceof RuleMismatchError) return new CniError(CniCode.RuleMismatch, err.message, details, { cause: err });
    if (err instanceof CommandFailedError) return new CniError(CniCode.RedirectFailed, err.message, details, { cause: err });
    return new CniError(CniCode.RedirectFailed, err.message, details, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new CniError(CniCode.Internal, message, undefined, { cause: err });
}
