/**
 * The node's side of ambient: kubelet's health probes must reach an ambient pod's app, not ztunnel. Inside
 * the pod, kubelet's probes and kube-proxy's forwarded traffic would carry the same source (the node), so on
 * the node, probes to an ambient pod's address are SNATed to a fixed link-local address (169.254.7.127,
 * fd16:9254:7127:1337:ffff:ffff:ffff:ffff), which the in-pod rules accept as they are (plan.ts). As Istio does
 * (cni/pkg/iptables AppendHostRules, cni/pkg/nftables CreateHostRulesForHealthChecks):
 *
 * - iptables: `-t nat -I POSTROUTING 1 -j CHAIN` and in it `-m owner --socket-exists -p tcp -m set
 *   --match-set SET dst -j SNAT --to-source ADDR` per family, SET an ipset (`hash:ip`, one per family) of the
 *   ambient pods' addresses, each entry commented with its pod's uid;
 * - nftables: the same in a table of its own, with nft sets; nft has no --socket-exists, so the rule matches
 *   the kubelet's uid (`meta skuid`), found as Istio finds it (the process named kubelet, kubelite or k3s).
 *
 * Istio's names are ISTIO_POSTRT and istio-inpod-probes-v4/-v6; ours are MESH_CNI_PROBE, mesh-cni-probes-v4/-v6
 * and table mesh-cni-host, so istio-cni on the same node (a migration) and mesh-cni never take each other's
 * rules for their own. Every rule of ours in a built-in chain carries our owner tag; nothing else on the node
 * is read as ours, and removal (the agent's uninstall) takes out exactly these, the sets included.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CommandFailedError, MeshCniError } from '../../errors';
import { run } from '../../netns';
import { CHAINS, type Family } from '../constants';
import { renderRestore } from '../iptables/render';
import { parseSave } from '../iptables/save';
import { nftProgram } from '../nftables/backend';
import { nftDeleteTables, renderNftScript, type NftSet } from '../nftables/render';
import type { FamilyPlan, Plan, Rule } from '../plan';

export const PROBE_SETS: Record<Family, string> = { ipv4: 'mesh-cni-probes-v4', ipv6: 'mesh-cni-probes-v6' };
export const HOST_NFT_TABLE = 'mesh-cni-host';
const CHAIN = CHAINS.hostProbe;

export interface HostProbeSettings {
  snat: Record<Family, string>;
  /** IPv6 too (AMBIENT_IPV6) */
  ipv6: boolean;
  /** nftables only: whose sockets' packets are probes (the kubelet's uid) */
  kubeletUid: number;
}

/** How the node's rules are programmed: an iptables flavour with ipset, or native nftables. */
export type HostVia = { kind: 'iptables'; flavour: 'default' | 'nft' | 'legacy' } | { kind: 'nftables' };

function familyPlan(s: HostProbeSettings, family: Family): FamilyPlan {
  const rules: Rule[] = [
    { table: 'nat', chain: 'POSTROUTING', insertAt: 1, matches: [], target: { kind: 'jump', chain: CHAIN }, purpose: 'kubelet-probe-snat' },
    {
      table: 'nat',
      chain: CHAIN,
      matches: [{ kind: 'localSocket', nftUid: s.kubeletUid }, { kind: 'protocol', protocol: 'tcp' }, { kind: 'inSet', set: PROBE_SETS[family] }],
      target: { kind: 'snat', to: s.snat[family] },
      purpose: 'kubelet-probe-snat',
    },
  ];
  return { family, rules, links: [] };
}

export function hostFamilies(s: HostProbeSettings): Family[] {
  return s.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4'];
}

export function buildHostPlan(s: HostProbeSettings): Plan<HostProbeSettings> {
  return { config: s, ipv4: familyPlan(s, 'ipv4'), ipv6: s.ipv6 ? familyPlan(s, 'ipv6') : { family: 'ipv6', rules: [], links: [] } };
}

const familyOf = (address: string): Family => (address.includes(':') ? 'ipv6' : 'ipv4');

/** A pod uid as it may go into a set comment (Kubernetes uids are lower-case hex and dashes). */
function comment(uid: string): string {
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(uid)) throw new MeshCniError(`pod uid ${JSON.stringify(uid)} cannot be a set comment`);
  return uid;
}

function iptablesProgram(family: Family, flavour: 'default' | 'nft' | 'legacy', tool: 'restore' | 'save'): string {
  const base = family === 'ipv4' ? 'iptables' : 'ip6tables';
  return flavour === 'default' ? `${base}-${tool}` : `${base}-${flavour}-${tool}`;
}

async function must(netns: string | undefined, program: string, args: string[], input?: string, packageHint?: string): Promise<string> {
  const r = await run(netns, program, args, { input, timeoutMs: 30_000, packageHint });
  if (r.code !== 0) throw new CommandFailedError(program, r.code, r.stderr, 'the node\'s kubelet-probe rules were not changed');
  return r.stdout;
}

/** Our rules in a saved nat table: the tagged POSTROUTING jump(s) and whether our chain exists. */
function ourNat(saved: string): { jumps: string[]; chain: boolean } {
  const state = parseSave(saved);
  const jumps = state.rules.filter((r) => r.table === 'nat' && r.chain === 'POSTROUTING' && new RegExp(`(^|\\s)-j ${CHAIN}$`).test(r.spec) && /--comment "?mesh-cni\//.test(r.spec)).map((r) => r.spec);
  return { jumps, chain: state.chains.get('nat')?.has(CHAIN) ?? false };
}

/** The ipsets' content as `ipset restore` input: created if absent, emptied, filled (one transaction per set). */
function ipsetRestore(families: Family[], addresses: ReadonlyMap<string, string>): string {
  let out = '';
  for (const family of families) {
    const set = PROBE_SETS[family];
    out += `create ${set} hash:ip family ${family === 'ipv4' ? 'inet' : 'inet6'} comment -exist\nflush ${set}\n`;
    for (const [address, uid] of addresses) if (familyOf(address) === family) out += `add ${set} ${address} comment "${comment(uid)}" -exist\n`;
  }
  return out;
}

function nftSets(families: Family[], addresses: ReadonlyMap<string, string>): NftSet[] {
  return families.map((family) => ({
    table: 'nat',
    name: PROBE_SETS[family],
    family,
    elements: [...addresses].filter(([a]) => familyOf(a) === family).map(([address, uid]) => ({ address, comment: comment(uid) })),
  }));
}

/**
 * Programs the node's probe rules in `netns` (the node's; undefined: this process's own), replacing ours and
 * filling the sets with `addresses` (address → pod uid). iptables: the sets first (the rules name them), then
 * one restore per family that deletes our previous jump, empties our chain and writes both again.
 */
export async function installHostProbe(netns: string | undefined, via: HostVia, s: HostProbeSettings, addresses: ReadonlyMap<string, string>): Promise<void> {
  const plan = buildHostPlan(s);
  const families = hostFamilies(s);
  if (via.kind === 'nftables') {
    const script = renderNftScript(plan, families, { tables: { nat: HOST_NFT_TABLE }, sets: nftSets(families, addresses) });
    await must(netns, nftProgram(), ['-f', '-'], script, 'nftables');
    return;
  }
  await must(netns, 'ipset', ['restore'], ipsetRestore(families, addresses), 'ipset');
  for (const family of families) {
    const ours = ourNat(await must(netns, iptablesProgram(family, via.flavour, 'save'), ['-t', 'nat'], undefined, 'iptables'));
    const before = new Map([['nat' as const, ours.jumps.map((spec) => `-D POSTROUTING ${spec}`)]]);
    await must(netns, iptablesProgram(family, via.flavour, 'restore'), ['--noflush'], renderRestore(plan[family].rules, { replace: { before } }), 'iptables');
  }
}

/** Takes out every rule, chain, table and set of ours from the node; what is already gone is fine. */
export async function removeHostProbe(netns: string | undefined, via: HostVia): Promise<void> {
  if (via.kind === 'nftables') {
    await must(netns, nftProgram(), ['-f', '-'], nftDeleteTables({ nat: HOST_NFT_TABLE }), 'nftables');
    return;
  }
  for (const family of ['ipv4', 'ipv6'] as Family[]) {
    const saved = await run(netns, iptablesProgram(family, via.flavour, 'save'), ['-t', 'nat'], { timeoutMs: 30_000, packageHint: 'iptables' });
    if (saved.code !== 0) continue; // no such table in this family: nothing of ours either
    const ours = ourNat(saved.stdout);
    const lines = [...ours.jumps.map((spec) => `-D POSTROUTING ${spec}`), ...(ours.chain ? [`-F ${CHAIN}`, `-X ${CHAIN}`] : [])];
    if (lines.length > 0) await must(netns, iptablesProgram(family, via.flavour, 'restore'), ['--noflush'], `*nat\n${lines.join('\n')}\nCOMMIT\n`, 'iptables');
  }
  for (const set of Object.values(PROBE_SETS)) {
    const r = await run(netns, 'ipset', ['destroy', set], { timeoutMs: 30_000, packageHint: 'ipset' });
    if (r.code !== 0 && !/does not exist/.test(r.stderr)) throw new CommandFailedError('ipset', r.code, r.stderr, 'the node\'s kubelet-probe sets were not removed');
  }
}

/** One pod's addresses into the sets (replacing another pod's entry for the same address: the newer pod owns it). */
export async function addProbeAddresses(netns: string | undefined, via: HostVia, ipv6: boolean, uid: string, addresses: readonly string[]): Promise<void> {
  const wanted = addresses.filter((a) => ipv6 || familyOf(a) === 'ipv4');
  if (wanted.length === 0) return;
  if (via.kind === 'nftables') {
    const lines = wanted.map((a) => `add element inet ${HOST_NFT_TABLE} ${PROBE_SETS[familyOf(a)]} { ${a} comment "${comment(uid)}" }`);
    await must(netns, nftProgram(), ['-f', '-'], `${lines.join('\n')}\n`, 'nftables');
    return;
  }
  await must(netns, 'ipset', ['restore'], wanted.map((a) => `add ${PROBE_SETS[familyOf(a)]} ${a} comment "${comment(uid)}" -exist\n`).join(''), 'ipset');
}

/** Addresses out of the sets (the caller removes only those its pod still owns). */
export async function removeProbeAddresses(netns: string | undefined, via: HostVia, addresses: readonly string[]): Promise<void> {
  for (const a of addresses) {
    const set = PROBE_SETS[familyOf(a)];
    const r =
      via.kind === 'nftables'
        ? await run(netns, nftProgram(), ['delete', 'element', 'inet', HOST_NFT_TABLE, set, `{ ${a} }`], { timeoutMs: 30_000, packageHint: 'nftables' })
        : await run(netns, 'ipset', ['del', '-exist', set, a], { timeoutMs: 30_000, packageHint: 'ipset' });
    // Absent (already gone, or the family is off): nothing to remove.
    if (r.code !== 0 && !/No such file|does not exist|not in set|Could not process rule/i.test(r.stderr)) throw new CommandFailedError(via.kind === 'nftables' ? 'nft' : 'ipset', r.code, r.stderr);
  }
}

/**
 * The kubelet's uid, found as Istio finds it (cni/pkg/nftables/kubeletuid_linux.go): the first process named
 * kubelet or kubelite with "kubelet" in its command line, or k3s. Undefined when there is none.
 */
export function findKubeletUid(procRoot = '/proc'): number | undefined {
  let pids: string[];
  try {
    pids = fs.readdirSync(procRoot).filter((d) => /^\d+$/.test(d));
  } catch {
    return undefined;
  }
  for (const name of ['kubelet', 'kubelite', 'k3s']) {
    for (const pid of pids) {
      try {
        if (fs.readFileSync(path.join(procRoot, pid, 'comm'), 'utf8').trim() !== name) continue;
        if (name !== 'k3s' && !fs.readFileSync(path.join(procRoot, pid, 'cmdline'), 'utf8').toLowerCase().includes('kubelet')) continue;
        const uid = /^Uid:\s+(\d+)/m.exec(fs.readFileSync(path.join(procRoot, pid, 'status'), 'utf8'))?.[1];
        if (uid !== undefined) return Number(uid);
      } catch {
        // the process went away
      }
    }
  }
  return undefined;
}
