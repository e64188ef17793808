/** `mesh-cni repair`: one reconciler pass from the command line: what it found on this node, and what it did. */
import type { Argv } from 'yargs';
import { MeshCniError } from '../../errors';
import { AttachmentStore } from '../../state/attachments';
import { Reconciler, type Finding } from '../../repair/reconciler';
import { excludeNamespacesOption, nodeOptions, repairOptions, repairSettings, type NodeArgs, type RepairArgs } from '../options';
import { outputOption, printable, printJson, printText, runCommand, table, textSafe, EXIT, type Cell, type OutputFormat, type Tone } from '../output';

export const command = 'repair';
export const describe = "check every meshed pod on this node and repair (or label, or delete) those whose rules are missing or wrong";

export function builder(y: Argv) {
  return y
    .options({
      ...repairOptions,
      ...outputOption,
      ...excludeNamespacesOption,
      'dry-run': { type: 'boolean', default: false, describe: 'report what would be done, do nothing' },
      ...nodeOptions,
    })
    .example('$0 repair --dry-run', 'what is broken on this node')
    .example('$0 repair --repair-mode label -o json', 'label broken pods, JSON report');
}

type Args = RepairArgs & NodeArgs & { output: OutputFormat; 'dry-run': boolean };

const VERDICT_TONE: Partial<Record<Finding['verdict'], Tone>> = { healthy: 'ok', broken: 'bad', unknown: 'warn', 'not-meshed': 'dim', invalid: 'bad' };

function row(f: Finding): Cell[] {
  const action = f.action ?? '-';
  const tone: Tone | undefined = ['repaired', 'labeled', 'deleted'].includes(action) ? 'ok' : action.startsWith('failed') || action === 'rate-limited' ? 'bad' : undefined;
  return [`${f.namespace}/${f.name}`, { text: f.verdict, tone: VERDICT_TONE[f.verdict] }, { text: action, tone }, f.reason];
}

export async function handler(args: Args): Promise<void> {
  await runCommand(args.output, async () => {
    const nodeName = args['node-name'];
    if (!nodeName) throw new MeshCniError('repair needs to know which node it is on', { hint: 'pass --node-name or set NODE_NAME' });
    const { connectKube } = await import('../kube-client');
    const { repairDeps } = await import('../../repair/wiring');
    const { listNodePods } = await import('../../kube/node-pods');
    const k8s = await import('@kubernetes/client-node');
    const { kubeConfig } = await connectKube(args.kubeconfig);
    const pods = await listNodePods(kubeConfig.makeApiClient(k8s.CoreV1Api), nodeName);
    const settings = repairSettings(args);
    const deps = await repairDeps({
      kubeConfig,
      nodeName,
      pods: () => pods,
      attachments: new AttachmentStore(args['state-dir']),
      procRoot: settings.procRoot,
      criSocket: settings.criSocket,
      onLocatorError: (err) => process.stderr.write(`mesh-cni repair: ${printable(err.message)}; looking in /proc instead\n`),
      backend: settings.backend,
    });
    const findings = await new Reconciler({ ...settings, dryRun: args['dry-run'] }, deps).pass().finally(() => deps.close());
    const broken = findings.filter((f) => f.verdict === 'broken');
    if (args.output === 'json') printJson({ node: nodeName, mode: settings.mode, dryRun: args['dry-run'], findings });
    else {
      printText(table(textSafe(findings).map(row), { headers: ['POD', 'VERDICT', 'ACTION', 'REASON'] }));
      printText(`\n${findings.length} pods on ${printable(nodeName)}: ${broken.length} broken\n`);
    }
    const unresolved = broken.filter((f) => !['repaired', 'labeled', 'deleted'].includes(f.action ?? ''));
    return unresolved.length > 0 ? EXIT.problem : EXIT.ok;
  });
}
