/** `mesh-cni plan`: the rules a pod would get, printed and touched nowhere. */
import type { Argv } from 'yargs';
import { buildPlan } from '../../redirect/plan';
import { renderRestore, toIptablesLines, lineText } from '../../redirect/render/iptables';
import type { Family } from '../../redirect/constants';
import { configFromArgs, configOptions, backendOption, type ConfigArgs } from '../options';
import { outputOption, printJson, runCommand, type OutputFormat } from '../output';

export const command = 'plan';
export const describe = "print the rules a pod with these annotations would get (dry run; touches nothing)";

export function builder(y: Argv) {
  return y
    .options({ ...configOptions, ...backendOption, ...outputOption, ipv6: { type: 'boolean', default: false, describe: 'also print the IPv6 rules' } })
    .example('$0 plan', 'the rules for a pod with only the sidecar injected')
    .example('$0 plan -a traffic.sidecar.istio.io/excludeOutboundIPRanges=10.0.0.0/8 --ipv6', 'an exclusion, both families')
    .example('$0 plan -a sidecar.istio.io/interceptionMode=TPROXY -o json', 'TPROXY rules as JSON');
}

export async function handler(args: ConfigArgs & { output: OutputFormat; ipv6: boolean }): Promise<void> {
  await runCommand(args.output, async () => {
    const plan = buildPlan(configFromArgs(args));
    const families: Family[] = args.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4'];
    if (args.output === 'json') {
      printJson({
        backend: 'iptables',
        mode: plan.config.mode,
        families: families.map((family) => ({
          family,
          restore: renderRestore(plan[family].rules),
          rules: toIptablesLines(plan[family].rules).map((l) => ({ table: l.table, chain: l.chain, rule: lineText(l), purpose: l.rule.purpose })),
          links: plan[family].links,
        })),
      });
      return;
    }
    if (plan.config.mode === 'NONE') {
      process.stdout.write('# interceptionMode NONE: no rules\n');
      return;
    }
    for (const family of families) {
      if (args.ipv6) process.stdout.write(`# ${family === 'ipv4' ? 'iptables-restore' : 'ip6tables-restore'} input\n`);
      process.stdout.write(renderRestore(plan[family].rules));
    }
  });
}
