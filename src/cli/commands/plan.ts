/** `mesh-cni plan`: the rules a pod would get, printed and touched nowhere. */
import type { Argv } from 'yargs';
import { buildPlan, type Plan } from '../../redirect/plan';
import { OWNER_TAG_PREFIX, renderRestore, toIptablesLines, lineText } from '../../redirect/iptables/render';
import { renderNftScript, toNftRules } from '../../redirect/nftables/render';
import { chooseBackend, type BackendName } from '../../redirect/engine';
import type { Family } from '../../redirect/constants';
import { ambientNodeFromArgs, checkHostProbe, configFromArgs, configOptions, backendOption, excludeNamespacesOption, excludedNamespaces, hostProbeOptions, nodeOptions, type ConfigArgs, type HostProbeArgs } from '../options';
import { parseAnnotationArgs } from '../../redirect/config';
import { ambientConfigFromAnnotations, type AmbientConfig } from '../../redirect/ambient/config';
import { buildAmbientPlan } from '../../redirect/ambient/plan';
import type { AnyPlan } from '../../redirect/plan';
import { connectKube, getPod } from '../kube-client';
import { podConfig } from '../pod-config';
import { checkPodRef, parsePodRef } from '../pod-ref';
import { outputOption, printJson, printText, runCommand, type OutputFormat } from '../output';

export const command = 'plan';
export const describe = "print the rules a pod with these annotations would get, sidecar or ambient (dry run; touches nothing)";

export function builder(y: Argv) {
  return y
    .options({
      ...configOptions,
      // No default here: a sidecar's DNS capture is off unless its proxy asks, ambient's is on unless the node says otherwise.
      'dns-capture': { type: 'boolean', describe: "capture DNS (sidecar: to the agent on 15053, Istio's ISTIO_META_DNS_CAPTURE, default off; ambient: to ztunnel on 15053, Istio's AMBIENT_DNS_CAPTURE, default on)" },
      dataplane: { choices: ['sidecar', 'ambient'] as const, default: 'sidecar' as const, describe: "whose rules: the sidecar's (to Envoy in the pod) or ambient's (to the node's ztunnel, Istio's in-pod rules)" },
      ...hostProbeOptions,
      ...backendOption,
      ...outputOption,
      ipv6: { type: 'boolean', describe: "also print the IPv6 rules (ambient: Istio's AMBIENT_IPV6, default on)" },
      pod: { type: 'string', describe: 'NAMESPACE/POD: the annotations and proxy ids from this pod in the API (needs --kubeconfig or a service account)' },
      kubeconfig: nodeOptions.kubeconfig,
      ...excludeNamespacesOption,
    })
    .check((a) => checkPodRef(a.pod, '--pod'))
    .check((a) => checkHostProbe(a))
    .check((a) => (a.dataplane === 'ambient' && (a['proxy-uid'] !== undefined || a['proxy-gid'] !== undefined || a['invalid-drop']) ? 'ambient has no proxy in the pod: --proxy-uid, --proxy-gid and --invalid-drop are sidecar options' : true))
    .check((a) => (a.pod !== undefined && (a.annotation.length > 0 || a['proxy-uid'] !== undefined || a['proxy-gid'] !== undefined) ? 'with --pod the annotations and proxy ids come from the pod; drop -a/--proxy-uid/--proxy-gid' : true))
    .example('$0 plan', 'the rules for a pod with only the sidecar injected')
    .example('$0 plan -a traffic.sidecar.istio.io/excludeOutboundIPRanges=10.0.0.0/8 --ipv6', 'an exclusion, both families')
    .example('$0 plan --backend nftables --ipv6', 'the nft script (one transaction, both families)')
    .example('$0 plan -a sidecar.istio.io/interceptionMode=TPROXY -o json', 'TPROXY rules as JSON')
    .example('$0 plan --pod shop/cart-7d9 --kubeconfig ~/.kube/config', "the rules a pod in the API gets")
    .example('$0 plan --dataplane ambient', "Istio's in-pod rules for an ambient pod (both families, DNS captured)")
    .example('$0 plan --dataplane ambient -a ambient.istio.io/bypass-inbound-capture=true --no-dns-capture --no-ipv6', 'an ambient ingress pod on a node without DNS capture');
}

type Args = Omit<ConfigArgs, 'dns-capture'> &
  HostProbeArgs & { 'dns-capture'?: boolean; dataplane: 'sidecar' | 'ambient'; output: OutputFormat; ipv6?: boolean; backend: BackendName; 'host-netns'?: string; pod?: string; kubeconfig?: string; 'exclude-namespaces'?: string[] };

function nftJson(plan: AnyPlan, families: Family[]) {
  return {
    script: renderNftScript(plan, families),
    rules: toNftRules(plan, families).map((r) => ({ table: r.table, chain: r.chain, families: r.families, rule: r.text, purpose: r.rule.purpose })),
    links: families.flatMap((f) => plan[f].links),
  };
}

function iptablesJson(plan: AnyPlan, families: Family[]) {
  return {
    families: families.map((family) => ({
      family,
      restore: renderRestore(plan[family].rules),
      rules: toIptablesLines(plan[family].rules).map((l) => ({ table: l.table, chain: l.chain, rule: lineText(l), purpose: l.rule.purpose })),
      links: plan[family].links,
    })),
  };
}

function iptablesText(plan: AnyPlan, families: Family[], ipv6: boolean): string {
  let out = '';
  for (const family of families) {
    if (ipv6) out += `# ${family === 'ipv4' ? 'iptables-restore' : 'ip6tables-restore'} input\n`;
    out += renderRestore(plan[family].rules);
  }
  return out;
}

/** The ambient plan for the annotations given (or the pod's), with the node's settings from the flags. */
async function ambientPlan(args: Args): Promise<Plan<AmbientConfig>> {
  const annotations = args.pod ? ((await getPod(await connectKube(args.kubeconfig), parsePodRef(args.pod))).metadata?.annotations ?? {}) : parseAnnotationArgs(args.annotation);
  return buildAmbientPlan(ambientConfigFromAnnotations(annotations, ambientNodeFromArgs(args)));
}

async function printAmbient(args: Args): Promise<void> {
  const plan = await ambientPlan(args);
  const families: Family[] = plan.config.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4'];
  const { backend, reason } = await chooseBackend({ backend: args.backend, hostNetns: args['host-netns'] });
  const nft = backend.name === 'nftables';
  const c = plan.config;
  const settings = { dataplane: 'ambient', dnsCapture: c.dnsCapture, ingressMode: c.ingressMode, virtualInterfaces: c.virtualInterfaces, hostProbeSnat: c.hostProbeSnat, from: c.sources };
  if (args.output === 'json') {
    printJson({ ...(args.pod ? { pod: args.pod } : {}), backend: backend.name, backendReason: reason, ...settings, ...(nft ? nftJson(plan, families) : iptablesJson(plan, families)) });
    return;
  }
  if (args.pod) printText(`# pod: ${args.pod}\n`);
  printText(`# dataplane: ambient (the node's ztunnel; these are Istio's in-pod rules, cni/pkg/iptables and cni/pkg/nftables)\n`);
  printText(`# DNS capture ${c.dnsCapture ? 'on' : 'off'}, inbound ${c.ingressMode ? 'not captured (bypass-inbound-capture)' : 'to ztunnel'}, kubelet probes from ${c.hostProbeSnat.ipv4}${families.includes('ipv6') ? ` and ${c.hostProbeSnat.ipv6}` : ''}${c.sources.length ? `; from ${c.sources.join(', ')}` : ''}\n`);
  printText(`# backend: ${backend.name} (${reason})\n`);
  for (const f of families) {
    const rule = plan[f].links.find((l) => l.kind === 'rule');
    if (rule?.kind === 'rule') printText(`# routing (${f}): ip rule fwmark 0x${rule.fwmark.toString(16)}/0x${(rule.mask ?? 0).toString(16)} pref ${rule.priority} lookup ${rule.table}; ip route local default dev lo table ${rule.table}\n`);
  }
  if (!nft) printText(`# owner tag: rules in built-in chains carry -m comment --comment ${OWNER_TAG_PREFIX}<purpose>; Istio's text is the same without it\n`);
  printText(nft ? renderNftScript(plan, families) : iptablesText(plan, families, families.length > 1));
}

export async function handler(args: Args): Promise<void> {
  await runCommand(args.output, async () => {
    if (args.dataplane === 'ambient') return printAmbient(args);
    const config = args.pod ? podConfig(await getPod(await connectKube(args.kubeconfig), parsePodRef(args.pod)), excludedNamespaces(args)) : configFromArgs({ ...args, 'dns-capture': args['dns-capture'] ?? false });
    const plan = buildPlan(config);
    const families: Family[] = args.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4'];
    const { backend, reason } = await chooseBackend({ backend: args.backend, hostNetns: args['host-netns'] });
    const nft = backend.name === 'nftables';
    if (args.output === 'json') {
      printJson({ ...(args.pod ? { pod: args.pod } : {}), backend: backend.name, backendReason: reason, mode: plan.config.mode, ...(nft ? nftJson(plan, families) : iptablesJson(plan, families)) });
      return;
    }
    if (args.pod) printText(`# pod: ${args.pod}\n`);
    printText(`# backend: ${backend.name} (${reason})\n`);
    if (plan.config.mode === 'NONE') {
      printText('# interceptionMode NONE: no rules\n');
      return;
    }
    // The owner tag is the one difference from istio-iptables' text; say so where people compare the two.
    if (!nft) printText(`# owner tag: rules in built-in chains carry -m comment --comment ${OWNER_TAG_PREFIX}<purpose>, so DEL and re-apply never touch another component's rules; Istio's text is the same without it\n`);
    printText(nft ? renderNftScript(plan, families) : iptablesText(plan, families, args.ipv6 === true));
  });
}
