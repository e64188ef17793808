/**
 * Kernel tests for ambient's in-pod rules: a pod netns joined to a peer by a veth pair, ztunnel's ports
 * (15001, 15006, 15008, DNS on 15053) listened on inside the pod with ztunnel's mark 0x539 on their sockets,
 * the app on 8080, and real TCP and UDP judged by where they land. Every case for each backend (both iptables
 * flavours, native nftables) and each family; then `remove` leaves nothing of ours, routing included.
 */
import test, { type ExecutionContext } from 'ava';
import { ambientConfigFromAnnotations, DEFAULT_AMBIENT_NODE, DEFAULT_HOST_PROBE_SNAT_IPV4, DEFAULT_HOST_PROBE_SNAT_IPV6 } from '../../src/redirect/ambient/config';
import { applyAmbient } from '../../src/redirect/ambient/apply';
import { removeRedirect, type BackendName } from '../../src/redirect/engine';
import { createPodPeer, sh, tryInNetns, type PodPeer } from '../support/netns';
import { connect, listen, type Landing } from '../support/traffic';
import { requireKernelTools, requireNft } from '../support/require';
import { nftProgram } from '../../src/redirect/nftables/backend';
import { ZTUNNEL_MARK } from '../support/ztunnel';
import type { Family } from '../../src/redirect/constants';

const BACKENDS: BackendName[] = ['iptables-nft', 'iptables-legacy', 'nftables'];
const FAMILIES: Family[] = ['ipv4', 'ipv6'];

interface Net {
  pair: PodPeer;
  backend: BackendName;
  podIp: string;
  peerIp: string;
  probe: string;
  loopback: string;
}

const fmt = (host: string, port: number) => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

async function setup(t: ExecutionContext, family: Family, backend: BackendName): Promise<Net> {
  requireKernelTools(t);
  if (backend === 'nftables') requireNft(t);
  const pair = createPodPeer(t);
  // The node side owns the probe SNAT addresses, as a node's SNAT makes kubelet's probes come from them.
  sh('ip', ['-n', pair.peer, 'addr', 'add', `${DEFAULT_HOST_PROBE_SNAT_IPV4}/32`, 'dev', 'veth0']);
  sh('ip', ['-n', pair.peer, 'addr', 'add', `${DEFAULT_HOST_PROBE_SNAT_IPV6}/128`, 'dev', 'veth0', 'nodad']);
  await listen(t, pair.pod, 'ztunnel', ['15001', '15006', '15008', '15053', '15053/udp'], { mark: ZTUNNEL_MARK });
  await listen(t, pair.pod, 'app', ['8080']);
  await listen(t, pair.peer, 'peer', ['80', '53', '53/udp']);
  const v4 = family === 'ipv4';
  return {
    pair,
    backend,
    podIp: v4 ? pair.podIp4 : pair.podIp6,
    peerIp: v4 ? pair.peerIp4 : pair.peerIp6,
    probe: v4 ? DEFAULT_HOST_PROBE_SNAT_IPV4 : DEFAULT_HOST_PROBE_SNAT_IPV6,
    loopback: v4 ? '127.0.0.1' : '::1',
  };
}

function landsOn(t: ExecutionContext, got: Landing, listener: string, port: number, what: string, orig?: string): void {
  t.is(got.listener, listener, `${what}: expected ${listener}:${port}, got ${JSON.stringify(got)}`);
  t.is(got.port, port, `${what}: ${JSON.stringify(got)}`);
  if (orig) t.is(got.orig, orig, `${what}: original destination`);
}

async function apply(n: Net, annotations: Record<string, string> = {}, dnsCapture = true): Promise<void> {
  const report = await applyAmbient({ netns: n.pair.podPath, backend: n.backend, config: ambientConfigFromAnnotations(annotations, { ...DEFAULT_AMBIENT_NODE, dnsCapture }) });
  if (report.families.length !== 2) throw new Error(`expected both families programmed, got ${report.families.join(',')}`);
}

function hasOurs(n: Net): string[] {
  const found: string[] = [];
  if (/mesh-cni-/.test(tryInNetns(n.pair.pod, nftProgram(), ['list', 'tables']).stdout)) found.push('nft tables');
  for (const tool of ['iptables-nft-save', 'ip6tables-nft-save', 'iptables-legacy-save', 'ip6tables-legacy-save']) {
    if (/ISTIO_/.test(tryInNetns(n.pair.pod, tool, []).stdout)) found.push(tool);
  }
  for (const fam of ['-4', '-6']) {
    if (/fwmark 0x111\/0xfff/.test(tryInNetns(n.pair.pod, 'ip', [fam, 'rule', 'list']).stdout)) found.push(`ip ${fam} rule`);
    if (/local default/.test(tryInNetns(n.pair.pod, 'ip', [fam, 'route', 'show', 'table', '100']).stdout)) found.push(`ip ${fam} route table 100`);
  }
  return found;
}

for (const backend of BACKENDS) {
  for (const family of FAMILIES) {
    const tag = `${backend} ${family}`;

    test.serial(`ambient kernel ${tag}: outbound to 15001, inbound to 15006, 15008 passed, ztunnel's marked traffic and kubelet probes untouched; remove restores`, async (t) => {
      const n = await setup(t, family, backend);
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'peer', 80, 'before apply');
      await apply(n);

      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'ztunnel', 15001, 'app outbound', fmt(n.peerIp, 80));
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'ztunnel', 15006, 'inbound plaintext', fmt(n.podIp, 8080));
      landsOn(t, connect(n.pair.peer, n.podIp, 15008), 'ztunnel', 15008, 'inbound HBONE is not redirected', fmt(n.podIp, 15008));
      landsOn(t, connect(n.pair.pod, n.peerIp, 80, { mark: ZTUNNEL_MARK }), 'peer', 80, "ztunnel's own marked connection leaves unredirected");
      landsOn(t, connect(n.pair.peer, n.podIp, 8080, { source: n.probe }), 'app', 8080, 'a kubelet probe (from the SNAT address) reaches the app');
      landsOn(t, connect(n.pair.pod, n.loopback, 8080), 'app', 8080, 'loopback to the app itself');
      landsOn(t, connect(n.pair.pod, n.peerIp, 53, { proto: 'udp' }), 'ztunnel', 15053, 'DNS over UDP to ztunnel');
      landsOn(t, connect(n.pair.pod, n.peerIp, 53), 'ztunnel', 15053, 'DNS over TCP to ztunnel');
      landsOn(t, connect(n.pair.pod, n.peerIp, 53, { proto: 'udp', mark: ZTUNNEL_MARK }), 'peer', 53, "ztunnel's own DNS upstream leaves unredirected");
      t.regex(tryInNetns(n.pair.pod, 'ip', [family === 'ipv4' ? '-4' : '-6', 'rule', 'list']).stdout, /32764:\s+from all fwmark 0x111\/0xfff lookup 100/);
      t.regex(tryInNetns(n.pair.pod, 'ip', [family === 'ipv4' ? '-4' : '-6', 'route', 'show', 'table', '100']).stdout, /local default dev lo/);

      const { removed } = await removeRedirect({ netns: n.pair.podPath, backend });
      t.true(removed > 0);
      t.deepEqual(hasOurs(n), [], 'nothing of ours left: rules, chains, tables, ip rule, route');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'peer', 80, 'outbound after remove');
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'app', 8080, 'inbound after remove');
    });

    test.serial(`ambient kernel ${tag}: bypass-inbound-capture lets inbound reach the app, outbound still goes to ztunnel; DNS capture off leaves DNS alone`, async (t) => {
      const n = await setup(t, family, backend);
      await apply(n, { 'ambient.istio.io/bypass-inbound-capture': 'true' }, false);
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'app', 8080, 'inbound with bypass-inbound-capture');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'ztunnel', 15001, 'outbound', fmt(n.peerIp, 80));
      landsOn(t, connect(n.pair.pod, n.peerIp, 53, { proto: 'udp' }), 'peer', 53, 'DNS with capture off');
      // Applying again replaces, never duplicates: a pod annotated for DNS capture now gets it.
      await apply(n, { 'ambient.istio.io/dns-capture': 'true' }, false);
      landsOn(t, connect(n.pair.pod, n.peerIp, 53, { proto: 'udp' }), 'ztunnel', 15053, 'DNS once the pod asks for it');
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'ztunnel', 15006, 'inbound without bypass');
      await removeRedirect({ netns: n.pair.podPath, backend });
      t.deepEqual(hasOurs(n), []);
    });
  }
}
