/**
 * Kernel test of INVALID_DROP: a TCP segment conntrack cannot place (an ACK for no known connection, with
 * strict TCP tracking in the pod netns) is answered by the pod's stack with a reset, unless the rule drops it
 * first. The peer sends it from a raw socket and watches for the reset; a normal connection must still be
 * captured. Every backend, IPv4.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { applyRedirect, type BackendName } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { createPodPeer, sh } from '../support/netns';
import { requireKernelTools, requireNft } from '../support/require';
import { connect, listen } from '../support/traffic';

/** Sends one bare ACK from a raw socket to host:port and prints `rst` if a reset comes back within a second. */
const STRAY_ACK = String.raw`
import random, socket, struct, sys, time
src, dst, dport = sys.argv[1], sys.argv[2], int(sys.argv[3])
sport = random.randint(40000, 60000)
seq, ack = random.randint(1, 2**31), random.randint(1, 2**31)
def checksum(data):
    if len(data) % 2: data += b'\0'
    s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def segment(csum):
    return struct.pack('!HHIIBBHHH', sport, dport, seq, ack, 5 << 4, 0x10, 65535, csum, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, socket.IPPROTO_TCP, 20)
tcp = segment(checksum(pseudo + segment(0)))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.settimeout(0.2)
s.sendto(tcp, (dst, 0))
deadline = time.time() + 1.0
while time.time() < deadline:
    try:
        packet, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    ihl = (packet[0] & 0x0f) * 4
    psport, pdport = struct.unpack('!HH', packet[ihl:ihl + 4])
    flags = packet[ihl + 13]
    if addr[0] == dst and psport == dport and pdport == sport and flags & 0x04:
        print('rst'); sys.exit(0)
print('none')
`;

function strayAck(peer: string, src: string, dst: string, port: number): string {
  const r = spawnSync('ip', ['netns', 'exec', peer, '/usr/bin/python3', '-c', STRAY_ACK, src, dst, String(port)], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`raw socket client failed: ${r.stderr}`);
  return r.stdout.trim();
}

async function podWith(t: ExecutionContext, backend: BackendName, invalidDrop: boolean) {
  requireKernelTools(t);
  if (backend === 'nftables') requireNft(t);
  const pair = createPodPeer(t, { ipv6: false });
  // Strict tracking: a mid-stream ACK no longer starts a connection, so conntrack calls it INVALID.
  sh('ip', ['netns', 'exec', pair.pod, 'sysctl', '-qw', 'net.netfilter.nf_conntrack_tcp_loose=0']);
  await applyRedirect({ netns: pair.podPath, backend, config: redirectConfigFromAnnotations({}, { invalidDrop }), families: ['ipv4'] });
  await listen(t, pair.pod, 'proxy', ['15006']);
  return pair;
}

for (const backend of ['iptables-nft', 'iptables-legacy', 'nftables'] as BackendName[]) {
  test.serial(`${backend}: without INVALID_DROP a stray ACK is answered with a reset`, async (t) => {
    const pair = await podWith(t, backend, false);
    t.is(strayAck(pair.peer, pair.peerIp4, pair.podIp4, 8080), 'rst');
  });

  test.serial(`${backend}: with INVALID_DROP the stray ACK is dropped (no reset), and real connections are still captured`, async (t) => {
    const pair = await podWith(t, backend, true);
    t.is(strayAck(pair.peer, pair.peerIp4, pair.podIp4, 8080), 'none');
    const landing = connect(pair.peer, pair.podIp4, 8080);
    t.is(landing.listener, 'proxy', JSON.stringify(landing));
    t.is(landing.orig, `${pair.podIp4}:8080`);
  });
}
