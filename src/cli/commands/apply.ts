/** `mesh-cni apply`: program a netns with the rules for these annotations, or for a pod as the plugin would. */
import type { Argv } from 'yargs';
import { applyRedirect, type BackendName } from '../../redirect/engine';
import {
  backendOption,
  checkPodOrNetns,
  configFromArgs,
  configOptions,
  excludeNamespacesOption, excludedNamespaces,
  podOrNetnsOptions,
  type ConfigArgs,
  type PodOrNetnsArgs,
} from '../options';
import { outputOption, printable, printJson, printText, runCommand, type OutputFormat } from '../output';
import { podConfig } from '../pod-config';
import { resolveTarget } from '../pod-netns';

export const command = 'apply';
export const describe = 'program a network namespace (IPv4, and IPv6 when it has a global IPv6 address)';

export function builder(y: Argv) {
  return y
    .options({ ...podOrNetnsOptions, ...configOptions, ...excludeNamespacesOption, ...backendOption, ...outputOption })
    .check((a) => checkPodOrNetns(a))
    .check((a) => (a.pod !== undefined && (a.annotation.length > 0 || a['proxy-uid'] !== undefined || a['proxy-gid'] !== undefined) ? 'with --pod the annotations and proxy ids come from the pod; drop -a/--proxy-uid/--proxy-gid' : true))
    .example('$0 apply --netns /var/run/netns/pod1', 'redirect with the defaults')
    .example('$0 apply --netns /proc/4242/ns/net -a traffic.sidecar.istio.io/excludeOutboundPorts=5432', 'with an exclusion')
    .example('$0 apply --pod shop/cart-7d9 --kubeconfig /etc/kubernetes/admin.conf', "a pod's rules from its annotations, into its netns");
}

type Args = ConfigArgs & PodOrNetnsArgs & { backend: BackendName; 'host-netns'?: string; 'exclude-namespaces'?: string[]; output: OutputFormat };

export async function handler(args: Args): Promise<void> {
  await runCommand(args.output, async () => {
    const target = await resolveTarget(args);
    const config = target.pod ? podConfig(target.pod, excludedNamespaces(args)) : configFromArgs(args);
    const report = await applyRedirect({ netns: target.netns, config, backend: args.backend, hostNetns: args['host-netns'] });
    if (args.output === 'json') printJson({ ...(args.pod ? { pod: args.pod } : {}), netns: target.netns, ...report });
    else printText(`programmed ${report.rules} rules (${report.families.join(', ')}) in ${printable(target.netns)}${args.pod ? ` (pod ${args.pod})` : ''} with ${report.backend}${report.via ? ` via ${report.via}` : ''} in ${report.durationMs.toFixed(1)} ms\n`);
  });
}
