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

test("--exclude-namespaces takes the ConfigMap's one comma-separated value, repeated flags, or none", async (t) => {
  const { default: yargs } = await import('yargs');
  const { excludeNamespacesOption } = await import('../../src/cli/options');
  const parse = (args: string[]) => yargs(args).options(excludeNamespacesOption).parseSync()['exclude-namespaces'];
  t.deepEqual(parse(['--exclude-namespaces=kube-system,istio-system']), ['kube-system', 'istio-system']);
  t.deepEqual(parse(['--exclude-namespaces', 'a', '--exclude-namespaces', 'b, c']), ['a', 'b', 'c']);
  t.deepEqual(parse(['--exclude-namespaces=']), []);
  t.is(parse([]), undefined, 'absent: excludedNamespaces() gives the default');
  const { excludedNamespaces } = await import('../../src/cli/options');
  t.deepEqual(excludedNamespaces({}), ['kube-system']);
  t.deepEqual(excludedNamespaces({ 'exclude-namespaces': [] }), []);
});
