/** What STATUS can check without the agent: are the programs the chosen backend runs installed? */
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import type { BackendName } from '../defaults';

const SYSTEM_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin', '/usr/local/sbin', '/usr/local/bin'];

const PROGRAMS: Record<BackendName, string[][]> = {
  // Each inner list is one way to serve the backend; any one complete way is enough.
  auto: [['iptables-restore', 'ip6tables-restore'], ['nft']],
  iptables: [['iptables-restore', 'ip6tables-restore']],
  'iptables-nft': [['iptables-nft-restore', 'ip6tables-nft-restore']],
  'iptables-legacy': [['iptables-legacy-restore', 'ip6tables-legacy-restore']],
  nftables: [['nft']],
};

export function findProgram(name: string, pathEnv = process.env.PATH ?? ''): string | undefined {
  for (const dir of [...pathEnv.split(':').filter((d) => d.startsWith('/')), ...SYSTEM_DIRS]) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // try the next directory
    }
  }
  return undefined;
}

/** undefined when the backend can run; otherwise what is missing. */
export function checkProgramsForBackend(backend: BackendName, find: (name: string) => string | undefined = findProgram): string | undefined {
  const ways = PROGRAMS[backend];
  if (ways.some((programs) => programs.every((p) => find(p) !== undefined))) return undefined;
  return `none of ${ways.map((w) => w.join(' + ')).join(' or ')} is installed (backend ${backend})`;
}
