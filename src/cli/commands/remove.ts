/** `mesh-cni remove`: take every mesh-cni rule out of a netns. */
import type { Argv } from 'yargs';
import { removeRedirect, type BackendName } from '../../redirect/engine';
import { backendOption, checkPodOrNetns, podOrNetnsOptions, type PodOrNetnsArgs } from '../options';
import { outputOption, printable, printJson, printText, runCommand, type OutputFormat } from '../output';
import { resolveTarget } from '../pod-netns';

export const command = 'remove';
export const describe = 'remove every mesh-cni rule and chain from a network namespace (others are left alone)';

export function builder(y: Argv) {
  return y
    .options({ ...podOrNetnsOptions, ...backendOption, ...outputOption })
    .check((a) => checkPodOrNetns(a))
    .example('$0 remove --netns /var/run/netns/pod1', 'undo apply')
    .example('$0 remove --pod shop/cart-7d9', "take the rules out of a pod's netns (the reconciler puts them back unless its mode is off)");
}

export async function handler(args: PodOrNetnsArgs & { backend: BackendName; 'host-netns'?: string; output: OutputFormat }): Promise<void> {
  await runCommand(args.output, async () => {
    const { netns } = await resolveTarget(args);
    const { removed } = await removeRedirect({ netns, backend: args.backend, hostNetns: args['host-netns'] });
    if (args.output === 'json') printJson({ ...(args.pod ? { pod: args.pod } : {}), netns, removed });
    else printText(`removed ${removed} rules from ${printable(netns)}${args.pod ? ` (pod ${args.pod})` : ''}\n`);
  });
}
