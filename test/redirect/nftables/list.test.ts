/** The canonical signature undoes what nft does to a rule between `nft -f` and `nft list` (no kernel needed). */
import test from 'ava';
import { familiesOf, nftSignature, parseNftList } from '../../../src/redirect/nftables/list';

const SAME: Array<[string, string, string]> = [
  ['implied l4proto dropped', 'meta l4proto tcp tcp dport 80 counter return', 'tcp dport 80 counter packets 4 bytes 240 return'],
  ['marks in hex', 'meta mark 1337 counter meta mark set 1338', 'meta mark 0x00000539 counter packets 0 bytes 0 meta mark set 0x0000053a'],
  ['host prefix without /32', 'oifname "lo" ip saddr 127.0.0.6/32 counter return', 'oifname "lo" ip saddr 127.0.0.6 counter packets 0 bytes 0 return'],
  ['set prefixes merged and sorted', 'ip daddr { 10.1.0.0/16, 10.0.0.0/8, 192.168.1.0/24, 192.168.0.0/24 } counter return', 'ip daddr { 10.0.0.0/8, 192.168.0.0/23 } counter packets 0 bytes 0 return'],
  ['a one-element set listed bare', 'ip6 daddr { fd00::/8 } counter return', 'ip6 daddr fd00::/8 counter packets 0 bytes 0 return'],
  ['ct state order', 'ct state related,established counter accept', 'ct state established,related counter packets 0 bytes 0 accept'],
  ['family qualifier is compared apart', 'meta nfproto ipv4 meta skuid 1337 counter return', 'meta skuid 1337 counter packets 0 bytes 0 return'],
];

for (const [what, rendered, listed] of SAME) {
  test(`nft signature: ${what}`, (t) => t.is(nftSignature(rendered), nftSignature(listed)));
}

test('nft signature: different sets, ports or verdicts differ', (t) => {
  t.not(nftSignature('ip daddr { 10.0.0.0/16 } counter return'), nftSignature('ip daddr 10.0.0.0/15 counter return'));
  t.not(nftSignature('tcp dport != 53 counter return'), nftSignature('tcp dport 53 counter return'));
  t.not(nftSignature('meta skuid 1337 counter return'), nftSignature('meta skuid 1337 counter accept'));
});

test('families of a rule: named by an address, a tproxy or a qualifier, else both', (t) => {
  t.deepEqual(familiesOf('ip daddr != 127.0.0.1 counter return'), ['ipv4']);
  t.deepEqual(familiesOf('ip6 saddr ::6 counter return'), ['ipv6']);
  t.deepEqual(familiesOf('meta nfproto ipv6 meta l4proto tcp counter jump istio-output'), ['ipv6']);
  t.deepEqual(familiesOf('meta skuid 1337 counter return'), ['ipv4', 'ipv6']);
});

test('parseNftList reads rules per table and chain, with counters, skipping hook lines', (t) => {
  const listing = [
    'table inet mesh-cni-nat {',
    '\tchain output {',
    '\t\ttype nat hook output priority -100; policy accept;',
    '\t\tmeta l4proto tcp counter packets 7 bytes 420 jump istio-output',
    '\t}',
    '}',
  ].join('\n');
  t.deepEqual(parseNftList(listing), [{ table: 'mesh-cni-nat', chain: 'output', text: 'meta l4proto tcp counter jump istio-output', packets: 7 }]);
});
