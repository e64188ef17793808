/** `mesh-cni plan`: the rules a pod would get, printed and touched nowhere. */
import type { Argv } from 'yargs';
import { buildPlan, type Plan } from '../../redirect/plan';
import { OWNER_TAG_PREFIX, renderRestore, toIptablesLines, lineText } from '../../redirect/iptables/render';
import { renderNftScript, toNftRules } from '../../redirect/nftables/render';
import { chooseBackend, type BackendName } from '../../redirect/engine';
import type { Family } from '../../redirect/constants';
import { configFromArgs, configOptions, backendOption, excludeNamespacesOption, excludedNamespaces, nodeOptions, type ConfigArgs } from '../options';
import { connectKube, getPod } from '../kube-client';
import { podConfig } from '../pod-config';
import { checkPodRef, parsePodRef } from '../pod-ref';
import { outputOption, printJson, runCommand, type OutputFormat } from '../output';

export const command = 'plan';
export const describe = "print the rules a pod with these annotations would get (dry run; touches nothing)";

export function builder(y: Argv) {
  return y
    .options({
      ...configOptions,
      ...backendOption,
      ...outputOption,
      ipv6: { type: 'boolean', default: false, describe: 'also print the IPv6 rules' },
      pod: { type: 'string', describe: 'NAMESPACE/POD: the annotations and proxy ids from this pod in the API (needs --kubeconfig or a service account)' },
      kubeconfig: nodeOptions.kubeconfig,
      ...excludeNamespacesOption,
    })
    .check((a) => checkPodRef(a.pod, '--pod'))
    .check((a) => (a.pod !== undefined && (a.annotation.length > 0 || a['proxy-uid'] !== undefined || a['proxy-gid'] !== undefined) ? 'with --pod the annotations and proxy ids come from the pod; drop -a/--proxy-uid/--proxy-gid' : true))
    .example('$0 plan', 'the rules for a pod with only the sidecar injected')
    .example('$0 plan -a traffic.sidecar.istio.io/excludeOutboundIPRanges=10.0.0.0/8 --ipv6', 'an exclusion, both families')
    .example('$0 plan --backend nftables --ipv6', 'the nft script (one transaction, both families)')
    .example('$0 plan -a sidecar.istio.io/interceptionMode=TPROXY -o json', 'TPROXY rules as JSON')
    .example('$0 plan --pod shop/cart-7d9 --kubeconfig ~/.kube/config', "the rules a pod in the API gets");
}

type Args = ConfigArgs & { output: OutputFormat; ipv6: boolean; backend: BackendName; 'host-netns'?: string; pod?: string; kubeconfig?: string; 'exclude-namespaces'?: string[] };

function nftJson(plan: Plan, families: Family[]) {
  return {
    script: renderNftScript(plan, families),
    rules: toNftRules(plan, families).map((r) => ({ table: r.table, chain: r.chain, families: r.families, rule: r.text, purpose: r.rule.purpose })),
    links: families.flatMap((f) => plan[f].links),
  };
}

function iptablesJson(plan: Plan, families: Family[]) {
  return {
    families: families.map((family) => ({
      family,
      restore: renderRestore(plan[family].rules),
      rules: toIptablesLines(plan[family].rules).map((l) => ({ table: l.table, chain: l.chain, rule: lineText(l), purpose: l.rule.purpose })),
      links: plan[family].links,
    })),
  };
}

function iptablesText(plan: Plan, families: Family[], ipv6: boolean): string {
  let out = '';
  for (const family of families) {
    if (ipv6) out += `# ${family === 'ipv4' ? 'iptables-restore' : 'ip6tables-restore'} input\n`;
    out += renderRestore(plan[family].rules);
  }
  return out;
}

export async function handler(args: Args): Promise<void> {
  await runCommand(args.output, async () => {
    const config = args.pod ? podConfig(await getPod(await connectKube(args.kubeconfig), parsePodRef(args.pod)), excludedNamespaces(args)) : configFromArgs(args);
    const plan = buildPlan(config);
    const families: Family[] = args.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4'];
    const { backend, reason } = await chooseBackend({ backend: args.backend, hostNetns: args['host-netns'] });
    const nft = backend.name === 'nftables';
    if (args.output === 'json') {
      printJson({ ...(args.pod ? { pod: args.pod } : {}), backend: backend.name, backendReason: reason, mode: plan.config.mode, ...(nft ? nftJson(plan, families) : iptablesJson(plan, families)) });
      return;
    }
    if (args.pod) process.stdout.write(`# pod: ${args.pod}\n`);
    process.stdout.write(`# backend: ${backend.name} (${reason})\n`);
    if (plan.config.mode === 'NONE') {
      process.stdout.write('# interceptionMode NONE: no rules\n');
      return;
    }
    // The owner tag is the one difference from istio-iptables' text; say so where people compare the two.
    if (!nft) process.stdout.write(`# owner tag: rules in built-in chains carry -m comment --comment ${OWNER_TAG_PREFIX}<purpose>, so DEL and re-apply never touch another component's rules; Istio's text is the same without it\n`);
    process.stdout.write(nft ? renderNftScript(plan, families) : iptablesText(plan, families, args.ipv6));
  });
}
