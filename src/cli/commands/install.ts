/** `mesh-cni install`: one pass of the agent's installer (copy binaries, chain our entry into the CNI config). */
import type { Argv } from 'yargs';
import { install } from '../../installer';
import { backendOption, installOptions, installSettings, type InstallArgs } from '../options';
import { outputOption, printJson, printText, runCommand, textSafe, type OutputFormat } from '../output';

export const command = 'install';
export const describe = "install the plugin once: binaries into the CNI bin dir, our entry last in the node's primary CNI config";

export function builder(y: Argv) {
  return y
    .options({ ...installOptions, ...backendOption, ...outputOption })
    .example('$0 install --cni-bin-dir /opt/cni/bin --cni-conf-dir /etc/cni/net.d', 'on the node itself');
}

export async function handler(args: InstallArgs & { output: OutputFormat }): Promise<void> {
  await runCommand(args.output, async () => {
    const report = await install(installSettings({ ...args, kubernetes: false }));
    if (args.output === 'json') return printJson(report);
    // File names of the conf dir and the primary's words: printable.
    const safe = textSafe(report);
    for (const b of safe.binaries) printText(`${b.action.padEnd(9)} ${b.path}\n`);
    const c = safe.config;
    printText(c.action === 'waiting' ? `waiting   ${c.reason}\n` : c.action === 'held' ? `held      ${c.path ?? ''}\n` : `${c.action.padEnd(9)} ${c.path}${c.convertedFrom ? ` (converted from ${c.convertedFrom})` : ''}\n`);
    return report.status.ready ? 0 : 1;
  });
}
