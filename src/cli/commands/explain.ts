/**
 * `mesh-cni explain NAMESPACE/POD`: why a pod is (not) redirected, in one answer. The decision trail (the
 * plugin's own rules, in its order, up to the one that decided), the rules the plan expects, the rules its
 * netns holds, and the difference between the two.
 */
import * as fs from 'node:fs';
import type { Argv } from 'yargs';
import type { V1Pod } from '@kubernetes/client-node';
import { AttachmentStore } from '../../state/attachments';
import { decideMeshing, needsNamespaceLabels, type DecisionStep, type PodInfo } from '../../mesh/decision';
import { podInfoFromPod } from '../../kube/pod-api';
import { MeshCniError } from '../../errors';
import type { Family } from '../../redirect/constants';
import type { ObservedRule } from '../../redirect/backend';
import { buildPlan } from '../../redirect/plan';
import { redirectConfigFromAnnotations, type RedirectConfig } from '../../redirect/config';
import { chooseBackend, compareRedirect, type BackendName } from '../../redirect/engine';
import { ambientFromArgs, ambientOptions, backendOption, excludeNamespacesOption, excludedNamespaces, nodeOptions, netnsLookupOptions, type AmbientArgs, type NodeArgs } from '../options';
import type { AmbientSettings } from '../../mesh/decision';
import { ambientConfigFromAnnotations, type AmbientConfig } from '../../redirect/ambient/config';
import { ambientFamilies, ambientPlanFor, compareAmbient } from '../../redirect/ambient/apply';
import { EXIT, outputOption, paint, printJson, printText, runCommand, table, textSafe, type OutputFormat, type Tone } from '../output';
import { connectKube, getPod, namespaceLabels, requireOnNode } from '../kube-client';
import { ago, lastActionFor, meshCniEventsOrWhy, type EventsOrWhy, type LastAction } from '../last-action';
import { locatePodNetns, recordsFor, type NetnsLocation } from '../pod-netns';
import { checkPodRef, parsePodRef } from '../pod-ref';

export const command = 'explain <pod>';
export const describe = 'why a pod is (not) redirected: decision trail, expected plan, rules in its netns, and the diff';

export function builder(y: Argv) {
  return y
    .positional('pod', { type: 'string', demandOption: true, describe: 'NAMESPACE/POD' })
    .options({
      ...nodeOptions,
      ...excludeNamespacesOption,
      ...netnsLookupOptions,
      ...backendOption,
      ...ambientOptions,
      ...outputOption,
      kubernetes: { type: 'boolean', default: true, describe: 'read the pod from the API server (--no-kubernetes: decide as the plugin does without one, from the annotations the container runtime holds)' },
    })
    .check((a) => checkPodRef(a.pod, 'the pod'))
    .example('$0 explain shop/cart-7d9', 'the whole story of one pod')
    .example('$0 explain shop/cart-7d9 -o json | jq .diff', 'only what differs')
    .example('$0 explain shop/cart-7d9 --ambient', 'with ambient on (the agent pod has it from its ConfigMap): sidecar, ambient or neither, and why')
    .example('$0 explain shop/cart-7d9 --no-kubernetes', 'on a node without Kubernetes: what was decided from the annotations, and what was assumed');
}

type Args = NodeArgs & AmbientArgs & { kubernetes?: boolean; pod: string; 'exclude-namespaces'?: string[]; 'proc-root': string; 'cri-socket': string; backend: BackendName; 'host-netns'?: string; output: OutputFormat };

export type ExplainStep = Omit<DecisionStep, 'outcome'> & { outcome: DecisionStep['outcome'] | 'error' };

export interface RuleJson {
  family: Family;
  table: string;
  chain: string;
  rule: string;
  packets?: number;
}

export interface Explanation {
  pod: string;
  uid: string | null;
  node: string | null;
  trail: ExplainStep[];
  /** the facts assumed at Istio's defaults because only the annotations were known (--no-kubernetes) */
  assumed: string[];
  meshed: boolean;
  /** how a meshed pod is meshed: `sidecar` (Envoy in the pod) or `ambient` (the node's ztunnel); null when not meshed */
  mode: 'sidecar' | 'ambient' | null;
  /** the skip reason, `meshed`, or `invalid-config` */
  reason: string;
  backend: { name: string; reason: string };
  netns: { path: string | null; source: 'attachment' | 'cri' | 'proc' | null; recorded: string | null; exists: boolean };
  families: Family[];
  expected: RuleJson[];
  observed: RuleJson[] | null;
  diff: Array<{ kind: 'missing' | 'unexpected' | 'order'; text: string }> | null;
  lastAction: LastAction | null;
  /** what could not be read (e.g. Events on a 403), so the answer may be incomplete */
  warnings: string[];
  verdict: 'healthy' | 'broken' | 'not-meshed' | 'unknown';
  /** what is wrong, in a sentence; null when nothing is */
  problem: string | null;
}

const ruleJson = (r: ObservedRule): RuleJson => ({ family: r.family, table: r.table, chain: r.chain, rule: r.text, ...(r.packets === undefined ? {} : { packets: r.packets }) });

interface Decided {
  trail: ExplainStep[];
  config?: RedirectConfig;
  /** an ambient pod's in-pod config (then `config` is absent) */
  ambient?: AmbientConfig;
  reason: string;
  assumed: string[];
}

function decide(pod: V1Pod, excludeNamespaces: readonly string[], nsLabels: Record<string, string> | undefined, ambient: AmbientSettings | undefined): Decided {
  const trail: DecisionStep[] = [];
  if (pod.spec?.hostNetwork) {
    trail.push({ rule: 'host-network', outcome: 'skip', detail: 'hostNetwork: true: the runtime never calls CNI for this pod' });
    return { trail, reason: 'host-network', assumed: [] };
  }
  trail.push({ rule: 'host-network', outcome: 'pass', detail: 'the pod has its own network namespace' });
  try {
    const info = podInfoFromPod(pod);
    if (needsNamespaceLabels(info, { ambient })) info.namespaceLabels = nsLabels;
    return decideInfo(info, excludeNamespaces, trail, ambient);
  } catch (err) {
    const failed: ExplainStep = { rule: 'annotations', outcome: 'error', detail: `${(err as Error).message}: the plugin fails this pod's ADD` };
    return { trail: [...withoutVerdict(trail), failed], reason: 'invalid-config', assumed: [] };
  }
}

/**
 * The decision's own `annotations` and `meshed` steps are written before the config is built from the
 * annotations; when that fails they were not the answer, and the trail ends with the error instead.
 */
function withoutVerdict(trail: readonly ExplainStep[]): ExplainStep[] {
  return trail.filter((s) => !(s.rule === 'meshed' || (s.rule === 'annotations' && s.outcome === 'pass')));
}

/** The decision, and a meshed pod's config (throws InvalidConfigError, as the pod's ADD would fail, for bad annotations). */
function decideInfo(info: PodInfo, excludeNamespaces: readonly string[], trail: DecisionStep[], ambient?: AmbientSettings): Decided {
  const decision = decideMeshing(info, { excludeNamespaces, ambient }, trail);
  const assumed = decision.assumed ?? [];
  if (!decision.meshed) return { trail, reason: decision.reason, assumed };
  if (decision.dataplane === 'ambient') return { trail, ambient: ambientConfigFromAnnotations(decision.annotations, ambient!.node), reason: 'meshed', assumed };
  return { trail, config: redirectConfigFromAnnotations(decision.annotations, decision.proxy), reason: 'meshed', assumed };
}

/**
 * Kubernetes turned off: the pod as the plugin saw it, from the runtime's sandbox (its annotations, its
 * netns), decided from the annotations alone, with every assumption named.
 */
async function explainFromRuntime(args: Args): Promise<Explanation> {
  const ref = parsePodRef(args.pod);
  const id = `${ref.namespace}/${ref.name}`;
  const socket = args['cri-socket'];
  if (!socket) throw new MeshCniError('explain --no-kubernetes reads the pod from the container runtime', { hint: 'pass --cri-socket (the runtime\'s CRI socket)' });
  const { findSandbox } = await import('../../repair/cri');
  let found: Awaited<ReturnType<typeof findSandbox>>;
  try {
    found = await findSandbox(socket, ref.namespace, ref.name);
  } catch (err) {
    throw new MeshCniError(`cannot ask the container runtime at ${socket}: ${(err as Error).message}`, { hint: 'pass --cri-socket with the runtime\'s CRI socket' });
  }
  if (!found) throw new MeshCniError(`the container runtime at ${socket} has no ready sandbox for pod ${id}`);
  const trail: DecisionStep[] = [];
  let decided: Decided;
  try {
    decided = decideInfo({ name: ref.name, namespace: ref.namespace, annotations: found.sandbox.annotations ?? {} }, excludedNamespaces(args), trail, ambientFromArgs(args));
  } catch (err) {
    decided = { trail: [...withoutVerdict(trail), { rule: 'annotations', outcome: 'error', detail: `${(err as Error).message}: the plugin fails this pod's ADD` }], reason: 'invalid-config', assumed: [] };
  }
  const pod: V1Pod = { metadata: { name: ref.name, namespace: ref.namespace, uid: found.sandbox.metadata?.uid } };
  const record = recordsFor(new AttachmentStore(args['state-dir']), pod)[0];
  // The reconciler's order: what ADD recorded, then the runtime.
  const where: NetnsLocation =
    record && fs.existsSync(record.netns)
      ? { netns: record.netns, source: 'attachment', recorded: record.netns, record }
      : found.netns
        ? { netns: found.netns, source: 'cri', recorded: record?.netns, record }
        : { recorded: record?.netns, record };
  return finish(args, id, pod, decided, where, { events: new Map() });
}

const INVALID_PROBLEM = "the pod's annotations are invalid: every ADD for it fails";

function diffKind(problem: string): 'missing' | 'unexpected' | 'order' {
  return problem.startsWith('missing') ? 'missing' : problem.startsWith('unexpected') ? 'unexpected' : 'order';
}

export async function explain(args: Args): Promise<Explanation> {
  if (args.kubernetes === false) return explainFromRuntime(args);
  const nodeName = args['node-name'];
  if (!nodeName) throw new MeshCniError('explain needs to know which node it is on (the netns is looked for here)', { hint: 'pass --node-name or set NODE_NAME' });
  const ref = parsePodRef(args.pod);
  const kube = await connectKube(args.kubeconfig);
  const pod = await getPod(kube, ref);
  requireOnNode(pod, nodeName);
  const id = `${ref.namespace}/${ref.name}`;
  const ambient = ambientFromArgs(args);
  const nsLabels = needsNamespaceLabels(podInfoFromPod(pod), { ambient }) ? await namespaceLabels(kube, ref.namespace) : undefined;
  const decided = decide(pod, excludedNamespaces(args), nsLabels, ambient);
  const [where, events] = await Promise.all([
    locatePodNetns(pod, args['state-dir'], args['proc-root'], args['cri-socket']),
    meshCniEventsOrWhy(kube, ref.namespace),
  ]);
  return finish(args, id, pod, decided, where, events);
}

async function finish(args: Args, id: string, pod: V1Pod, decided: Decided, where: NetnsLocation, eventsOrWhy: EventsOrWhy): Promise<Explanation> {
  const { trail, config, ambient, reason, assumed } = decided;
  const meshed = config !== undefined || ambient !== undefined;
  const chosen = await chooseBackend({ backend: args.backend, hostNetns: args['host-netns'] });
  const base = {
    pod: id,
    uid: pod.metadata?.uid ?? null,
    node: pod.spec?.nodeName ?? null,
    trail,
    assumed,
    meshed,
    mode: ambient ? ('ambient' as const) : config ? ('sidecar' as const) : null,
    reason,
    backend: { name: chosen.backend.name, reason: chosen.reason },
    netns: { path: where.netns ?? null, source: where.source ?? null, recorded: where.recorded ?? null, exists: where.netns !== undefined },
    lastAction: lastActionFor(pod, eventsOrWhy.events, where.record) ?? null,
    warnings: eventsOrWhy.warning ? [eventsOrWhy.warning] : [],
  };

  if (!where.netns) {
    // No netns to read: the plan alone, for the families the pod's IPs say it has.
    const families: Family[] = ambient ? ambientFamilies(ambient, { present: true, loopbackDisabled: false }) : (pod.status?.podIPs ?? []).some((ip) => ip.ip.includes(':')) ? ['ipv4', 'ipv6'] : ['ipv4'];
    const plan = ambient ? ambientPlanFor(ambient) : config ? buildPlan(config) : undefined;
    const expected = plan ? families.flatMap((f) => chosen.backend.expected(f, plan[f].rules)).map(ruleJson) : [];
    const problem = where.recorded
      ? `network namespace ${where.recorded} (recorded by ADD) no longer exists: the pod sandbox is gone`
      : pod.status?.podIP || args.kubernetes === false
        ? `no network namespace found for the pod (nothing recorded under ${args['state-dir']}/attachments, unknown to the runtime at ${args['cri-socket'] || '(no CRI socket)'}, no process of it in ${args['proc-root']})`
        : 'the pod has no IP yet: its sandbox has not been networked';
    // Invalid annotations are the problem whether or not a netns exists: every ADD for the pod fails.
    if (reason === 'invalid-config') return { ...base, families, expected, observed: null, diff: null, verdict: 'unknown', problem: INVALID_PROBLEM };
    return { ...base, families, expected, observed: null, diff: null, verdict: meshed ? 'unknown' : 'not-meshed', problem: meshed || where.recorded ? problem : null };
  }

  const target = { netns: where.netns, backend: args.backend, hostNetns: args['host-netns'] };
  const compared = ambient ? await compareAmbient({ ...target, config: ambient }) : await compareRedirect({ ...target, config });
  const diff = compared.problems.map((text) => ({ kind: diffKind(text), text }));
  const verdict = reason === 'invalid-config' ? 'unknown' : meshed ? (diff.length === 0 ? 'healthy' : 'broken') : diff.length === 0 ? 'not-meshed' : 'broken';
  const problem =
    reason === 'invalid-config'
      ? INVALID_PROBLEM
      : diff.length === 0
        ? null
        : meshed && compared.observed.length === 0
          ? `no mesh-cni rules in ${where.netns} (the plan has ${compared.expected.length})`
          : meshed
            ? `the rules in ${where.netns} differ from the plan (${diff.length} difference${diff.length === 1 ? '' : 's'})`
            : `the pod is not meshed but ${where.netns} holds mesh-cni rules`;
  return {
    ...base,
    families: compared.families,
    expected: compared.expected.map(ruleJson),
    observed: compared.observed.map(ruleJson),
    diff,
    verdict,
    problem,
  };
}

const OUTCOME_TONE: Record<ExplainStep['outcome'], Tone> = { pass: 'ok', skip: 'warn', assumed: 'warn', meshed: 'ok', error: 'bad' };

function rulesTable(rules: readonly RuleJson[], nft: boolean): string {
  if (rules.length === 0) return '  (none)\n';
  return table(rules.map((r) => [`  ${r.family}`, r.table, nft ? `${r.chain}: ${r.rule}${r.packets === undefined ? '' : `  # ${r.packets} packets`}` : `-A ${r.chain} ${r.rule}`]));
}

export function explanationText(explanation: Explanation, now = Date.now()): string {
  // Names, annotations, Events and rules come from the API and the netns: printable before they are laid out.
  const e = textSafe(explanation);
  const nft = e.backend.name === 'nftables';
  let out = `${paint('bold', `pod ${e.pod}`)}  uid ${e.uid ?? '-'}  node ${e.node ?? '-'}\n`;
  if (e.lastAction) out += `last action: ${e.lastAction.reason} ${ago(e.lastAction.at, now)}: ${e.lastAction.message}\n`;
  for (const w of e.warnings) out += `${paint('warn', `warning: ${w}`)}\n`;
  out += `\n${paint('bold', 'decision')} (in the plugin's order)${e.mode ? `: meshed, ${e.mode === 'ambient' ? "ambient (the node's ztunnel)" : 'sidecar (Envoy in the pod)'}` : ''}\n`;
  out += table(e.trail.map((s) => [`  ${s.rule}`, { text: s.outcome, tone: OUTCOME_TONE[s.outcome] }, s.detail]));
  if (e.assumed.length > 0) out += `  ${paint('warn', 'decided from the annotations alone (Kubernetes turned off); assumed:')}\n${e.assumed.map((a) => `    - ${a}\n`).join('')}`;
  out += `\n${paint('bold', 'expected rules')} (${e.backend.name}: ${e.backend.reason}; ${e.families.join(', ')})\n`;
  out += e.meshed ? rulesTable(e.expected, nft) : `  none: the pod is not meshed (${e.reason})\n`;
  out += `\n${paint('bold', 'rules in the netns')}`;
  if (e.netns.path) out += ` ${e.netns.path} (found ${e.netns.source === 'attachment' ? 'from what ADD recorded' : e.netns.source === 'cri' ? 'from the container runtime' : 'from a process in the pod'})\n${rulesTable(e.observed ?? [], nft)}`;
  else out += `\n  ${e.netns.recorded ? `${e.netns.recorded} (recorded by ADD) no longer exists` : 'no network namespace found'}\n`;
  if (e.diff) {
    out += `\n${paint('bold', 'diff')} (- expected but missing, + present but not expected)\n`;
    if (e.diff.length === 0) out += `  ${paint('ok', 'none: the netns holds exactly the plan')}\n`;
    for (const d of e.diff) out += `  ${d.kind === 'missing' ? paint('bad', `- ${d.text}`) : d.kind === 'unexpected' ? paint('warn', `+ ${d.text}`) : paint('warn', `~ ${d.text}`)}\n`;
  }
  const tone: Tone = e.verdict === 'healthy' ? 'ok' : e.verdict === 'not-meshed' && !e.problem ? 'dim' : 'bad';
  out += `\nverdict: ${paint(tone, e.verdict)}${e.problem ? `: ${e.problem}` : ''}\n`;
  if (e.verdict === 'broken' && e.meshed && e.mode === 'ambient') out += `fix: delete the pod (its sandbox is enrolled again at ADD), or restart the agent on this node (it reconciles every ambient pod)\n`;
  else if (e.verdict === 'broken' && e.meshed) out += `fix: mesh-cni apply --pod ${e.pod} (this pod), or mesh-cni repair (every broken pod on the node)\n`;
  if (e.verdict === 'broken' && !e.meshed) out += `fix: mesh-cni remove --pod ${e.pod}\n`;
  return out;
}

export async function handler(args: Args): Promise<void> {
  await runCommand(args.output, async () => {
    const e = await explain(args);
    if (args.output === 'json') printJson(e);
    else printText(explanationText(e));
    return e.problem ? EXIT.problem : EXIT.ok;
  });
}
