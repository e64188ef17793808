/**
 * `mesh-cni pods`: this node's pods as the reconciler sees them (it inspects, never acts): meshed or why not,
 * whether the rules in each netns match the plan, the backend, and the last thing mesh-cni did to the pod.
 * `--service NS/SVC`: only those behind that service (its selector), as istioctl narrows to a service.
 */
import type { Argv } from 'yargs';
import { AttachmentStore } from '../../state/attachments';
import { MeshCniError } from '../../errors';
import { chooseBackend, type BackendName } from '../../redirect/engine';
import { NO_RULES_REASON, type Finding } from '../../repair/reconciler';
import { backendOption, excludeNamespacesOption, excludedNamespaces, nodeOptions, netnsLookupOptions, type NodeArgs } from '../options';
import { EXIT, outputOption, printable, printJson, printText, runCommand, table, textSafe, type Cell, type OutputFormat } from '../output';
import { connectKube, getService, selectedBy } from '../kube-client';
import { checkPodRef, parsePodRef } from '../pod-ref';
import { ago, lastActionFor, meshCniEventsOrWhy, type LastAction } from '../last-action';
import { inspectNodePods } from '../node-inspect';
import { recordsFor } from '../pod-netns';

export const command = 'pods';
export const describe = "this node's pods: meshed or why not, rules as planned or not, backend, last action";

export function builder(y: Argv) {
  return y
    .options({
      namespace: { alias: 'n', type: 'string', describe: 'only this namespace' },
      service: { type: 'string', describe: "NAMESPACE/SERVICE: only this node's pods behind that service (its selector); <TAB> completes it" },
      ...nodeOptions,
      ...excludeNamespacesOption,
      ...netnsLookupOptions,
      ...backendOption,
      ...outputOption,
    })
    .conflicts('service', 'namespace')
    .check((args) => {
      const ok = checkPodRef(args.service, '--service');
      return ok === true ? true : ok.replace('NAMESPACE/POD', 'NAMESPACE/SERVICE');
    })
    .example('$0 pods', 'every pod on this node')
    .example('$0 pods -n shop -o json', 'one namespace, as JSON')
    .example('$0 pods --service shop/cart', 'the pods behind service shop/cart that run here');
}

type Args = NodeArgs & { namespace?: string; service?: string; 'exclude-namespaces'?: string[]; 'proc-root': string; 'cri-socket': string; backend: BackendName; 'host-netns'?: string; output: OutputFormat };

export type RulesState = 'ok' | 'differ' | 'none' | 'unknown' | 'n/a';

export interface PodRow {
  namespace: string;
  name: string;
  uid: string | null;
  meshed: boolean;
  verdict: Finding['verdict'];
  reason: string;
  rules: RulesState;
  problems: string[];
  netns: string | null;
  backend: string | null;
  lastAction: LastAction | null;
}

function rulesState(f: Finding): RulesState {
  if (f.verdict === 'healthy') return 'ok';
  if (f.verdict === 'broken' && f.reason === NO_RULES_REASON) return 'none';
  if (f.verdict === 'broken') return f.problems?.length ? 'differ' : 'unknown';
  if (f.verdict === 'unknown') return 'unknown';
  return 'n/a';
}

export function textTable(podRows: readonly PodRow[], now = Date.now()): string {
  // Names, reasons and Events come from the API: printable before they are laid out.
  const rows = textSafe(podRows);
  const cells: Cell[][] = rows.map((r) => [
    `${r.namespace}/${r.name}`,
    r.verdict === 'invalid' ? { text: 'invalid', tone: 'bad' } : r.meshed ? { text: 'yes', tone: 'ok' } : { text: 'no', tone: 'dim' },
    r.reason,
    r.rules === 'ok' ? { text: 'ok', tone: 'ok' } : r.rules === 'none' ? { text: 'none', tone: 'bad' } : r.rules === 'differ' ? { text: `${r.problems.length} differ`, tone: 'bad' } : r.rules === 'unknown' ? { text: 'unknown', tone: 'warn' } : '-',
    r.backend ?? '-',
    r.lastAction ? `${r.lastAction.reason} ${ago(r.lastAction.at, now)}` : '-',
  ]);
  return table(cells, { headers: ['POD', 'MESHED', 'REASON', 'RULES', 'BACKEND', 'LAST ACTION'] });
}

export async function handler(args: Args): Promise<void> {
  await runCommand(args.output, async () => {
    const nodeName = args['node-name'];
    if (!nodeName) throw new MeshCniError('pods needs to know which node it is on', { hint: 'pass --node-name or set NODE_NAME' });
    const kube = await connectKube(args.kubeconfig);
    const serviceRef = args.service ? parsePodRef(args.service) : undefined;
    const service = serviceRef ? await getService(kube, serviceRef) : undefined;
    if (service && Object.keys(service.spec?.selector ?? {}).length === 0) {
      throw new MeshCniError(`service ${args.service} has no selector: no pods are behind it by label`, { hint: 'its endpoints are managed by hand: kubectl get endpoints' });
    }
    const namespace = serviceRef?.namespace ?? args.namespace;
    const [inspected, { events, warning }, chosen] = await Promise.all([
      inspectNodePods(kube, {
        nodeName,
        namespace,
        select: service ? (pod) => selectedBy(service, pod) : undefined,
        stateDir: args['state-dir'],
        procRoot: args['proc-root'],
        criSocket: args['cri-socket'],
        backend: args.backend,
        excludeNamespaces: excludedNamespaces(args),
      }),
      meshCniEventsOrWhy(kube, namespace),
      chooseBackend({ backend: args.backend, hostNetns: args['host-netns'] }),
    ]);
    const store = new AttachmentStore(args['state-dir']);
    const rows: PodRow[] = inspected.map(({ pod, finding: f }) => {
      const record = recordsFor(store, pod)[0];
      // An invalid pod is one the plugin would mesh but cannot: every ADD for it fails, so it has no rules of ours.
      const meshed = f.verdict !== 'not-meshed' && f.verdict !== 'skipped' && f.verdict !== 'invalid';
      return {
        namespace: f.namespace,
        name: f.name,
        uid: f.uid ?? null,
        meshed,
        verdict: f.verdict,
        reason: f.reason,
        rules: rulesState(f),
        problems: f.problems ?? [],
        netns: f.netns ?? null,
        // What ADD used when it programmed the pod; otherwise what would be used now.
        backend: meshed ? (record?.backend ?? chosen.backend.name) : null,
        lastAction: lastActionFor(pod, events, record) ?? null,
      };
    });
    const broken = rows.filter((r) => r.verdict === 'broken').length;
    const invalid = rows.filter((r) => r.verdict === 'invalid').length;
    if (warning) process.stderr.write(`mesh-cni: warning: ${printable(warning)}\n`);
    if (args.output === 'json') printJson({ node: nodeName, namespace: namespace ?? null, service: args.service ?? null, backend: { name: chosen.backend.name, reason: chosen.reason }, pods: rows, warnings: warning ? [warning] : [] });
    else {
      const where = args.service ? ` behind service ${args.service}` : args.namespace ? ` in namespace ${args.namespace}` : '';
      printText(rows.length === 0 ? `no pods on ${printable(nodeName)}${where}\n` : textTable(rows));
      if (broken > 0) printText(`\n${broken} broken: mesh-cni explain NAMESPACE/POD says why; mesh-cni repair fixes them\n`);
      if (invalid > 0) printText(`${broken > 0 ? '' : '\n'}${invalid} invalid: the pod's annotations are invalid, so every ADD for it fails (REASON names the annotation); fix the annotation and recreate the pod\n`);
    }
    // Both are problems on the node, as `status` counts them: exit 1.
    return broken > 0 || invalid > 0 ? EXIT.problem : EXIT.ok;
  });
}
