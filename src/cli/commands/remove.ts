/** `mesh-cni remove`: take every mesh-cni rule out of a netns. */
import type { Argv } from 'yargs';
import { removeRedirect, type BackendName } from '../../redirect/engine';
import { backendOption, netnsOption } from '../options';
import { outputOption, printJson, runCommand, type OutputFormat } from '../output';

export const command = 'remove';
export const describe = 'remove every mesh-cni rule and chain from a network namespace (others are left alone)';

export function builder(y: Argv) {
  return y.options({ ...netnsOption, ...backendOption, ...outputOption }).example('$0 remove --netns /var/run/netns/pod1', 'undo apply');
}

export async function handler(args: { netns: string; backend: BackendName; 'host-netns'?: string; output: OutputFormat }): Promise<void> {
  await runCommand(args.output, async () => {
    const { removed } = await removeRedirect({ netns: args.netns, backend: args.backend, hostNetns: args['host-netns'] });
    if (args.output === 'json') printJson({ netns: args.netns, removed });
    else process.stdout.write(`removed ${removed} rules from ${args.netns}\n`);
  });
}
