/**
 * Every error code we document (README, Error codes) produced through the dispatcher, one row each.
 * Codes 1-7 from malformed input are covered in detail in malformed.test.ts; here each appears once.
 */
import test, { type ExecutionContext } from 'ava';
import { CommandFailedError, InvalidConfigError, MeshCniError, NetnsNotFoundError, NotANetnsError, RuleMismatchError } from '../../src/errors';
import { CniCode, CniError, toCniError } from '../../src/errors';
import { RetryableLookupError } from '../../src/errors';
import type { CniDeps } from '../../src/cni/dispatch';
import { INJECTED, netconf, recordingEngine, run, unitDeps, withAnnotations } from './helpers';

interface Row {
  command?: string;
  conf: Record<string, unknown> | string;
  deps?: () => CniDeps;
  env?: Record<string, string | undefined>;
}

const kube = { kubernetes: { kubeconfig: '/etc/mesh-cni/kubeconfig' } };
const instant = { sleep: async () => undefined };

const produces = test.macro({
  async exec(t: ExecutionContext, code: number, row: Row) {
    const r = await run(row.command ?? 'ADD', row.conf, row.deps ? row.deps() : unitDeps(), row.env ?? {});
    t.is(r.exitCode, 1, r.stdout);
    t.is(r.json.code, code, r.stdout);
  },
  title: (title = '', code: number) => `code ${code}: ${title}`,
});

test('incompatible cniVersion', produces, 1, { conf: netconf({}, '2.0.0') });
test('unsupported field', produces, 2, { conf: netconf({ exclude_namespaces: ['x'] }) });
test('container netns unknown', produces, 3, { conf: netconf(), deps: () => unitDeps({ classifyNetns: () => 'missing' }) });
test('container netns vanished while the engine ran', produces, 3, {
  conf: withAnnotations(INJECTED),
  deps: () => unitDeps({ engine: recordingEngine({ applyRedirect: async (o) => Promise.reject(new NetnsNotFoundError(o.netns)) }) }),
});
test('invalid CNI_* environment', produces, 4, { conf: netconf(), env: { CNI_COMMAND: undefined } });
test('engine says CNI_NETNS is not a netns', produces, 4, {
  conf: withAnnotations(INJECTED),
  deps: () => unitDeps({ engine: recordingEngine({ applyRedirect: async (o) => Promise.reject(new NotANetnsError(o.netns)) }) }),
});
test('I/O: stdin too large', produces, 5, { conf: 'x'.repeat(1024 * 1024 + 1) });
test('undecodable stdin', produces, 6, { conf: 'not json' });
test('invalid network config', produces, 7, { conf: netconf({ backend: 'bpf' }) });
test('no source of pod metadata configured', produces, 7, { conf: netconf() });
test('pod not visible in the API within the bounded wait', produces, 11, {
  conf: netconf(kube),
  deps: () =>
    unitDeps({
      ...instant,
      podLookupTimeoutMs: 50,
      fetchPod: async () => Promise.reject(new RetryableLookupError('API server answered 404')),
    }),
});
test('API reachable but the pod is a different incarnation (uid) until the deadline', produces, 11, {
  conf: netconf(kube),
  deps: () => unitDeps({ ...instant, podLookupTimeoutMs: 30, fetchPod: async () => ({ metadata: { name: 'cart-7d9', namespace: 'shop', uid: 'old-uid', annotations: INJECTED } }) }),
});
test('STATUS: engine cannot serve ADDs', produces, 50, {
  command: 'STATUS',
  conf: netconf({}, '1.1.0'),
  deps: () => unitDeps({ status: async () => Promise.reject(new CniError(50, 'no iptables')) }),
});
test('STATUS: limited connectivity', produces, 51, {
  command: 'STATUS',
  conf: netconf({}, '1.1.0'),
  deps: () => unitDeps({ status: async () => Promise.reject(new CniError(51, 'agent lost its cache')) }),
});
test('redirect engine failed', produces, 100, {
  conf: withAnnotations(INJECTED),
  deps: () => unitDeps({ engine: recordingEngine({ applyRedirect: async () => Promise.reject(new CommandFailedError('iptables-restore', 2, 'bad rule')) }) }),
});
test('invalid pod annotation', produces, 101, { conf: withAnnotations({ ...INJECTED, 'traffic.sidecar.istio.io/includeOutboundIPRanges': 'not-a-cidr' }) });
test('rules differ after apply', produces, 102, {
  conf: withAnnotations(INJECTED),
  deps: () => unitDeps({ engine: recordingEngine({ applyRedirect: async () => Promise.reject(new RuleMismatchError('read back differs', '-A X')) }) }),
});
test('CHECK finds rules missing', produces, 103, {
  command: 'CHECK',
  conf: withAnnotations(INJECTED),
  deps: () => unitDeps({ engine: recordingEngine({ checkRedirect: async () => ({ ok: false, problems: ['chain ISTIO_OUTPUT missing'] }) }) }),
});
test('API refuses the lookup (403)', produces, 104, {
  conf: netconf(kube),
  deps: () => unitDeps({ fetchPod: async () => Promise.reject(new CniError(104, 'GET pod: 403')) }),
});
test('kubeconfig missing', produces, 105, { conf: netconf({ kubernetes: { kubeconfig: '/nonexistent/kubeconfig' } }) });
test('anything unanticipated', produces, 999, {
  conf: withAnnotations(INJECTED),
  deps: () => unitDeps({ engine: recordingEngine({ applyRedirect: async () => Promise.reject(new TypeError('undefined is not a function')) }) }),
});

const maps = test.macro({
  exec(t: ExecutionContext, err: unknown, code: number) {
    t.is(toCniError(err).cniCode, code);
  },
  title: (title = '', _e, code: number) => `toCniError: ${title} → ${code}`,
});
test('InvalidConfigError', maps, new InvalidConfigError('k', 'v', 'why'), CniCode.InvalidPodAnnotation);
test('NetnsNotFoundError', maps, new NetnsNotFoundError('/x'), CniCode.UnknownContainer);
test('NotANetnsError', maps, new NotANetnsError('/x'), CniCode.InvalidEnvironment);
test('RuleMismatchError', maps, new RuleMismatchError('m', 'd'), CniCode.RuleMismatch);
test('CommandFailedError', maps, new CommandFailedError('nft', null, 'ENOENT'), CniCode.RedirectFailed);
test('another MeshCniError', maps, new MeshCniError('setns failed'), CniCode.RedirectFailed);
test('a string', maps, 'boom', CniCode.Internal);

test('the CHECK failure lists the engine’s problems in details', async (t) => {
  const deps = unitDeps({ engine: recordingEngine({ checkRedirect: async () => ({ ok: false, problems: ['a missing', 'b differs'] }) }) });
  const r = await run('CHECK', withAnnotations(INJECTED), deps);
  t.is(r.json.details, 'a missing\nb differs');
});

test('a MeshCniError hint travels in details', (t) => {
  t.regex(toCniError(new NetnsNotFoundError('/x')).details ?? '', /hint: the pod sandbox may already be gone/);
});
