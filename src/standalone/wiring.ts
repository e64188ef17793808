/**
 * The plugin's wiring: cni/dispatch given the real parts it knows only as interfaces. Which pods are meshed
 * (the mesh decision over the pod lookup), the redirect engine (a meshed pod's facts prepared into its config
 * and plan, then applied), the attachment records, the netns check and STATUS. The standalone plugin
 * (./main.ts) and the agent (src/agent/agent.ts) run the same wiring; the agent hands its watch cache and its
 * warm engine, tests their stand-ins.
 */
import type { AppliedReport, CniDeps, RedirectEngine } from '../cni/dispatch';
import { CniCode, CniError, NetnsNotFoundError } from '../errors';
import { decidePod, isPromise, type PodDecision, type PodSourceDeps } from '../kube/pod-lookup';
import type { AmbientPod, MeshedPod } from '../mesh/decision';
import type { KubernetesArgs } from '../cni/request';
import type { PhaseClock } from '../cni/phases';
import type { BackendName } from '../defaults';
import { ambientConfigFromAnnotations, DEFAULT_AMBIENT_NODE, type AmbientConfig, type AmbientNodeSettings } from '../redirect/ambient/config';
import { classifyNetnsPath } from '../netns/identity';
import type * as EngineModule from '../redirect/engine';
import { redirectConfigFromAnnotations } from '../redirect/config';
import { preparedFor } from '../redirect/prepare';
import { checkProgramsForBackend } from '../redirect/programs';
import { AttachmentStore } from '../state/attachments';

/** The parts of the redirect engine a CNI command uses (fault and unit tests hand stand-ins). */
export type EngineApi = Pick<typeof EngineModule, 'applyRedirect' | 'removeRedirect' | 'checkRedirect'>;

export interface PluginOptions extends PodSourceDeps, Pick<CniDeps, 'defaultLogFile' | 'recordInBackground' | 'keepAutoDetection' | 'onRequest'> {
  /** the engine, loaded already (the agent); by default loaded on the first command that needs it */
  engine?: EngineApi;
  classifyNetns?: CniDeps['classifyNetns'];
  status?: CniDeps['status'];
  /** one store for every request (the agent's); by default the netconf's state_dir's */
  attachments?: AttachmentStore;
  /** the agent's ambient side (src/agent/ambient.ts); absent in the standalone engine, which then refuses ambient pods */
  ambient?: AmbientHandler;
}

/** An ambient pod's ADD: the rules, then ztunnel's ack. Only the agent holds ztunnel's socket. */
export interface AmbientHandler {
  /** the node-wide settings the in-pod rules are made with */
  node: AmbientNodeSettings;
  /**
   * Programs the pod's rules and hands its netns to ztunnel, resolving once ztunnel acked; on any failure
   * takes the rules out again and rejects (fail closed: the sandbox never runs half enrolled).
   */
  add(a: { pod: KubernetesArgs; netns: string; config: AmbientConfig; backend: BackendName; ips: string[]; signal?: AbortSignal; laps?: PhaseClock }): Promise<{ backend: string; rules: number; via?: string }>;
  /** After DEL took the rules out: ztunnel is told the workload is gone (DelWorkload), if it had it. */
  deleted(pod: KubernetesArgs): Promise<void>;
}

type Pod = MeshedPod | AmbientPod;

/** A CNI command's engine over the engine's API: the pod's facts become its (cached) config and plan. */
function commandEngine(api: EngineApi, o: Pick<PluginOptions, 'ambient'>): RedirectEngine<Pod> {
  // The agent's ambient side is set once its watches synced, so it is read when a command needs it.
  return {
    apply: (cmd) => {
      if (cmd.pod.dataplane === 'ambient') return addAmbient(cmd.pod, cmd, o.ambient);
      const { config, plan } = preparedFor(cmd.pod);
      // A fresh sandbox's one transaction proves its result; the read-back would double the ADD's processes.
      return api.applyRedirect({ netns: cmd.netns, config, plan, backend: cmd.backend, keepDetectionIn: cmd.keepDetectionIn, verify: 'when-replacing', signal: cmd.signal, laps: cmd.laps });
    },
    remove: async (cmd) => {
      const ambient = o.ambient;
      const removed = await api.removeRedirect(cmd).catch(async (err: unknown) => {
        if (err instanceof NetnsNotFoundError && cmd.k8s && ambient) await ambient.deleted(cmd.k8s);
        throw err;
      });
      // The rules are out: ztunnel lets the workload go (Istio's RemovePodFromMesh: rules first, then DelWorkload).
      if (cmd.k8s && ambient) await ambient.deleted(cmd.k8s);
      return removed;
    },
    check: async (cmd) => {
      const target = { netns: cmd.netns, backend: cmd.backend, keepDetectionIn: cmd.keepDetectionIn };
      if (cmd.pod.dataplane !== 'ambient') return api.checkRedirect({ ...target, config: preparedFor(cmd.pod).config });
      const { checkAmbient } = await import('../redirect/ambient/apply');
      return checkAmbient({ ...target, config: ambientConfigFromAnnotations(cmd.pod.annotations, o.ambient?.node ?? DEFAULT_AMBIENT_NODE) });
    },
  };
}

/** An ambient pod's rules and ztunnel's ack, through the agent; the standalone engine answers 11 (the runtime retries). */
async function addAmbient(pod: AmbientPod, o: Parameters<RedirectEngine<Pod>['apply']>[0], ambient: AmbientHandler | undefined): Promise<AppliedReport> {
  if (!ambient) {
    throw new CniError(
      CniCode.TryAgainLater,
      `pod ${o.k8s.podNamespace}/${o.k8s.podName} is ambient: only the mesh-cni agent can hand it to ztunnel, and the agent is not answering`,
      'the runtime retries the sandbox; it starts once the agent is back',
    );
  }
  const config = ambientConfigFromAnnotations(pod.annotations, ambient.node);
  const report = await ambient.add({ pod: o.k8s, netns: o.netns, config, backend: o.backend, ips: o.ips, signal: o.signal, laps: o.laps });
  return { ...report, dataplane: 'ambient' };
}

/** Standalone readiness: the backend's programs are installed. */
async function programsInstalled(netconf: Parameters<CniDeps['status']>[0]): Promise<void> {
  const missing = checkProgramsForBackend(netconf.backend);
  if (missing) throw new CniError(CniCode.PluginNotAvailable, `mesh-cni cannot program pods: ${missing}`, 'install iptables or nftables on the node');
}

/** A NONE pod's other annotations are still parsed, as before the ADD answers: a bad one is 101, not a skip. */
function checkedNone(d: PodDecision): PodDecision {
  if (!d.decision.meshed && 'annotations' in d.decision) redirectConfigFromAnnotations(d.decision.annotations);
  return d;
}

function then<T, U>(v: T | Promise<T>, f: (t: T) => U): U | Promise<U> {
  return isPromise(v) ? v.then(f) : f(v);
}

export function pluginDeps(o: PluginOptions = {}): CniDeps<Pod> {
  let engine: RedirectEngine<Pod> | Promise<RedirectEngine<Pod>> | undefined = o.engine && commandEngine(o.engine, o);
  return {
    decide: (req) => then(decidePod(req, o), checkedNone),
    engine: () => (engine ??= import('../redirect/engine').then((api) => (engine = commandEngine(api, o)))),
    attachments: (stateDir) => o.attachments ?? new AttachmentStore(stateDir),
    classifyNetns: o.classifyNetns ?? classifyNetnsPath,
    status: o.status ?? programsInstalled,
    defaultLogFile: o.defaultLogFile,
    recordInBackground: o.recordInBackground,
    keepAutoDetection: o.keepAutoDetection,
    onRequest: o.onRequest,
    now: o.now,
  };
}
