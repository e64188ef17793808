/** `mesh-cni uninstall`: take our entry and files out; the primary config ends as it was before install. */
import type { Argv } from 'yargs';
import { uninstall } from '../../installer';
import { backendOption, installOptions, installSettings, type InstallArgs } from '../options';
import { outputOption, printJson, printText, runCommand, textSafe, type OutputFormat } from '../output';

export const command = 'uninstall';
export const describe = "remove the plugin: our conflist entry (restoring the file's original bytes when no one else changed it), binaries, kubeconfig";

export function builder(y: Argv) {
  return y
    .options({ ...installOptions, ...backendOption, ...outputOption, 'dry-run': { type: 'boolean', default: false, describe: 'print what would change and change nothing' } })
    .example('$0 uninstall --dry-run --cni-bin-dir /opt/cni/bin --cni-conf-dir /etc/cni/net.d', 'see what would be undone');
}

export async function handler(args: InstallArgs & { output: OutputFormat; 'dry-run': boolean }): Promise<void> {
  await runCommand(args.output, async () => {
    const report = await uninstall(installSettings({ ...args, kubernetes: false }), { dryRun: args['dry-run'] });
    if (args.output === 'json') return printJson(report);
    const prefix = report.dryRun ? 'would ' : '';
    if (report.actions.length === 0) printText('nothing of ours is installed\n');
    // File names of the conf dir: printable.
    for (const a of textSafe(report.actions)) printText(`${prefix}${a.action} ${a.path}${a.detail ? `: ${a.detail}` : ''}\n`);
  });
}
