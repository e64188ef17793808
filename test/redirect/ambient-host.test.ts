/**
 * The node's kubelet-probe SNAT for ambient pods, with "the node" a network namespace this test made (never
 * the host's): a pod behind it with ambient's in-pod rules and ztunnel's ports listened on, and an outside
 * netns routed through the node, standing in for traffic kube-proxy forwards. A connection from a socket on
 * the node (kubelet's probe) reaches the app from the probe address; forwarded traffic keeps its source and
 * goes to ztunnel. Another component's rules, chains, ipset and nft table on the node survive install and
 * removal unchanged. Each way the node's rules can be programmed, both families. Plus the golden: the rules
 * are Istio's hostprobe rules with our chain and set names.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ambientConfigFromAnnotations, DEFAULT_AMBIENT_NODE, DEFAULT_HOST_PROBE_SNAT_IPV4, DEFAULT_HOST_PROBE_SNAT_IPV6 } from '../../src/redirect/ambient/config';
import { applyAmbient } from '../../src/redirect/ambient/apply';
import { addProbeAddresses, buildHostPlan, installHostProbe, removeHostProbe, removeProbeAddresses, type HostProbeSettings, type HostVia } from '../../src/redirect/ambient/host';
import { renderRestore, stripOwnerTags } from '../../src/redirect/iptables/render';
import { renderNftScript } from '../../src/redirect/nftables/render';
import { nftProgram } from '../../src/redirect/nftables/backend';
import { createNetns, createPodPeer, inNetns, netnsPath, sh, tryInNetns, type PodPeer } from '../support/netns';
import { connect, listen, type Landing } from '../support/traffic';
import { requireIpset, requireKernelTools, requireNft } from '../support/require';
import { ZTUNNEL_MARK } from '../support/ztunnel';
import type { Family } from '../../src/redirect/constants';

const GOLDENS = path.resolve(__dirname, '../../../test/golden/istio/ambient');
const SETTINGS: HostProbeSettings = { snat: { ipv4: DEFAULT_HOST_PROBE_SNAT_IPV4, ipv6: DEFAULT_HOST_PROBE_SNAT_IPV6 }, ipv6: true, kubeletUid: 0 };

test('golden: the node\'s rules are Istio\'s hostprobe rules, with our chain and set names', (t) => {
  for (const ipv6 of [false, true]) {
    const plan = buildHostPlan({ ...SETTINGS, ipv6 });
    const ours = ['iptables-save', 'ip6tables-save', stripOwnerTags(renderRestore(plan.ipv4.rules)).trimEnd(), ...(ipv6 ? [stripOwnerTags(renderRestore(plan.ipv6.rules)).trimEnd()] : [])].join('\n');
    const istio = fs
      .readFileSync(path.join(GOLDENS, 'iptables', `hostprobe${ipv6 ? '_ipv6' : ''}.golden`), 'utf8')
      .replace(/ISTIO_POSTRT/g, 'MESH_CNI_PROBE')
      .replace(/istio-inpod-probes-/g, 'mesh-cni-probes-');
    t.is(ours, istio);
  }
  const nft = renderNftScript(buildHostPlan({ ...SETTINGS, kubeletUid: 1000 }), ['ipv4', 'ipv6'], { tables: { nat: 'mesh-cni-host' } });
  t.regex(nft, /meta skuid 1000 meta l4proto tcp ip daddr @mesh-cni-probes-v4 counter snat ip to 169\.254\.7\.127/);
  t.regex(nft, /ip6 daddr @mesh-cni-probes-v6 counter snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff/);
});

interface Node {
  pair: PodPeer;
  outside: string;
}

/** pod ← node ← outside: the node forwards between the two and owns nothing of the probe addresses. */
async function topology(t: ExecutionContext): Promise<Node> {
  requireKernelTools(t);
  requireIpset(t);
  const pair = createPodPeer(t);
  const outside = createNetns(t, 'outside');
  sh('ip', ['link', 'add', 'eth0', 'netns', outside, 'type', 'veth', 'peer', 'name', 'vout', 'netns', pair.peer]);
  sh('ip', ['-n', outside, 'addr', 'add', '10.78.0.2/24', 'dev', 'eth0']);
  sh('ip', ['-n', outside, 'addr', 'add', 'fd78::2/64', 'dev', 'eth0', 'nodad']);
  sh('ip', ['-n', pair.peer, 'addr', 'add', '10.78.0.1/24', 'dev', 'vout']);
  sh('ip', ['-n', pair.peer, 'addr', 'add', 'fd78::1/64', 'dev', 'vout', 'nodad']);
  for (const [ns, dev] of [[outside, 'eth0'], [pair.peer, 'vout']]) sh('ip', ['-n', ns!, 'link', 'set', dev!, 'up']);
  sh('ip', ['-n', outside, 'route', 'add', 'default', 'via', '10.78.0.1']);
  sh('ip', ['-n', outside, '-6', 'route', 'add', 'default', 'via', 'fd78::1']);
  inNetns(pair.peer, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  inNetns(pair.peer, 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1']);
  // IPv6 link-local addresses finish duplicate address detection before the node can answer for NATed replies.
  await settled([pair.pod, pair.peer, outside]);
  await applyAmbient({ netns: pair.podPath, backend: 'iptables-nft', config: ambientConfigFromAnnotations({}, { ...DEFAULT_AMBIENT_NODE, dnsCapture: false }) });
  await listen(t, pair.pod, 'ztunnel', ['15001', '15006', '15008'], { mark: ZTUNNEL_MARK });
  await listen(t, pair.pod, 'app', ['8080']);
  return { pair, outside };
}

/** Waits (5 s at most) until no address in these namespaces is still tentative (IPv6 DAD). */
async function settled(namespaces: string[]): Promise<void> {
  const deadline = Date.now() + 5000;
  while (namespaces.some((ns) => tryInNetns(ns, 'ip', ['-6', 'addr', 'show', 'tentative']).stdout.trim() !== '') && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Another component's node rules: a chain and jump, a MASQUERADE, an ipset, an nft table. */
function foreignRules(node: string, via: HostVia): void {
  const ipt = via.kind === 'iptables' && via.flavour === 'legacy' ? 'iptables-legacy' : 'iptables-nft';
  inNetns(node, ipt, ['-t', 'nat', '-N', 'KUBE-TEST']);
  inNetns(node, ipt, ['-t', 'nat', '-A', 'KUBE-TEST', '-d', '10.96.0.0/12', '-j', 'RETURN']);
  inNetns(node, ipt, ['-t', 'nat', '-I', 'POSTROUTING', '1', '-j', 'KUBE-TEST']);
  inNetns(node, ipt, ['-t', 'nat', '-A', 'POSTROUTING', '-s', '10.99.0.0/16', '-j', 'MASQUERADE']);
  inNetns(node, ipt.replace('iptables', 'ip6tables'), ['-t', 'nat', '-A', 'POSTROUTING', '-s', 'fd99::/64', '-j', 'MASQUERADE']);
  inNetns(node, 'ipset', ['create', 'foreign-set', 'hash:ip']);
  inNetns(node, 'ipset', ['add', 'foreign-set', '10.77.0.2']);
  inNetns(node, nftProgram(), ['-f', '-'], 'add table inet foreign\nadd chain inet foreign post { type nat hook postrouting priority 50 ; }\nadd rule inet foreign post ip daddr 10.98.0.0/16 masquerade\n');
}

/** Everything on the node, counters left out (traffic moves them). */
function nodeState(node: string): string {
  const strip = (s: string) => s.replace(/\[\d+:\d+\]/g, '').replace(/counter packets \d+ bytes \d+/g, 'counter').replace(/^#.*$/gm, '');
  return ['iptables-nft-save', 'ip6tables-nft-save', 'iptables-legacy-save', 'ip6tables-legacy-save'].map((p) => strip(tryInNetns(node, p, []).stdout)).join('\n') + strip(inNetns(node, 'ipset', ['save'])) + strip(inNetns(node, nftProgram(), ['list', 'ruleset']));
}

const VIAS: Array<[string, HostVia]> = [
  ['iptables-nft', { kind: 'iptables', flavour: 'nft' }],
  ['iptables-legacy', { kind: 'iptables', flavour: 'legacy' }],
  ['nftables', { kind: 'nftables' }],
];

function from(t: ExecutionContext, got: Landing, listener: string, port: number, source: string, what: string): void {
  t.is(got.listener, listener, `${what}: ${JSON.stringify(got)}`);
  t.is(got.port, port, `${what}: ${JSON.stringify(got)}`);
  t.true(got.peer?.replace(/^\[/, '').startsWith(source), `${what}: from ${source}, got ${got.peer}`);
}

for (const [name, via] of VIAS) {
  test.serial(`node ${name}: kubelet's probes reach the app from the probe address, forwarded traffic goes to ztunnel; another component's rules survive`, async (t) => {
    const n = await topology(t);
    if (via.kind === 'nftables') requireNft(t);
    const node = n.pair.peer;
    foreignRules(node, via);
    const before = nodeState(node);
    const pods = new Map([
      [n.pair.podIp4, 'uid-1'],
      [n.pair.podIp6, 'uid-1'],
    ]);
    await installHostProbe(netnsPath(node), via, SETTINGS, pods);
    await installHostProbe(netnsPath(node), via, SETTINGS, pods); // a restarted agent: replaces, never doubles
    for (const [family, pod, outsideIp] of [
      ['ipv4', n.pair.podIp4, '10.78.0.2'],
      ['ipv6', n.pair.podIp6, 'fd78::2'],
    ] as Array<[Family, string, string]>) {
      from(t, connect(node, pod, 8080), 'app', 8080, SETTINGS.snat[family], `${family}: a probe from a socket on the node`);
      from(t, connect(n.outside, pod, 8080), 'ztunnel', 15006, outsideIp, `${family}: traffic the node forwards`);
    }
    if (via.kind === 'iptables') t.is(tryInNetns(node, via.flavour === 'legacy' ? 'iptables-legacy-save' : 'iptables-nft-save', ['-t', 'nat']).stdout.match(/-j MESH_CNI_PROBE/g)?.length, 1, 'one jump after two installs');

    // The pod leaves ambient: its address out of the set, and probes are no longer SNATed.
    await removeProbeAddresses(netnsPath(node), via, [n.pair.podIp4]);
    from(t, connect(node, n.pair.podIp4, 8080), 'ztunnel', 15006, n.pair.peerIp4, 'a probe to a pod no longer in the set');
    await addProbeAddresses(netnsPath(node), via, true, 'uid-1', [n.pair.podIp4]);
    from(t, connect(node, n.pair.podIp4, 8080), 'app', 8080, DEFAULT_HOST_PROBE_SNAT_IPV4, 'back in the set');

    await removeHostProbe(netnsPath(node), via);
    await removeHostProbe(netnsPath(node), via); // again: what is gone is fine
    t.is(nodeState(node), before, "the node holds exactly what it held before: the other component's rules, set and table, nothing of ours");
  });
}
