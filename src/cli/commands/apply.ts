/** `mesh-cni apply`: program a netns with the rules for these annotations. */
import type { Argv } from 'yargs';
import { applyRedirect, type BackendName } from '../../redirect/engine';
import { configFromArgs, configOptions, backendOption, netnsOption, type ConfigArgs } from '../options';
import { outputOption, printJson, runCommand, type OutputFormat } from '../output';

export const command = 'apply';
export const describe = 'program a network namespace (IPv4, and IPv6 when it has a global IPv6 address)';

export function builder(y: Argv) {
  return y
    .options({ ...netnsOption, ...configOptions, ...backendOption, ...outputOption })
    .example('$0 apply --netns /var/run/netns/pod1', 'redirect with the defaults')
    .example('$0 apply --netns /proc/4242/ns/net -a traffic.sidecar.istio.io/excludeOutboundPorts=5432', 'with an exclusion');
}

export async function handler(args: ConfigArgs & { netns: string; backend: BackendName; 'host-netns'?: string; output: OutputFormat }): Promise<void> {
  await runCommand(args.output, async () => {
    const report = await applyRedirect({ netns: args.netns, config: configFromArgs(args), backend: args.backend, hostNetns: args['host-netns'] });
    if (args.output === 'json') printJson({ netns: args.netns, ...report });
    else process.stdout.write(`programmed ${report.rules} rules (${report.families.join(', ')}) in ${args.netns} with ${report.backend} in ${report.durationMs.toFixed(1)} ms\n`);
  });
}
