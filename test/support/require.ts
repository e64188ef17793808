/**
 * Suites that need a component the machine lacks fail with a message naming the package; they never pass
 * silently.
 */
import { spawnSync } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import { nftProgram } from '../../src/redirect/nftables/backend';

const checked = new Map<string, string | undefined>();

function missing(program: string, args: string[], pkg: string): string | undefined {
  const key = `${program} ${args.join(' ')}`;
  if (!checked.has(key)) {
    const r = spawnSync(program, args, { encoding: 'utf8' });
    checked.set(key, r.error || r.status !== 0 ? `${program} is missing or broken: install the ${pkg} package (apt-get install -y ${pkg})` : undefined);
  }
  return checked.get(key);
}

function requireAll(t: ExecutionContext, needs: Array<[string, string[], string]>): void {
  if (process.getuid?.() !== 0) throw new Error('kernel tests need root (network namespaces, iptables)');
  for (const [program, args, pkg] of needs) {
    const why = missing(program, args, pkg);
    if (why) {
      t.log(why);
      throw new Error(why);
    }
  }
}

export function requireKernelTools(t: ExecutionContext): void {
  requireAll(t, [
    ['ip', ['-V'], 'iproute2'],
    ['iptables-nft-restore', ['--version'], 'iptables'],
    ['iptables-legacy-restore', ['--version'], 'iptables'],
    ['ip6tables-nft-restore', ['--version'], 'iptables'],
    ['setpriv', ['--version'], 'util-linux'],
    ['/usr/bin/python3', ['--version'], 'python3'],
  ]);
}

/** ipset: the node's kubelet-probe sets for ambient pods on an iptables node. */
export function requireIpset(t: ExecutionContext): void {
  requireAll(t, [['ipset', ['--version'], 'ipset']]);
}

/** The system nft (never node_modules/.bin/nft, which npm puts first in PATH and which is another program). */
export function requireNft(t: ExecutionContext): void {
  requireAll(t, [[nftProgram(), ['--version'], 'nftables']]);
}
