/**
 * Kernel tests: rules applied to a real pod netns, judged by where real TCP and UDP land. A "pod" netns and
 * a "peer" netns are joined by a veth pair; listeners in both report which port accepted each connection
 * and its original destination. Every case runs for each backend (both iptables flavours and native
 * nftables, in-process through libnftables where it loads) and each IP family.
 */
import test, { type ExecutionContext } from 'ava';
import { applyRedirect, removeRedirect, type BackendName } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { createPodPeer, tryInNetns, EXTERNAL_V4, EXTERNAL_V6, type PodPeer } from '../support/netns';
import { connect, listen, type Landing } from '../support/traffic';
import { requireKernelTools, requireNft } from '../support/require';
import { nftProgram } from '../../src/redirect/nftables/backend';
import type { Family } from '../../src/redirect/constants';
import type { ProxySettings } from '../../src/redirect/config';

const BACKENDS: BackendName[] = ['iptables-nft', 'iptables-legacy', 'nftables'];
const FAMILIES: Family[] = ['ipv4', 'ipv6'];
const T = 'traffic.sidecar.istio.io/';

const POD_PORTS = ['15001', '15006', '8080', '8081', '9090', '15020'];
const PEER_PORTS = ['80', '443', '5432', '80/udp'];

interface Net {
  pair: PodPeer;
  family: Family;
  backend: BackendName;
  /** The pod's and the peer's own addresses, and two outside ranges (the first is the "excluded" one). */
  podIp: string;
  peerIp: string;
  outside: [string, string];
  outsideCidr: [string, string];
  loopback: string;
}

async function setup(t: ExecutionContext, family: Family, backend: BackendName): Promise<Net> {
  requireKernelTools(t);
  if (backend === 'nftables') requireNft(t);
  const pair = createPodPeer(t);
  await listen(t, pair.pod, 'pod', POD_PORTS);
  await listen(t, pair.peer, 'peer', PEER_PORTS);
  const ext = family === 'ipv4' ? EXTERNAL_V4 : EXTERNAL_V6;
  return {
    pair,
    family,
    backend,
    podIp: family === 'ipv4' ? pair.podIp4 : pair.podIp6,
    peerIp: family === 'ipv4' ? pair.peerIp4 : pair.peerIp6,
    outside: [ext[0].host, ext[1].host],
    outsideCidr: [ext[0].cidr, ext[1].cidr],
    loopback: family === 'ipv4' ? '127.0.0.1' : '::1',
  };
}

const fmt = (host: string, port: number) => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

function landsOn(t: ExecutionContext, got: Landing, listener: string, port: number, what: string, orig?: string): void {
  t.is(got.listener, listener, `${what}: expected the ${listener} listener on ${port}, got ${JSON.stringify(got)}`);
  t.is(got.port, port, `${what}: ${JSON.stringify(got)}`);
  if (orig) t.is(got.orig, orig, `${what}: original destination`);
}

async function apply(n: Net, annotations: Record<string, string>, proxy: ProxySettings = {}): Promise<void> {
  const report = await applyRedirect({
    netns: n.pair.podPath,
    backend: n.backend,
    config: redirectConfigFromAnnotations(annotations, proxy),
    families: ['ipv4', 'ipv6'],
  });
  if (report.families.length !== 2) throw new Error('expected both families programmed');
}

function saveHasOurs(n: Net): boolean {
  if (n.backend === 'nftables') return /mesh-cni-/.test(tryInNetns(n.pair.pod, nftProgram(), ['list', 'tables']).stdout);
  const tool = `${n.family === 'ipv4' ? 'iptables' : 'ip6tables'}-${n.backend === 'iptables-legacy' ? 'legacy' : 'nft'}-save`;
  return /ISTIO_/.test(tryInNetns(n.pair.pod, tool, []).stdout);
}

/** The rules that send outbound traffic into our output chain: exactly one, however often we applied. */
function outputJumps(n: Net): string[] {
  if (n.backend === 'nftables') {
    return tryInNetns(n.pair.pod, nftProgram(), ['list', 'chain', 'inet', 'mesh-cni-nat', 'output']).stdout.split('\n').filter((l) => /jump istio-output$/.test(l.trim()));
  }
  const tool = `${n.family === 'ipv4' ? 'iptables' : 'ip6tables'}-${n.backend === 'iptables-legacy' ? 'legacy' : 'nft'}-save`;
  return tryInNetns(n.pair.pod, tool, ['-t', 'nat']).stdout.split('\n').filter((l) => l.startsWith('-A OUTPUT') && l.endsWith('-j ISTIO_OUTPUT'));
}

for (const backend of BACKENDS) {
  for (const family of FAMILIES) {
    const tag = `${backend} ${family}`;

    test.serial(`kernel ${tag}: defaults redirect outbound to 15001 and inbound to 15006; proxy uid bypasses; remove restores direct traffic`, async (t) => {
      const n = await setup(t, family, backend);
      t.is(connect(n.pair.pod, n.peerIp, 80).listener, 'peer', 'before apply, traffic flows directly');
      await apply(n, {});

      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'pod', 15001, 'outbound to peer:80', fmt(n.peerIp, 80));
      landsOn(t, connect(n.pair.pod, n.outside[1], 443), 'pod', 15001, 'outbound to an outside address', fmt(n.outside[1], 443));
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'pod', 15006, 'inbound to pod:8080', fmt(n.podIp, 8080));
      landsOn(t, connect(n.pair.pod, n.peerIp, 80, { uid: 1337, gid: 1337 }), 'peer', 80, 'outbound from the proxy uid 1337');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80, { uid: 4242, gid: 1337 }), 'peer', 80, 'outbound from the proxy gid 1337');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80, { uid: 4242, gid: 4242 }), 'pod', 15001, 'outbound from another uid');
      landsOn(t, connect(n.pair.pod, n.loopback, 8081), 'pod', 8081, 'loopback to localhost');
      landsOn(t, connect(n.pair.peer, n.podIp, 15020), 'pod', 15020, 'inbound to the always-excluded status port');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80, { proto: 'udp' }), 'peer', 80, 'UDP is never redirected without DNS capture');

      const { removed } = await removeRedirect({ netns: n.pair.podPath, backend });
      t.true(removed > 0);
      t.false(saveHasOurs(n), 'no ISTIO_ chain or rule left after remove');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'peer', 80, 'outbound after remove');
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'pod', 8080, 'inbound after remove');
    });

    test.serial(`kernel ${tag}: excluded outbound ports and ranges and excluded inbound ports are not captured`, async (t) => {
      const n = await setup(t, family, backend);
      await apply(n, {
        [`${T}excludeOutboundPorts`]: '5432',
        [`${T}excludeOutboundIPRanges`]: `${EXTERNAL_V4[0].cidr},${EXTERNAL_V6[0].cidr}`,
        [`${T}excludeInboundPorts`]: '9090',
      });
      landsOn(t, connect(n.pair.pod, n.peerIp, 5432), 'peer', 5432, 'excluded outbound port');
      landsOn(t, connect(n.pair.pod, n.outside[0], 80), 'peer', 80, 'excluded outbound range');
      landsOn(t, connect(n.pair.pod, n.outside[1], 80), 'pod', 15001, 'a range not excluded');
      landsOn(t, connect(n.pair.peer, n.podIp, 9090), 'pod', 9090, 'excluded inbound port');
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'pod', 15006, 'an inbound port not excluded');
      // The default 15020 outbound exclusion is replaced by the annotation, as in Istio.
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'pod', 15001, 'other outbound ports still captured');
    });

    test.serial(`kernel ${tag}: include lists capture only what they name`, async (t) => {
      const n = await setup(t, family, backend);
      await apply(n, {
        [`${T}includeOutboundIPRanges`]: `${EXTERNAL_V4[1].cidr},${EXTERNAL_V6[1].cidr}`,
        [`${T}includeInboundPorts`]: '8080',
      });
      landsOn(t, connect(n.pair.pod, n.outside[1], 80), 'pod', 15001, 'an included range', fmt(n.outside[1], 80));
      landsOn(t, connect(n.pair.pod, n.outside[0], 80), 'peer', 80, 'a range not included');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'peer', 80, 'the peer, not included');
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'pod', 15006, 'an included inbound port');
      landsOn(t, connect(n.pair.peer, n.podIp, 9090), 'pod', 9090, 'an inbound port not included');
    });

    test.serial(`kernel ${tag}: includeOutboundPorts captures those ports when no range is included`, async (t) => {
      const n = await setup(t, family, backend);
      await apply(n, { [`${T}includeOutboundIPRanges`]: '', [`${T}includeOutboundPorts`]: '443' });
      landsOn(t, connect(n.pair.pod, n.peerIp, 443), 'pod', 15001, 'an included outbound port');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'peer', 80, 'another port');
    });

    test.serial(`kernel ${tag}: applying twice is idempotent and a changed config replaces the old rules`, async (t) => {
      const n = await setup(t, family, backend);
      await apply(n, { [`${T}excludeOutboundPorts`]: '443' });
      await apply(n, { [`${T}excludeOutboundPorts`]: '443' });
      landsOn(t, connect(n.pair.pod, n.peerIp, 443), 'peer', 443, 'excluded after re-apply');
      await apply(n, { [`${T}excludeOutboundPorts`]: '5432' });
      landsOn(t, connect(n.pair.pod, n.peerIp, 443), 'pod', 15001, 'no longer excluded after the config changed');
      landsOn(t, connect(n.pair.pod, n.peerIp, 5432), 'peer', 5432, 'newly excluded');
      const jumps = outputJumps(n);
      t.is(jumps.length, 1, `one jump into the output chain, not one per apply:\n${jumps.join('\n')}`);
    });

    test.serial(`kernel ${tag}: re-applying for one family only takes the other family's rules away`, async (t) => {
      const n = await setup(t, family, backend);
      await apply(n, {});
      t.true(saveHasOurs(n));
      const other: Family = family === 'ipv4' ? 'ipv6' : 'ipv4';
      await applyRedirect({ netns: n.pair.podPath, backend, config: redirectConfigFromAnnotations({}), families: [other] });
      if (backend !== 'nftables') t.false(saveHasOurs(n), `no ${family} rules left once only ${other} is asked for`);
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'peer', 80, `${family} outbound is no longer captured`);
    });

    test.serial(`kernel ${tag}: TPROXY delivers inbound to a transparent listener on 15006 that sees the original destination`, async (t) => {
      const n = await setup(t, family, backend);
      await apply(n, { 'sidecar.istio.io/interceptionMode': 'TPROXY' });
      const landed = connect(n.pair.peer, n.podIp, 8080);
      landsOn(t, landed, 'pod', 15006, 'inbound to pod:8080', fmt(n.podIp, 8080));
      t.is((landed as { local?: string }).local, fmt(n.podIp, 8080), 'not NATed: the socket itself is bound to the original destination');
      landsOn(t, connect(n.pair.peer, n.podIp, 15020), 'pod', 15020, 'inbound to the always-excluded status port');
      landsOn(t, connect(n.pair.pod, n.peerIp, 80), 'pod', 15001, 'outbound still goes to 15001 (nat)', fmt(n.peerIp, 80));
      landsOn(t, connect(n.pair.pod, n.peerIp, 80, { uid: 1337, gid: 1337 }), 'peer', 80, 'outbound from the proxy uid');
      const rules = tryInNetns(n.pair.pod, 'ip', [family === 'ipv4' ? '-4' : '-6', 'rule', 'list', 'fwmark', '1337']).stdout;
      t.regex(rules, /lookup 133/, 'policy routing for the TPROXY mark');
      await removeRedirect({ netns: n.pair.podPath, backend });
      t.is(tryInNetns(n.pair.pod, 'ip', [family === 'ipv4' ? '-4' : '-6', 'rule', 'list', 'fwmark', '1337']).stdout.trim(), '', 'remove takes the policy rule away');
      landsOn(t, connect(n.pair.peer, n.podIp, 8080), 'pod', 8080, 'inbound after remove');
    });

    test.serial(`kernel ${tag}: TPROXY fails closed: with nothing on 15006 inbound is dropped, not delivered to the app`, async (t) => {
      requireKernelTools(t);
      if (backend === 'nftables') requireNft(t);
      const pair = createPodPeer(t);
      await listen(t, pair.pod, 'pod', ['8080']);
      const n = { pair, family, backend } as Net;
      await apply(n, { 'sidecar.istio.io/interceptionMode': 'TPROXY' });
      const got = connect(pair.peer, family === 'ipv4' ? pair.podIp4 : pair.podIp6, 8080, { timeoutSeconds: 1 });
      t.truthy(got.error, `expected no answer, got ${JSON.stringify(got)}`);
    });

    test.serial(`kernel ${tag}: DNS capture: the app's queries reach 15053 wherever they go, 127.0.0.1/::1 included; the proxy's own reach the real resolver`, async (t) => {
      const n = await setup(t, family, backend);
      // The DNS agent runs as the proxy uid: its replies must land in the same conntrack zone as the query.
      await listen(t, n.pair.pod, 'dns-agent', ['15053', '15053/udp'], { uid: 1337, gid: 1337 });
      // A resolver inside the pod (a local cache, node-local DNS bound in the pod), and the cluster's resolver
      // behind the peer at an outside address, as a Service address would be.
      await listen(t, n.pair.pod, 'local-dns', ['53', '53/udp']);
      await listen(t, n.pair.peer, 'dns-server', ['53', '53/udp']);
      await apply(n, {}, { dnsCapture: true });
      const resolver = n.outside[1];
      for (const proto of ['udp', 'tcp'] as const) {
        landsOn(t, connect(n.pair.pod, n.loopback, 53, { proto }), 'dns-agent', 15053, `${proto} query from the app to ${n.loopback}:53`);
        landsOn(t, connect(n.pair.pod, resolver, 53, { proto }), 'dns-agent', 15053, `${proto} query from the app to the cluster resolver`);
        landsOn(t, connect(n.pair.pod, n.peerIp, 53, { proto }), 'dns-agent', 15053, `${proto} query from the app to another address`);
        landsOn(t, connect(n.pair.pod, resolver, 53, { proto, uid: 1337, gid: 1337 }), 'dns-server', 53, `${proto} query from the proxy (uid and gid 1337)`);
        landsOn(t, connect(n.pair.pod, resolver, 53, { proto, uid: 4242, gid: 1337 }), 'dns-server', 53, `${proto} query from the proxy's gid 1337 alone`);
        landsOn(t, connect(n.pair.pod, n.loopback, 53, { proto, uid: 1337, gid: 1337 }), 'local-dns', 53, `${proto} query from the proxy to the pod's own resolver`);
      }
      landsOn(t, connect(n.pair.pod, n.peerIp, 80, { proto: 'udp' }), 'peer', 80, 'other UDP is not captured');
    });

    test.serial(`kernel ${tag}: DNS capture: UDP to an excluded outbound port leaves unredirected, as TCP does`, async (t) => {
      const n = await setup(t, family, backend);
      await listen(t, n.pair.pod, 'dns-agent', ['15053', '15053/udp'], { uid: 1337, gid: 1337 });
      await listen(t, n.pair.peer, 'dns-server', ['53', '53/udp']);
      await apply(n, { [`${T}excludeOutboundPorts`]: '53' }, { dnsCapture: true });
      for (const proto of ['udp', 'tcp'] as const) {
        landsOn(t, connect(n.pair.pod, n.outside[1], 53, { proto }), 'dns-server', 53, `${proto} to the excluded port 53`);
      }
      landsOn(t, connect(n.pair.pod, n.peerIp, 80, { proto: 'udp' }), 'peer', 80, 'UDP to a port not excluded, not DNS');
    });
  }
}
