/** One-valued options given twice are usage errors (exit 2, naming the option), never a crash. */
import test from 'ava';
import { mesh } from '../support/cli';

test('agent --socket given twice is a usage error, not a TypeError', (t) => {
  const r = mesh(['agent', '--socket', '/tmp/mesh-cni-a.sock', '--socket', '/tmp/mesh-cni-b.sock', '--no-kubernetes', '--no-install', '--health-port', '0']);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /--socket was given 2 times/);
  t.notRegex(r.stderr, /TypeError|must be of type string/);
});

test('status --state-dir given twice is a usage error', (t) => {
  const r = mesh(['status', '--state-dir', '/tmp/a', '--state-dir', '/tmp/b']);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /--state-dir was given 2 times/);
});
