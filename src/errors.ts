/**
 * Every error the agent, the standalone engine, the installer and the CLI raise, in one module. Each class has
 * a stable `code` (a string a script can match on), the CNI spec's numeric code it answers with
 * (`cniCode`), a message that says what went wrong and, where possible, a `hint`: what the person reading it
 * can do next. `toCniError` turns anything thrown into the answer a runtime reads; test/cni/error-classes.test.ts
 * walks every class here to that answer. The numeric codes are documented in the README (Error codes).
 */

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

/** The CNI spec's error result. */
export interface CniErrorJson {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

export class MeshCniError extends Error {
  readonly code: string = 'MESH_CNI_ERROR';
  /** what a CNI request that fails with this error answers; anything of ours not named otherwise is 100 */
  readonly cniCode: number = CniCode.RedirectFailed;
  readonly hint?: string;
  readonly details?: string;

  constructor(message: string, options: { hint?: string; details?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.hint = options.hint;
    this.details = options.details;
  }

  /** The message a CNI answer carries (a class may name the variable it is about). */
  get cniMessage(): string {
    return this.message;
  }
}

/**
 * A CNI answer made directly with the spec's code: the netconf and environment checks, the lookup's
 * try-again-later, STATUS. Every other class maps to one through `toCniError`.
 */
export class CniError extends MeshCniError {
  override readonly code: string = 'CNI_ERROR';
  override readonly cniCode: number;

  constructor(cniCode: number, message: string, details?: string, options: { cause?: unknown } = {}) {
    super(message, { details, cause: options.cause });
    this.cniCode = cniCode;
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
  if (err instanceof MeshCniError) return new CniError(err.cniCode, err.cniMessage, detailsOf(err), { cause: err });
  const message = err instanceof Error ? err.message : String(err);
  return new CniError(CniCode.Internal, message, undefined, { cause: err });
}

/** A frame on the agent's socket that is not one: the agent refuses the connection; a client reading a bad answer gets code 6. */
export class FrameError extends CniError {
  override readonly code = 'BAD_FRAME';
  constructor(message: string) {
    super(CniCode.DecodingFailure, message);
  }
}

/**
 * A pod lookup failure worth retrying (not found yet, network, 5xx, 429); anything else is final. The lookup
 * retries it within its budget; one that escaped would answer 11 (try again later), which it is.
 */
export class RetryableLookupError extends CniError {
  override readonly code = 'LOOKUP_RETRYABLE';
  constructor(message: string) {
    super(CniCode.TryAgainLater, message);
  }
}

/** An annotation or proxy setting that cannot be turned into rules. Names the key, the bad value and why. */
export class InvalidConfigError extends MeshCniError {
  override readonly code = 'INVALID_CONFIG';
  override readonly cniCode = CniCode.InvalidPodAnnotation;
  constructor(
    readonly key: string,
    readonly value: string,
    readonly reason: string,
  ) {
    super(`invalid ${key}="${value}": ${reason}`, {
      hint: `fix or remove the "${key}" annotation on the pod`,
    });
  }
}

/** The netns path does not exist (the pod sandbox is gone). DEL treats this as success. */
export class NetnsNotFoundError extends MeshCniError {
  override readonly code = 'NETNS_NOT_FOUND';
  override readonly cniCode = CniCode.UnknownContainer;
  constructor(readonly path: string, cause?: unknown, hint = 'the pod sandbox may already be gone') {
    super(`network namespace ${path} does not exist`, { cause, hint });
  }
}

/** The path exists but is not a network namespace. */
export class NotANetnsError extends MeshCniError {
  override readonly code = 'NOT_A_NETNS';
  override readonly cniCode = CniCode.InvalidEnvironment;
  constructor(readonly path: string, cause?: unknown) {
    super(`${path} is not a network namespace`, {
      cause,
      hint: 'pass a path like /var/run/netns/NAME or /proc/PID/ns/net',
    });
  }

  /** The answer names the variable that holds the path. */
  override get cniMessage(): string {
    return `CNI_NETNS: ${this.message}`;
  }
}

/**
 * The namespace file, as opened, is the plugin's own network namespace (the node's, for the agent):
 * programming it would redirect the node's traffic.
 */
export class OwnNetnsError extends MeshCniError {
  override readonly code = 'OWN_NETNS';
  override readonly cniCode = CniCode.InvalidEnvironment;
  constructor(readonly path: string) {
    super(`${path} is the plugin's own network namespace, not a pod's`, {
      hint: 'pass the pod sandbox netns (for example /var/run/netns/cni-...)',
    });
  }
}

/** A program we run (iptables-restore, nft, ip) is missing or failed. */
export class CommandFailedError extends MeshCniError {
  override readonly code = 'COMMAND_FAILED';
  constructor(
    readonly program: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    hint?: string,
  ) {
    super(
      exitCode === null
        ? `${program} could not be run: ${stderr.trim()}`
        : `${program} exited with code ${exitCode}: ${stderr.trim() || '(no output)'}`,
      { hint, details: stderr },
    );
  }
}

/**
 * nftables refused a command run in-process through libnftables: nft's own error text (the line named and
 * marked, as `nft -f` prints it), without an exit code since no program ran. A CommandFailedError, so the CNI
 * answer (code 100) is the one the nft process gives.
 */
export class NftRefusedError extends CommandFailedError {
  constructor(stderr: string, hint?: string) {
    super('libnftables', 1, stderr, hint);
    this.message = `nftables refused the rules (libnftables, in-process): ${stderr.trim() || '(no error text)'}`;
  }
}

/** Rules were applied but what the kernel holds differs from the plan, so they were rolled back. */
export class RuleMismatchError extends MeshCniError {
  override readonly code = 'RULE_MISMATCH';
  override readonly cniCode = CniCode.RuleMismatch;
  constructor(message: string, details: string) {
    super(message, { details, hint: 'another component may be changing rules in this network namespace' });
  }
}

/**
 * An apply failed and taking our rules out again failed too: the netns holds some of our rules. `details`
 * lists them (or says they could not be read), so the person reading the error knows what is left.
 */
export class RollbackFailedError extends MeshCniError {
  override readonly code = 'ROLLBACK_FAILED';
  constructor(
    readonly netns: string,
    readonly applyError: unknown,
    readonly rollbackError: unknown,
    /** undefined: they could not be read (`readError` says why) */
    readonly rulesLeft: readonly string[] | undefined,
    readError?: unknown,
  ) {
    const msg = (e: unknown) => (e instanceof Error ? e.message : String(e));
    const left = rulesLeft === undefined ? 'rules of ours may be left' : `${rulesLeft.length} rule(s) of ours are left`;
    super(`${msg(applyError)}; removing the rules again failed too (${msg(rollbackError)}), so ${left} in ${netns}`, {
      hint: 'the pod must not run like this: delete the pod sandbox, or run `mesh-cni remove` on the netns',
      details:
        rulesLeft === undefined
          ? `the rules left in ${netns} could not be read: ${msg(readError)}`
          : `rules left in ${netns}:\n${rulesLeft.join('\n') || '(none: the failed removal changed nothing of ours)'}`,
    });
  }
}

/** A netns another mesh-cni process (or request) kept locked for longer than we were willing to wait. */
export class NetnsBusyError extends MeshCniError {
  override readonly code = 'NETNS_BUSY';
  override readonly cniCode = CniCode.TryAgainLater;
  constructor(readonly path: string, waitedMs: number) {
    super(`network namespace ${path} is being programmed by another mesh-cni request (waited ${waitedMs} ms)`, {
      hint: 'the runtime retries; a request stuck for this long points at a hung iptables or nft process',
    });
  }
}

/**
 * The request was abandoned (its caller went away, or its time ran out) before it touched the netns; nothing
 * was changed. The runtime retries with a fresh request.
 */
export class RequestAbandonedError extends MeshCniError {
  override readonly code = 'REQUEST_ABANDONED';
  override readonly cniCode = CniCode.TryAgainLater;
  constructor(readonly netns: string, reason: unknown) {
    super(`the request was abandoned before it touched ${netns} (${reason instanceof Error ? reason.message : String(reason)}); nothing was changed`, {
      hint: 'the runtime retries the request',
    });
  }
}

/** The API server has no such pod (the CLI's --pod and explain). */
export class PodNotFoundError extends MeshCniError {
  override readonly code = 'POD_NOT_FOUND';
  constructor(readonly namespace: string, readonly podName: string) {
    super(`pod ${namespace}/${podName} not found`, { hint: `check the name and namespace: kubectl get pods -n ${namespace}` });
  }
}

/** The pod exists but runs on another node, so its netns is not here to look at. */
export class PodNotOnNodeError extends MeshCniError {
  override readonly code = 'POD_NOT_ON_NODE';
  constructor(readonly pod: string, readonly podNode: string | undefined, readonly node: string) {
    super(podNode ? `pod ${pod} runs on node ${podNode}, not on ${node}` : `pod ${pod} is not scheduled to a node yet (this is ${node})`, {
      hint: podNode ? `run this on ${podNode} (kubectl exec into the mesh-cni agent pod there)` : 'wait until it is scheduled',
    });
  }
}

/** The API server could not be reached or refused us. */
export class ApiUnavailableError extends MeshCniError {
  override readonly code = 'API_UNAVAILABLE';
  constructor(message: string, cause?: unknown) {
    super(message, { cause, hint: 'pass --kubeconfig or set $KUBECONFIG (or run in the agent pod, which has a service account)' });
  }
}

/** No netns could be found for a pod: ADD recorded none and no process of the pod is in /proc. */
export class PodNetnsUnknownError extends MeshCniError {
  override readonly code = 'NETNS_UNKNOWN';
  constructor(readonly pod: string, stateDir: string) {
    super(`no network namespace found for pod ${pod}`, {
      hint: `ADD recorded none under ${stateDir}/attachments and no process in --proc-root is in the pod's cgroup: has its sandbox started on this node?`,
    });
  }
}

/** Installing, keeping installed or uninstalling failed; the message names the file, the hint what to check. */
export class InstallerError extends MeshCniError {
  override readonly code = 'INSTALL_FAILED';
  constructor(message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options);
  }
}

const ENOENT = 2;

/** posix_spawn could not start a program (src/netns/spawn.ts); `notFound` when it is not installed. */
export class SpawnError extends MeshCniError {
  override readonly code = 'SPAWN_FAILED';
  constructor(
    readonly program: string,
    readonly errno: number,
  ) {
    super(errno === ENOENT ? `${program} not found in PATH` : `posix_spawn(${program}) failed with errno ${errno}`, {
      hint: errno === ENOENT ? `install ${program} on the node (or in the agent's image)` : undefined,
    });
  }
  get notFound(): boolean {
    return this.errno === ENOENT;
  }
}

/**
 * The API server answered a request of the watch, a GET or the stop decision with a status other than 200.
 * 401 and 403 mean the credentials or RBAC are wrong (104); anything else is worth a retry (11).
 */
export class ApiStatusError extends MeshCniError {
  override readonly code = 'API_STATUS';
  override readonly cniCode: number;
  constructor(
    readonly status: number,
    what: string,
  ) {
    super(`${what}: the API server answered ${status}`, {
      hint: status === 401 || status === 403 ? "check the kubeconfig's credentials and the ClusterRole (install/10-rbac.yaml)" : undefined,
    });
    this.cniCode = status === 401 || status === 403 ? CniCode.PodLookupRefused : CniCode.TryAgainLater;
  }
}

/**
 * What an iptables-restore made in a scratch netns cannot be replayed faithfully as one nf_tables batch
 * (src/redirect/iptables/replay.ts): the plan stays on iptables-restore. Never an answer of its own: it is
 * caught where templates are made, so one that escaped would be a bug (999).
 */
export class UncopyableError extends MeshCniError {
  override readonly code = 'REPLAY_UNCOPYABLE';
  override readonly cniCode = CniCode.Internal;
}

/** A UNIX socket of ours (ztunnel's SEQPACKET socket) was closed by its peer, or here. */
export class SocketClosedError extends MeshCniError {
  override readonly code = 'SOCKET_CLOSED';
  override readonly cniCode = CniCode.TryAgainLater;
}

/** Nothing arrived on a socket of ours within the time allowed. */
export class SocketTimeoutError extends MeshCniError {
  override readonly code = 'SOCKET_TIMEOUT';
  override readonly cniCode = CniCode.TryAgainLater;
}

/** A ZDS record (ztunnel's socket) that is not the message it should be. */
export class ZdsProtocolError extends MeshCniError {
  override readonly code = 'ZDS_PROTOCOL';
  override readonly cniCode = CniCode.TryAgainLater;
}

/**
 * An ambient pod could not be handed to ztunnel: none is connected to the ZDS socket, it did not ack in time,
 * or it acked with an error. The ADD fails with 11 (its rules taken out again) and the runtime retries, as
 * Istio's plugin fails the ADD when its node agent cannot reach ztunnel.
 */
export class ZtunnelUnavailableError extends MeshCniError {
  override readonly code = 'ZTUNNEL_UNAVAILABLE';
  override readonly cniCode = CniCode.TryAgainLater;
  constructor(message: string, cause?: unknown) {
    super(message, { cause, hint: 'ztunnel (Istio ambient, a DaemonSet) must run on this node and connect to the agent\'s ZDS socket; the runtime retries the pod' });
  }
}
