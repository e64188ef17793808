/**
 * The plugin's wiring: cni/dispatch given the real parts it knows only as interfaces. Which pods are meshed
 * (the mesh decision over the pod lookup), the redirect engine (a meshed pod's facts prepared into its config
 * and plan, then applied), the attachment records, the netns check and STATUS. The standalone plugin
 * (./main.ts) and the agent (src/agent/agent.ts) run the same wiring; the agent hands its watch cache and its
 * warm engine, tests their stand-ins.
 */
import type { CniDeps, RedirectEngine } from '../cni/dispatch';
import { CniCode, CniError } from '../errors';
import { decidePod, type PodDecision, type PodSourceDeps } from '../kube/pod-lookup';
import type { MeshedPod } from '../mesh/decision';
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
}

/** A CNI command's engine over the engine's API: the pod's facts become its (cached) config and plan. */
function commandEngine(api: EngineApi): RedirectEngine<MeshedPod> {
  return {
    apply: (o) => {
      const { config, plan } = preparedFor(o.pod);
      // A fresh sandbox's one transaction proves its result; the read-back would double the ADD's processes.
      return api.applyRedirect({ netns: o.netns, config, plan, backend: o.backend, keepDetectionIn: o.keepDetectionIn, verify: 'when-replacing', signal: o.signal, laps: o.laps });
    },
    remove: (o) => api.removeRedirect(o),
    check: (o) => api.checkRedirect({ netns: o.netns, config: preparedFor(o.pod).config, backend: o.backend, keepDetectionIn: o.keepDetectionIn }),
  };
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
  return v instanceof Promise ? v.then(f) : f(v);
}

export function pluginDeps(o: PluginOptions = {}): CniDeps<MeshedPod> {
  let engine: RedirectEngine<MeshedPod> | Promise<RedirectEngine<MeshedPod>> | undefined = o.engine && commandEngine(o.engine);
  return {
    decide: (req) => then(decidePod(req, o), checkedNone),
    engine: () => (engine ??= import('../redirect/engine').then((api) => (engine = commandEngine(api)))),
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
