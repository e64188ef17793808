/**
 * The reconciler: finds the pods on this node that should be redirected but whose netns does not hold the
 * expected rules, and acts on them (repair in place, label, or delete), rate limited.
 *
 * Two detectors: Istio's (an `istio-validation` init container that exited 126) and ours (read the rules
 * really present in the pod's netns and compare them with the plan, which also catches partial rule sets
 * and rules gone stale after an annotation change). The decision of which pods are meshed is the plugin's
 * own (src/mesh/decision), so the two never disagree.
 */
import type { V1Pod } from '@kubernetes/client-node';
import { decideMeshing, needsNamespaceLabels } from '../mesh/decision';
import { podInfoFromPod } from '../kube/pod-api';
import type { RedirectConfig } from '../redirect/config';
import { preparedFor } from '../redirect/prepare';
import type { BackendName } from '../redirect/engine';
import { NetnsNotFoundError } from '../errors';
import { TokenBucket } from './token-bucket';
import { UNINITIALIZED_LABEL, VALIDATION_CONTAINER } from '../mesh/istio-names';

export type RepairMode = 'repair' | 'label' | 'delete' | 'off';
export const REPAIR_MODES: readonly RepairMode[] = ['repair', 'label', 'delete', 'off'];
/** Pods a pass looks at at once: each check starts programs, so a few overlap their waits. */
export const REPAIR_CONCURRENCY = 4;
const ISTIO_VALIDATION_FAILED = 126;

/**
 * `invalid`: the plugin would mesh the pod but its annotations are invalid, so every ADD for it fails (the
 * reason names the annotation); nothing in its netns is ours to judge or repair.
 */
export type Verdict = 'healthy' | 'broken' | 'not-meshed' | 'skipped' | 'unknown' | 'invalid';

/** A meshed pod whose netns holds none of our rules (not "N differences": nothing was ever programmed, or all was flushed). */
export const NO_RULES_REASON = 'no mesh-cni rules in the netns';

export interface Finding {
  namespace: string;
  name: string;
  uid?: string;
  verdict: Verdict;
  /** Why: the skip reason, the detector that fired, or what could not be determined. */
  reason: string;
  problems?: string[];
  netns?: string;
  /** What was done (or would be, in a dry run): 'repaired', 'labeled', 'deleted', 'rate-limited', 'failed: ...'. */
  action?: string;
  /** When the action started (it took a token from the rate limiter), ISO 8601. */
  actedAt?: string;
}

/** The side effects the reconciler needs, injected so the logic is testable and the agent wires the real ones. */
export interface RepairDeps {
  pods(): readonly V1Pod[];
  /** The pod's netns path, or undefined when it cannot be found (the sandbox may not exist yet). */
  locateNetns(pod: V1Pod): Promise<string | undefined>;
  /** `observedRules`: how many of our rules the netns holds at all (0: none). */
  check(netns: string, config: RedirectConfig): Promise<{ ok: boolean; problems: string[]; observedRules?: number }>;
  apply(netns: string, config: RedirectConfig): Promise<void>;
  label(pod: V1Pod): Promise<void>;
  /** Deletes with uid and resourceVersion preconditions, so a replaced pod is never hit. */
  delete(pod: V1Pod): Promise<void>;
  event(pod: V1Pod, reason: string, message: string, type: 'Normal' | 'Warning'): Promise<void>;
  onAction?(action: string, result: 'ok' | 'failed'): void;
  /** Told once per finding that led to an action (or a rate-limited one), as soon as it is done. */
  onFinding?(finding: Finding): void;
  /** A namespace's labels (ambient can be enabled there), undefined when unknown; only asked for pods skipped anyway. */
  namespaceLabels?(namespace: string): Promise<Record<string, string> | undefined>;
}

export interface ReconcilerOptions {
  mode: RepairMode;
  excludeNamespaces: readonly string[];
  backend?: BackendName;
  /** Actions allowed per second, and how many may happen at once after a quiet spell. */
  ratePerSecond?: number;
  burst?: number;
  dryRun?: boolean;
  /** Pods checked at once in a pass (default 4). */
  concurrency?: number;
}

function istioValidationFailed(pod: V1Pod): boolean {
  const status = pod.status?.initContainerStatuses?.find((c) => c.name === VALIDATION_CONTAINER);
  const codes = [status?.state?.terminated?.exitCode, status?.lastState?.terminated?.exitCode];
  return codes.includes(ISTIO_VALIDATION_FAILED);
}

export class Reconciler {
  private readonly bucket: TokenBucket;
  private running?: Promise<Finding[]>;
  /** Pods being looked at now: a watch event and a resync never act on the same pod twice at once. */
  private readonly inFlight = new Map<string, Promise<Finding>>();

  constructor(
    private readonly options: ReconcilerOptions,
    private readonly deps: RepairDeps,
  ) {
    this.bucket = new TokenBucket(options.ratePerSecond ?? 5, options.burst ?? 10);
  }

  /** Looks at one pod: is it meshed, and if so does its netns hold what the plan says? */
  async inspect(pod: V1Pod): Promise<Finding> {
    const meta = pod.metadata ?? {};
    const base = { namespace: meta.namespace ?? '', name: meta.name ?? '', uid: meta.uid };
    if (meta.deletionTimestamp) return { ...base, verdict: 'skipped', reason: 'terminating' };
    if (pod.spec?.hostNetwork) return { ...base, verdict: 'not-meshed', reason: 'host-network' };
    let config: RedirectConfig;
    try {
      const info = podInfoFromPod(pod);
      if (needsNamespaceLabels(info) && this.deps.namespaceLabels) info.namespaceLabels = await this.deps.namespaceLabels(info.namespace).catch(() => undefined);
      // Sidecar pods only: ambient pods are the ambient controller's (src/agent/ambient.ts reconciles them at start
      // and on every pod or namespace change), so without ambient options here they read as skipped, reason `ambient`.
      const decision = decideMeshing(info, { excludeNamespaces: this.options.excludeNamespaces });
      if (!decision.meshed || decision.dataplane === 'ambient') return { ...base, verdict: 'not-meshed', reason: decision.meshed ? 'ambient' : decision.reason };
      // Invalid annotations throw here, as the pod's ADD fails on them.
      config = preparedFor(decision).config;
    } catch (err) {
      // One pod's bad annotations are that pod's finding: a pass (the agent's, `repair`, `pods`, `status`) goes on
      // with every other pod.
      return { ...base, verdict: 'invalid', reason: err instanceof Error ? err.message : String(err) };
    }
    // Until the pod has an IP the CNI chain has not finished ADD: nothing to judge yet.
    if (!pod.status?.podIP) return { ...base, verdict: 'unknown', reason: 'no pod IP yet (sandbox networking not done)' };
    const netns = await this.deps.locateNetns(pod);
    if (istioValidationFailed(pod)) return { ...base, netns, verdict: 'broken', reason: `${VALIDATION_CONTAINER} exited ${ISTIO_VALIDATION_FAILED}` };
    if (!netns) return { ...base, verdict: 'unknown', reason: 'network namespace not found' };
    try {
      const { ok, problems, observedRules } = await this.deps.check(netns, config);
      if (ok) return { ...base, netns, verdict: 'healthy', reason: 'rules match the plan' };
      if (observedRules === 0) return { ...base, netns, verdict: 'broken', reason: NO_RULES_REASON, problems };
      return { ...base, netns, verdict: 'broken', reason: 'rules differ from the plan', problems };
    } catch (err) {
      if (err instanceof NetnsNotFoundError) return { ...base, verdict: 'unknown', reason: 'network namespace is gone' };
      return { ...base, netns, verdict: 'unknown', reason: `could not read the rules: ${(err as Error).message}` };
    }
  }

  private async act(pod: V1Pod, finding: Finding): Promise<void> {
    const mode = this.options.mode;
    if (mode === 'off') return;
    // Labeled already (by us or by Istio's controller): labeling again on every resync would only add Events.
    if (mode === 'label' && pod.metadata?.labels?.[UNINITIALIZED_LABEL] === 'true') {
      finding.reason += `; already labeled ${UNINITIALIZED_LABEL}=true`;
      return;
    }
    if (this.options.dryRun) {
      finding.action = `would ${mode}`;
      return;
    }
    if (!this.bucket.take()) {
      finding.action = 'rate-limited';
      return;
    }
    finding.actedAt = new Date().toISOString();
    const differences = finding.problems?.length ?? 0;
    const what =
      finding.reason === NO_RULES_REASON
        ? `${finding.reason} (all ${differences} planned rules missing)`
        : `${finding.reason}${differences ? ` (${differences} rule difference${differences === 1 ? '' : 's'})` : ''}`;
    try {
      if (mode === 'repair') {
        if (!finding.netns) throw new Error('network namespace not found');
        const decision = decideMeshing(podInfoFromPod(pod), { excludeNamespaces: this.options.excludeNamespaces });
        if (!decision.meshed || decision.dataplane === 'ambient') return;
        await this.deps.apply(finding.netns, preparedFor(decision).config);
        finding.action = 'repaired';
        await this.deps.event(pod, 'RedirectRepaired', `mesh-cni reprogrammed the traffic redirection in place: ${what}`, 'Normal');
      } else if (mode === 'label') {
        await this.deps.label(pod);
        finding.action = 'labeled';
        await this.deps.event(pod, 'RedirectMissing', `mesh-cni labeled the pod ${UNINITIALIZED_LABEL}=true: ${what}`, 'Warning');
      } else {
        await this.deps.delete(pod);
        finding.action = 'deleted';
        await this.deps.event(pod, 'RedirectMissingPodDeleted', `mesh-cni deleted the pod so it is recreated with redirection: ${what}`, 'Warning');
      }
      this.deps.onAction?.(mode, 'ok');
    } catch (err) {
      finding.action = `failed: ${(err as Error).message}`;
      this.deps.onAction?.(mode, 'failed');
    }
  }

  /** Inspects one pod and acts on it when broken. */
  reconcile(pod: V1Pod): Promise<Finding> {
    const key = pod.metadata?.uid ?? `${pod.metadata?.namespace}/${pod.metadata?.name}`;
    const current = this.inFlight.get(key);
    if (current) return current;
    const work = (async () => {
      const finding = await this.inspect(pod);
      if (finding.verdict === 'broken') await this.act(pod, finding);
      if (finding.action) this.deps.onFinding?.(finding);
      return finding;
    })().finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, work);
    return work;
  }

  /** One full pass over the node's pods; concurrent calls share the pass in progress. */
  pass(): Promise<Finding[]> {
    if (!this.running) {
      this.running = (async () => {
        // A few pods at a time: each check waits on a program (iptables-save, nft) far more than on us.
        const pods = this.deps.pods();
        const findings: Finding[] = new Array(pods.length);
        let next = 0;
        const worker = async () => {
          while (next < pods.length) {
            const i = next++;
            findings[i] = await this.reconcile(pods[i]!);
          }
        };
        await Promise.all(Array.from({ length: Math.min(this.options.concurrency ?? REPAIR_CONCURRENCY, pods.length) }, worker));
        return findings;
      })().finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }
}
