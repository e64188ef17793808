/**
 * `run` with the standalone plugin's collect mode (src/netns/spawn.ts `setCollectMode('blocking')`): the same
 * answers as the agent's event-loop mode (exit code, stdout, stderr larger than a pipe holds, 128 for a signal,
 * not-found, timeout with the program killed), and the child in the netns asked for. That this spares the
 * standalone ADD node:net is checked on the installed engine (test/installer/standalone-lean.test.ts). A file
 * of its own: the mode is per process, and ava runs each file in its own.
 */
import test from 'ava';
import { run, setCollectMode } from '../../src/netns';
import { createNetns, inNetns, netnsPath } from '../support/netns';
import { requireKernelTools } from '../support/require';

setCollectMode('blocking');

test.serial('exit code, stdout and stderr come back, stderr however large; the input reaches stdin', async (t) => {
  t.deepEqual(await run(undefined, 'sh', ['-c', 'cat; echo to-stderr >&2; exit 3'], { input: 'hello\n' }), { code: 3, stdout: 'hello\n', stderr: 'to-stderr\n' });
  // More than a pipe holds (64 KiB) on stderr: read as it comes, or the program would block writing it.
  const err = await run(undefined, 'sh', ['-c', 'head -c 300000 /dev/zero | tr "\\0" e >&2; echo done']);
  t.is(err.stderr.length, 300_000);
  t.is(err.stdout, 'done\n');
  t.is((await run(undefined, 'wc', ['-c'], { input: 'x'.repeat(1024 * 1024) })).stdout.trim(), String(1024 * 1024));
  t.is((await run(undefined, 'true', [])).code, 0);
});

test.serial('a program killed by a signal reports 128; a missing program and a timeout reject, and the timed-out program is killed', async (t) => {
  t.is((await run(undefined, 'sh', ['-c', 'kill -9 $$'])).code, 128);
  await t.throwsAsync(run(undefined, 'mesh-cni-no-such-program', [], { packageHint: 'iptables' }), { message: /not found in PATH/ });
  const started = Date.now();
  await t.throwsAsync(run(undefined, 'sleep', ['30'], { timeoutMs: 300 }), { message: /timed out after 300 ms/ });
  // One that closes its stderr and keeps running is not waited for past its timeout either.
  await t.throwsAsync(run(undefined, 'sh', ['-c', 'exec 2>&-; sleep 30'], { timeoutMs: 300 }), { message: /timed out after 300 ms/ });
  t.true(Date.now() - started < 10_000, 'the programs were killed, not waited for');
});

test.serial('the child starts in the netns asked for, and this process stays where it was', async (t) => {
  requireKernelTools(t);
  const name = createNetns(t, 'spawnb');
  inNetns(name, 'ip', ['link', 'add', 'mcni-spawnb0', 'type', 'veth', 'peer', 'name', 'mcni-spawnb1']);
  t.regex((await run(netnsPath(name), 'ip', ['-o', 'link', 'show'])).stdout, /mcni-spawnb0/);
  t.notRegex((await run(undefined, 'ip', ['-o', 'link', 'show'])).stdout, /mcni-spawnb0/);
});
