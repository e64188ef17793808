/**
 * The reconciler's cheap check (src/repair/check.ts) against real netns and the real packet filters: it must
 * reach the same verdict as the engine's full comparison (checkRedirect) every time, while listing less:
 * no IPv6 listing where the netns has no IPv6 table, and no listing at all for a healthy netns whose
 * nf_tables generation has not moved. Every tampering below changes the kernel's rules with the tool an
 * operator (or a buggy program) would use, and the check must see it on the very next call. Kernel test
 * (root, iptables, nft).
 */
import test, { type ExecutionContext } from 'ava';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { applyRedirect, checkRedirect, type BackendName } from '../../src/redirect/engine';
import { repairChecker } from '../../src/repair/check';
import { nfFacts, NFPROTO } from '../../src/repair/nf-facts';
import { createNetns, inNetns, netnsPath } from '../support/netns';
import { requireKernelTools, requireNft } from '../support/require';
import { INJECTED } from '../cni/helpers';

const config = redirectConfigFromAnnotations(INJECTED);

async function programmed(t: ExecutionContext, backend: BackendName): Promise<{ name: string; path: string }> {
  const name = createNetns(t, 'check');
  await applyRedirect({ netns: netnsPath(name), config, backend });
  return { name, path: netnsPath(name) };
}

async function sameAsEngine(t: ExecutionContext, backend: BackendName, netns: string, checker: ReturnType<typeof repairChecker>): Promise<boolean> {
  const fast = await checker.check(netns, config);
  const full = await checkRedirect({ netns, config, backend });
  t.deepEqual(fast, full, 'the cheap check and the engine disagree');
  return fast.ok;
}

test('nf-facts reads the nf_tables tables, generation and cookie of a netns without a process', async (t) => {
  requireKernelTools(t);
  const a = await programmed(t, 'iptables-nft');
  const b = createNetns(t, 'empty');
  const factsA = nfFacts(a.path);
  const factsB = nfFacts(netnsPath(b));
  t.true(factsA.nftTables.has(`${NFPROTO.ipv4}:nat`), [...factsA.nftTables].join(' '));
  t.false([...factsA.nftTables].some((x) => x.startsWith(`${NFPROTO.ipv6}:`)));
  t.is(factsB.nftTables.size, 0);
  t.not(factsA.cookie, undefined);
  t.not(factsA.cookie, factsB.cookie);
  const before = factsA.genId!;
  inNetns(a.name, 'iptables-nft', ['-t', 'nat', '-A', 'ISTIO_OUTPUT', '-p', 'udp', '-j', 'RETURN']);
  t.true(nfFacts(a.path).genId! > before, 'a committed change must move the generation');
});

for (const backend of ['iptables-nft', 'nftables'] as BackendName[]) {
  test(`${backend}: healthy, then unchanged without listing, then every tampering seen at once`, async (t) => {
    requireKernelTools(t);
    if (backend === 'nftables') requireNft(t);
    const ns = await programmed(t, backend);
    const checker = repairChecker({ backend });
    t.true(await sameAsEngine(t, backend, ns.path, checker));
    const listed = checker.stats.listings;
    if (backend === 'iptables-nft') t.is(checker.stats.familiesSkipped, 1, 'no ip6 table: ip6tables-save is not needed');
    t.true((await checker.check(ns.path, config)).ok);
    t.is(checker.stats.unchanged, 1);
    t.is(checker.stats.listings, listed, 'an unchanged generation lists nothing');

    // One of our rules deleted.
    if (backend === 'nftables') inNetns(ns.name, 'nft', ['flush', 'chain', 'inet', 'mesh-cni-nat', 'istio-output']);
    else inNetns(ns.name, 'iptables-nft', ['-t', 'nat', '-F', 'ISTIO_OUTPUT']);
    t.false(await sameAsEngine(t, backend, ns.path, checker));
    await applyRedirect({ netns: ns.path, config, backend });
    t.true(await sameAsEngine(t, backend, ns.path, checker));

    // A stray IPv6 rule of ours in a netns that never had an IPv6 table.
    if (backend === 'nftables') inNetns(ns.name, 'nft', ['add', 'rule', 'inet', 'mesh-cni-nat', 'istio-output', 'meta', 'nfproto', 'ipv6', 'tcp', 'dport', '9', 'return']);
    else {
      inNetns(ns.name, 'ip6tables-nft', ['-t', 'nat', '-N', 'ISTIO_OUTPUT']);
      inNetns(ns.name, 'ip6tables-nft', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-j', 'ISTIO_OUTPUT']);
    }
    t.false(await sameAsEngine(t, backend, ns.path, checker));
  });
}

test('iptables-legacy: the IPv6 listing is skipped from /proc, and nothing is remembered (no generation)', async (t) => {
  requireKernelTools(t);
  const ns = await programmed(t, 'iptables-legacy');
  const checker = repairChecker({ backend: 'iptables-legacy' });
  t.true(await sameAsEngine(t, 'iptables-legacy', ns.path, checker));
  t.is(checker.stats.familiesSkipped, 1);
  t.true((await checker.check(ns.path, config)).ok);
  t.is(checker.stats.unchanged, 0, 'legacy x_tables changes move no nf_tables generation: always listed');
  inNetns(ns.name, 'iptables-legacy', ['-t', 'nat', '-F', 'ISTIO_OUTPUT']);
  t.false(await sameAsEngine(t, 'iptables-legacy', ns.path, checker));
  await applyRedirect({ netns: ns.path, config, backend: 'iptables-legacy' });
  t.true(await sameAsEngine(t, 'iptables-legacy', ns.path, checker));
  inNetns(ns.name, 'ip6tables-legacy', ['-t', 'nat', '-N', 'ISTIO_OUTPUT']);
  inNetns(ns.name, 'ip6tables-legacy', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-j', 'ISTIO_OUTPUT']);
  t.false(await sameAsEngine(t, 'iptables-legacy', ns.path, checker), 'the stray IPv6 chain of ours must be seen');
});
