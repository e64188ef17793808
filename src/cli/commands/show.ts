/** `mesh-cni show`: the rules of ours a netns actually holds. */
import type { Argv } from 'yargs';
import { showRedirect, type BackendName } from '../../redirect/engine';
import { backendOption, checkPodOrNetns, podOrNetnsOptions, type PodOrNetnsArgs } from '../options';
import { resolveTarget } from '../pod-netns';
import { outputOption, printable, printJson, printText, runCommand, type OutputFormat } from '../output';

export const command = 'show';
export const describe = 'print the mesh-cni rules present in a network namespace';

export function builder(y: Argv) {
  return y
    .options({ ...podOrNetnsOptions, ...backendOption, ...outputOption })
    .check((a) => checkPodOrNetns(a))
    .example('$0 show --netns /var/run/netns/pod1', 'what is programmed there')
    .example('$0 show --pod shop/cart-7d9', "the rules in a pod's netns (see also: explain)");
}

export async function handler(args: PodOrNetnsArgs & { backend: BackendName; 'host-netns'?: string; output: OutputFormat }): Promise<void> {
  await runCommand(args.output, async () => {
    const { netns } = await resolveTarget(args);
    const shown = await showRedirect({ netns, backend: args.backend, hostNetns: args['host-netns'] });
    if (args.output === 'json') {
      printJson({ ...(args.pod ? { pod: args.pod } : {}), netns, backend: shown.backend, rules: shown.rules.map(({ family, table, chain, text, packets }) => ({ family, table, chain, rule: text, packets })) });
      return;
    }
    if (shown.rules.length === 0) {
      printText(`no mesh-cni rules in ${printable(netns)}\n`);
      return;
    }
    let heading = '';
    for (const r of shown.rules) {
      const h = `${r.family} ${r.table}`;
      if (h !== heading) printText(`${heading ? '\n' : ''}# ${(heading = h)}\n`);
      // nft keeps a counter on every rule: show it, it is how a person sees which rule traffic hits.
      const hits = r.packets === undefined ? '' : `  # ${r.packets} packets`;
      // A rule's text is what the netns holds (a comment can carry anything): printable.
      printText(shown.backend === 'nftables' ? `${printable(r.chain)}: ${printable(r.text)}${hits}\n` : `-A ${printable(r.chain)} ${printable(r.text)}\n`);
    }
  });
}
