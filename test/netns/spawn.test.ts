/**
 * `run`, the one way the engine starts programs, now through posix_spawn (src/netns/spawn.ts): the same
 * answers as child_process gave (exit code, stdout, stderr, 128 for a signal, not-found, timeout), the
 * child in the pod's netns when asked, its signals at their defaults (Node ignores SIGPIPE), and nothing of
 * ours open in it but stdin, stdout and stderr.
 */
import test from 'ava';
import { run } from '../../src/netns';
import { createNetns, inNetns, netnsPath } from '../support/netns';
import { requireKernelTools } from '../support/require';

test('exit code, stdout and stderr come back; the whole input reaches stdin, however large', async (t) => {
  const r = await run(undefined, 'sh', ['-c', 'cat; echo to-stderr >&2; exit 3'], { input: 'hello\n' });
  t.deepEqual(r, { code: 3, stdout: 'hello\n', stderr: 'to-stderr\n' });
  const big = 'x'.repeat(1024 * 1024);
  t.is((await run(undefined, 'wc', ['-c'], { input: big })).stdout.trim(), String(big.length), 'more than a pipe holds');
  t.is((await run(undefined, 'head', ['-c', '3000000', '/dev/zero'])).stdout.length, 3_000_000);
  t.is((await run(undefined, 'true', [])).stdout, '');
  // Started by posix_spawn, the input is an unnamed file the program reads at its own pace (child_process gave a pipe).
  t.regex((await run(undefined, 'readlink', ['/proc/self/fd/0'])).stdout, /memfd:mesh-cni-stdin|\(deleted\)/);
});

test('a program killed by a signal reports 128; a missing program and a timeout reject', async (t) => {
  t.is((await run(undefined, 'sh', ['-c', 'kill -9 $$'])).code, 128);
  await t.throwsAsync(run(undefined, 'mesh-cni-no-such-program', [], { packageHint: 'iptables' }), { message: /not found in PATH/ });
  const started = Date.now();
  await t.throwsAsync(run(undefined, 'sleep', ['30'], { timeoutMs: 300 }), { message: /timed out after 300 ms/ });
  t.true(Date.now() - started < 10_000, 'the program was killed, not waited for');
});

test('the child starts in the netns asked for, with default signals and only fds 0-2 of ours', async (t) => {
  requireKernelTools(t);
  const name = createNetns(t, 'spawn');
  inNetns(name, 'ip', ['link', 'add', 'mcni-spawn0', 'type', 'veth', 'peer', 'name', 'mcni-spawn1']);
  const links = await run(netnsPath(name), 'ip', ['-o', 'link', 'show']);
  t.regex(links.stdout, /mcni-spawn0/);
  t.notRegex((await run(undefined, 'ip', ['-o', 'link', 'show'])).stdout, /mcni-spawn0/, 'and this process stayed where it was');
  // With SIGPIPE ignored (Node's own setting) `yes` would complain of a broken pipe instead of dying quietly.
  const pipe = await run(undefined, 'sh', ['-c', 'yes | head -c 1 >/dev/null; grep -E "^Sig(Ign|Blk)" /proc/self/status']);
  t.is(pipe.stderr, '');
  t.regex(pipe.stdout, /SigBlk:\s+0+\n/);
  // Signals 1-31 at their defaults (glibc's spawn leaves its own two internal real-time signals, 32 and 33, ignored).
  const ignored = BigInt(`0x${/SigIgn:\s+([0-9a-f]+)/.exec(pipe.stdout)?.[1] ?? 'ff'}`);
  t.is(ignored & 0x7fffffffn, 0n, `SigIgn ${ignored.toString(16)}`);
  // Our sockets, netns and lock files are close-on-exec; only the three standard descriptors are handed on.
  const fds = await run(undefined, 'sh', ['-c', 'ls /proc/$$/fd']);
  t.deepEqual(fds.stdout.trim().split(/\s+/).map(Number).filter((fd) => fd > 2 && fd < 200), [], fds.stdout);
});
