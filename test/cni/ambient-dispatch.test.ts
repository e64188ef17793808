/**
 * The CNI path of an ambient pod, in-process: with the netconf's `ambient` on, a pod the enablement selectors
 * capture goes to the agent's ambient handler (rules, then ztunnel's ack); the standalone engine, which has
 * none, answers 11 so the runtime retries until the agent is back; DEL tells the handler after removing rules.
 */
import test from 'ava';
import type { AmbientHandler } from '../../src/standalone/wiring';
import type { PodCache } from '../../src/kube/pod-lookup';
import { podInfoFromPod } from '../../src/kube/pod-api';
import { netconf, run, unitDeps } from './helpers';

const AMBIENT_NETCONF = netconf({ ambient: { enabled: true }, kubernetes: { kubeconfig: '/nonexistent/kubeconfig' } });

function cache(labels: Record<string, string>, nsLabels: Record<string, string>, annotations: Record<string, string> = {}): PodCache {
  const pod = podInfoFromPod({ metadata: { name: 'cart-7d9', namespace: 'shop', uid: 'uid-1', labels, annotations }, spec: { containers: [{ name: 'cart' }] } });
  return { lookup: () => pod, namespaceLabels: async () => nsLabels, watching: () => true };
}

function handler(fail?: Error): AmbientHandler & { added: unknown[]; gone: string[] } {
  const added: unknown[] = [];
  const gone: string[] = [];
  return {
    added,
    gone,
    node: { dnsCapture: false, ipv6: true, hostProbeSnatIpv4: '169.254.7.127', hostProbeSnatIpv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff' },
    add: async (a) => {
      added.push(a);
      if (fail) throw fail;
      return { backend: 'iptables-nft', rules: 14 };
    },
    deleted: async (pod) => void gone.push(pod.podUid ?? ''),
  };
}

const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0' }], ips: [{ address: '10.1.0.7/24', interface: 0 }, { address: 'fd10::7/64', interface: 0 }] };

test('an ambient pod goes to the agent\'s handler with its config, netns and the addresses of prevResult', async (t) => {
  const amb = handler();
  const deps = unitDeps({ podCache: cache({ 'istio.io/dataplane-mode': 'ambient' }, {}), ambient: amb });
  const r = await run('ADD', { ...AMBIENT_NETCONF, prevResult }, deps);
  t.is(r.exitCode, 0, r.stdout);
  t.is(amb.added.length, 1);
  const a = amb.added[0] as Parameters<AmbientHandler['add']>[0];
  t.is(a.netns, '/var/run/netns/cni-test');
  t.deepEqual(a.ips, ['10.1.0.7', 'fd10::7']);
  t.is(a.pod.podUid, 'uid-1');
  t.false(a.config.dnsCapture, "the agent's node settings reach the config");
  t.is(deps.engine.calls.length, 0, 'the sidecar engine is not asked');
  t.regex(r.stderr, /"dataplane":"ambient"/);
});

test('a bad ambient annotation fails the ADD with 101 before ztunnel or any rule is asked for', async (t) => {
  const amb = handler();
  const deps = unitDeps({ podCache: cache({ 'istio.io/dataplane-mode': 'ambient' }, {}, { 'ambient.istio.io/bypass-inbound-capture': 'yes' }), ambient: amb });
  const r = await run('ADD', { ...AMBIENT_NETCONF, prevResult }, deps);
  t.is(r.exitCode, 1);
  t.is(r.json.code, 101);
  t.regex(r.json.msg, /bypass-inbound-capture/);
  t.is(amb.added.length, 0);
  t.is(deps.engine.calls.length, 0);
});

test('the standalone engine (no ambient handler) answers 11 for an ambient pod and programs nothing', async (t) => {
  const deps = unitDeps({ podCache: cache({}, { 'istio.io/dataplane-mode': 'ambient' }) });
  const r = await run('ADD', AMBIENT_NETCONF, deps);
  t.is(r.exitCode, 1);
  t.is(r.json.code, 11);
  t.regex(r.json.msg, /is ambient: only the mesh-cni agent can hand it to ztunnel/);
  t.is(deps.engine.calls.length, 0);
});

test('a failed handover fails the ADD with the handler\'s error', async (t) => {
  const { ZtunnelUnavailableError } = await import('../../src/errors');
  const deps = unitDeps({ podCache: cache({ 'istio.io/dataplane-mode': 'ambient' }, {}), ambient: handler(new ZtunnelUnavailableError('no ztunnel is connected to /var/run/ztunnel/ztunnel.sock')) });
  const r = await run('ADD', AMBIENT_NETCONF, deps);
  t.is(r.exitCode, 1);
  t.is(r.json.code, 11);
  t.regex(r.json.msg, /no ztunnel is connected/);
});

test('ambient off in the netconf: the labelled pod is skipped (reason ambient), the handler is not asked', async (t) => {
  const amb = handler();
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: '/nonexistent/kubeconfig' } }), unitDeps({ podCache: cache({ 'istio.io/dataplane-mode': 'ambient' }, {}), ambient: amb }));
  t.is(r.exitCode, 0);
  t.is(amb.added.length, 0);
  t.regex(r.stderr, /"reason":"ambient"/);
});

test('DEL removes the rules, then tells the handler (DelWorkload for the pod uid)', async (t) => {
  const amb = handler();
  const deps = unitDeps({ ambient: amb });
  const r = await run('DEL', AMBIENT_NETCONF, deps);
  t.is(r.exitCode, 0);
  t.deepEqual(deps.engine.calls.map((c) => c.fn), ['remove']);
  t.deepEqual(amb.gone, ['uid-1']);
});
