/**
 * `backend: auto` kept in a state dir (src/redirect/choose-backend.ts `keepDetectionIn`): what the standalone
 * plugin, a process per request, uses instead of running the detection's programs on every call. An answer is
 * believed for a minute, only in the host netns it was made in, and only if it parses; the agent, which keeps
 * its own in memory, writes none. End to end: a standalone ADD through the installed shim keeps it, the next
 * one programs the pod with the kept backend (seen in the kernel), and uninstall removes the file.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chooseBackend, KEPT_DETECTION_FILE, KEPT_DETECTION_TTL_MS, rememberAutoDetection } from '../../src/redirect/choose-backend';
import { install, pluginEntry, uninstall } from '../../src/installer';
import { createNetns, inNetns, netnsPath } from '../support/netns';
import { standaloneAddEnv, standaloneNetconf } from '../support/shim';
import { REPO_ROOT } from '../support/paths';
import { requireKernelTools, requireNft } from '../support/require';
import { testTempDir } from '../support/tmp';
import { INJECTED, POD_ARGS } from '../cni/helpers';
import { nftProgram } from '../../src/redirect/nftables/backend';

interface Kept {
  hostNetns: string;
  backend: string;
  reason: string;
  detectedAt: number;
}

function hostIdentity(): string {
  const st = statSync('/proc/self/ns/net');
  return `${st.dev}:${st.ino}`;
}

const readKept = (dir: string) => JSON.parse(readFileSync(join(dir, KEPT_DETECTION_FILE), 'utf8')) as Kept;

/** An answer detection on this host would not give (it names a backend and a reason of the test's). */
function plant(dir: string, kept: Partial<Kept>): void {
  const detected = readKept(dir).backend;
  const other = detected === 'nftables' ? 'iptables-nft' : 'nftables';
  writeFileSync(join(dir, KEPT_DETECTION_FILE), JSON.stringify({ hostNetns: hostIdentity(), backend: other, reason: 'planted by the test', detectedAt: Date.now(), ...kept }));
}

test.serial('the first auto choice detects and keeps its answer with the host netns; the next one believes it', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'kept');
  const first = await chooseBackend({ backend: 'auto', keepDetectionIn: dir });
  const kept = readKept(dir);
  t.is(kept.backend, first.backend.name);
  t.is(kept.hostNetns, hostIdentity());
  t.true(Math.abs(Date.now() - kept.detectedAt) < 60_000);
  t.is(`auto: ${kept.reason}`, first.reason);
  plant(dir, {});
  const planted = readKept(dir);
  const second = await chooseBackend({ backend: 'auto', keepDetectionIn: dir });
  t.is(second.backend.name, planted.backend);
  t.regex(second.reason, /^auto: planted by the test \(detected \d+ s ago\)$/);
});

for (const [why, kept] of [
  ['older than a minute', { detectedAt: Date.now() - KEPT_DETECTION_TTL_MS - 1000 }],
  ['from the future (a clock gone back)', { detectedAt: Date.now() + 60_000 }],
  ['made in another host netns', { hostNetns: '1:2' }],
  ['naming no backend of ours', { backend: 'iptables-bogus' }],
] as const) {
  test.serial(`a kept answer ${why} is not believed, and is replaced by a detection`, async (t) => {
    requireKernelTools(t);
    const dir = testTempDir(t, 'kept');
    const detected = await chooseBackend({ backend: 'auto', keepDetectionIn: dir });
    plant(dir, kept);
    const again = await chooseBackend({ backend: 'auto', keepDetectionIn: dir });
    t.is(again.backend.name, detected.backend.name);
    t.notRegex(again.reason, /planted/);
    t.is(readKept(dir).reason, detected.reason.replace(/^auto: /, ''));
  });
}

test.serial('a kept file that does not parse is not believed', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'kept');
  writeFileSync(join(dir, KEPT_DETECTION_FILE), '{"hostNetns": ');
  const choice = await chooseBackend({ backend: 'auto', keepDetectionIn: dir });
  t.is(readKept(dir).backend, choice.backend.name);
});

test.serial('no file without keepDetectionIn, nor in a process that remembers detections itself (the agent)', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'kept');
  await chooseBackend({ backend: 'auto' });
  await chooseBackend({ backend: 'iptables', keepDetectionIn: dir });
  t.false(existsSync(join(dir, KEPT_DETECTION_FILE)));
  rememberAutoDetection(60_000);
  try {
    await chooseBackend({ backend: 'auto', keepDetectionIn: dir });
  } finally {
    rememberAutoDetection(0);
  }
  t.false(existsSync(join(dir, KEPT_DETECTION_FILE)));
});

test.serial('standalone ADDs with backend auto: the first keeps the answer in state_dir, the next programs the pod with it, uninstall removes it', async (t) => {
  requireKernelTools(t);
  requireNft(t);
  const root = testTempDir(t, 'kept-standalone');
  const stateDir = join(root, 'state');
  const options = {
    cniBinDir: join(root, 'opt/cni/bin'),
    cniConfDir: join(root, 'etc/cni/net.d'),
    shimPath: join(REPO_ROOT, 'build', 'mesh-cni'),
    enginePath: join(REPO_ROOT, 'build', 'engine'),
    pluginConfig: { ...pluginEntry({ backend: 'auto' }), state_dir: stateDir },
    standaloneConf: true,
    stateDir: join(root, 'var/run/mesh-cni'),
  };
  await install(options);
  t.teardown(() => uninstall(options).then(() => undefined));
  const netconf = standaloneNetconf(root, 'auto', INJECTED, stateDir);
  const add = (netns: string, id: string) =>
    spawnSync(join(options.cniBinDir, 'mesh-cni'), [], {
      cwd: '/',
      input: JSON.stringify(netconf),
      encoding: 'utf8',
      timeout: 60_000,
      env: standaloneAddEnv({ containerId: id, netns: netnsPath(netns), cniPath: options.cniBinDir, root, podArgs: POD_ARGS }),
    });
  const first = add(createNetns(t, 'kept1'), 'kept-1');
  t.is(first.status, 0, `${first.stdout}\n${first.stderr}`);
  const detected = readKept(stateDir);
  t.is(detected.hostNetns, hostIdentity());
  // A kept answer naming the other kind of packet filter: the next pod's rules must land there.
  plant(stateDir, {});
  const planted = readKept(stateDir).backend;
  const second = createNetns(t, 'kept2');
  const r = add(second, 'kept-2');
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  const nftRules = inNetns(second, nftProgram(), ['list', 'ruleset']);
  if (planted === 'nftables') t.regex(nftRules, /table inet mesh-cni-nat[\s\S]*15001/, 'programmed with nftables, as kept');
  else t.regex(inNetns(second, 'iptables-nft-save', []), /15001/, 'programmed with iptables-nft, as kept');
  await uninstall(options);
  t.false(existsSync(join(stateDir, KEPT_DETECTION_FILE)), 'uninstall removed the kept answer');
});
