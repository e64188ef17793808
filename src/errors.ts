/**
 * One errors module for the whole project. Every error has a stable `code` (a string a script can match on),
 * a message that says what went wrong, and where possible a `hint`: what the person reading it can do next.
 * The CNI layer maps these to the spec's numeric error codes in one place (src/cni/errors.ts).
 */
export class MeshCniError extends Error {
  readonly code: string = 'MESH_CNI_ERROR';
  readonly hint?: string;
  readonly details?: string;

  constructor(message: string, options: { hint?: string; details?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.hint = options.hint;
    this.details = options.details;
  }
}

/** An annotation or proxy setting that cannot be turned into rules. Names the key, the bad value and why. */
export class InvalidConfigError extends MeshCniError {
  override readonly code = 'INVALID_CONFIG';
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
  constructor(readonly path: string, cause?: unknown, hint = 'the pod sandbox may already be gone') {
    super(`network namespace ${path} does not exist`, { cause, hint });
  }
}

/** The path exists but is not a network namespace. */
export class NotANetnsError extends MeshCniError {
  override readonly code = 'NOT_A_NETNS';
  constructor(readonly path: string, cause?: unknown) {
    super(`${path} is not a network namespace`, {
      cause,
      hint: 'pass a path like /var/run/netns/NAME or /proc/PID/ns/net',
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
    super(message, { cause, hint: 'pass --kubeconfig (or run in the agent pod, which has a service account)' });
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

/** A UNIX socket of ours (ztunnel's SEQPACKET socket) was closed by its peer, or here. */
export class SocketClosedError extends MeshCniError {
  override readonly code = 'SOCKET_CLOSED';
}

/** Nothing arrived on a socket of ours within the time allowed. */
export class SocketTimeoutError extends MeshCniError {
  override readonly code = 'SOCKET_TIMEOUT';
}

/** A ZDS record (ztunnel's socket) that is not the message it should be. */
export class ZdsProtocolError extends MeshCniError {
  override readonly code = 'ZDS_PROTOCOL';
}
