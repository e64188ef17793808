import { redirectConfigFromAnnotations } from '../../src/redirect/config';
/**
 * The kubeconfig reader and the pod GET against a real HTTP server in-process (a stand-in for the API
 * server; the real kube-apiserver suite belongs to the CRI/apiserver tests). Bounded retry, then code 11.
 */
import test from 'ava';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { parseKubeconfig } from '../../src/kube/kubeconfig';
import { podInfoFromPod } from '../../src/kube/pod-api';
import { INJECTED, logDir, netconf, run, unitDeps } from '../cni/helpers';

const KUBECTL_STYLE = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: ${Buffer.from('CA PEM').toString('base64')}
    server: https://10.0.0.1:6443
  name: kind
contexts:
- context:
    cluster: kind
    user: mesh-cni # the service account
  name: mesh-cni@kind
current-context: "mesh-cni@kind"
kind: Config
preferences: {}
users:
- name: mesh-cni
  user:
    token: 'abc''def'
`;

test('kubeconfig: a multi-document or unparsable file is refused with code 105', (t) => {
  for (const text of ['a: 1\n---\nb: 2\n', 'clusters: [unclosed\n']) {
    const err = t.throws(() => parseKubeconfig(text, '/etc/mesh-cni/kubeconfig'));
    t.regex(err!.message, /cannot parse/);
  }
});

test('kubeconfig: current context, server, CA data and token', (t) => {
  const k = parseKubeconfig(KUBECTL_STYLE, '/etc/mesh-cni/kubeconfig');
  t.is(k.server.href, 'https://10.0.0.1:6443/');
  t.is(k.ca?.toString(), 'CA PEM');
  t.is(k.token, "abc'def");
  t.false(k.insecureSkipTlsVerify);
});

test('kubeconfig as JSON, with tokenFile and file paths relative to the kubeconfig', (t) => {
  writeFileSync(join(logDir, 'token'), 'file-token\n');
  writeFileSync(join(logDir, 'ca.crt'), 'CA FILE');
  const json = JSON.stringify({
    'current-context': 'c',
    contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
    clusters: [{ name: 'k', cluster: { server: 'http://127.0.0.1:8080', 'certificate-authority': 'ca.crt', 'insecure-skip-tls-verify': true } }],
    users: [{ name: 'u', user: { tokenFile: 'token' } }],
  });
  const k = parseKubeconfig(json, join(logDir, 'kubeconfig'));
  t.is(k.token, 'file-token');
  t.is(k.ca?.toString(), 'CA FILE');
  t.true(k.insecureSkipTlsVerify);
});

test('kubeconfig errors never quote credentials', (t) => {
  const bad = KUBECTL_STYLE.replace("token: 'abc''def'", 'exec: {"command": "aws"}\n    token: sekret');
  const err = t.throws(() => parseKubeconfig(bad, '/k'));
  t.regex(err!.message, /exec/);
  t.notRegex(err!.message, /sekret/);
});

test('PodInfo from a pod: containers with their lists, proxy uid/gid and env from istio-proxy', (t) => {
  const info = podInfoFromPod({
    metadata: { name: 'p', namespace: 'n', uid: 'u', labels: { app: 'x' }, annotations: INJECTED },
    spec: {
      initContainers: [{ name: 'istio-validation' }],
      containers: [{ name: 'app' }, { name: 'istio-proxy', securityContext: { runAsUser: 1337, runAsGroup: 1338 }, env: [{ name: 'ISTIO_META_DNS_CAPTURE', value: 'true' }] }],
    },
  });
  t.like(info, { name: 'p', namespace: 'n', uid: 'u' });
  t.deepEqual(info.containers, [
    { name: 'istio-validation', list: 'initContainers' },
    { name: 'app', list: 'containers' },
    { name: 'istio-proxy', list: 'containers' },
  ]);
  t.deepEqual(info.proxy, { lists: ['containers'], env: { ISTIO_META_DNS_CAPTURE: 'true' }, runAsUser: 1337, runAsGroup: 1338 });
});

async function fakeApiServer(handler: http.RequestListener): Promise<{ url: string; close: () => Promise<void>; hits: string[] }> {
  const hits: string[] = [];
  const server = http.createServer((req, res) => {
    hits.push(`${req.method} ${req.url} ${req.headers.authorization ?? ''}`);
    handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, hits, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

function kubeconfigFor(url: string, name: string): string {
  const path = join(logDir, name);
  writeFileSync(
    path,
    `current-context: c\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\nclusters:\n- name: k\n  cluster:\n    server: ${url}\nusers:\n- name: u\n  user:\n    token: test-token\n`,
  );
  return path;
}

const pod = {
  metadata: { name: 'cart-7d9', namespace: 'shop', uid: 'uid-1', annotations: INJECTED },
  spec: { containers: [{ name: 'cart' }, { name: 'istio-proxy', securityContext: { runAsUser: 1500 } }] },
};

test.serial('ADD reads the pod with the netconf kubeconfig, after it becomes visible', async (t) => {
  let calls = 0;
  const api = await fakeApiServer((_req, res) => {
    calls++;
    if (calls < 3) {
      res.writeHead(404).end('{"kind":"Status","code":404}');
    } else {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(pod));
    }
  });
  t.teardown(api.close);
  let proxySeen: unknown;
  const deps = unitDeps({
    podLookupTimeoutMs: 5000,
    buildConfig: (annotations, proxy) => {
      proxySeen = proxy;
      return redirectConfigFromAnnotations(annotations, proxy);
    },
  });
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(api.url, 'kc-ok') } }), deps);
  t.is(r.exitCode, 0, r.stdout);
  t.is(api.hits.length, 3);
  t.is(api.hits[0], 'GET /api/v1/namespaces/shop/pods/cart-7d9 Bearer test-token');
  t.deepEqual(proxySeen, { proxyUid: 1500 });
  t.like(JSON.parse(r.stderr), { source: 'api', decision: 'meshed' });
  t.notRegex(r.stderr, /test-token/);
});

test.serial('ADD with annotations from the runtime still reads the spec when a kubeconfig is set', async (t) => {
  const api = await fakeApiServer((_req, res) => res.writeHead(200).end(JSON.stringify(pod)));
  t.teardown(api.close);
  const deps = unitDeps();
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(api.url, 'kc-rt') }, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED } }), deps);
  t.is(r.exitCode, 0, r.stdout);
  t.is(api.hits.length, 1);
});

test.serial('a non-injected pod with runtime annotations costs no API call', async (t) => {
  const api = await fakeApiServer((_req, res) => res.writeHead(500).end());
  t.teardown(api.close);
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(api.url, 'kc-none') }, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': {} } }));
  t.is(r.exitCode, 0);
  t.is(api.hits.length, 0);
});

test.serial('an API that keeps failing gives code 11 after the bounded wait, and no rules', async (t) => {
  const api = await fakeApiServer((_req, res) => res.writeHead(503).end());
  t.teardown(api.close);
  const deps = unitDeps({ podLookupTimeoutMs: 700 });
  const started = Date.now();
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(api.url, 'kc-down') } }), deps);
  const elapsed = Date.now() - started;
  t.is(r.json.code, 11, r.stdout);
  t.true(elapsed >= 600 && elapsed < 3000, `waited ${elapsed} ms`);
  t.true(api.hits.length >= 3, `retried ${api.hits.length} times`);
  t.deepEqual(deps.engine.calls, []);
});

test.serial('an API that is down (connection refused) gives code 11', async (t) => {
  const api = await fakeApiServer(() => undefined);
  await api.close();
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(api.url, 'kc-refused') } }), unitDeps({ podLookupTimeoutMs: 300 }));
  t.is(r.json.code, 11);
  t.regex(r.json.details as string, /ECONNREFUSED/);
});

test.serial('403 from the API is final: code 104 without waiting', async (t) => {
  const api = await fakeApiServer((_req, res) => res.writeHead(403).end());
  t.teardown(api.close);
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(api.url, 'kc-403') } }), unitDeps({ podLookupTimeoutMs: 10_000 }));
  t.is(r.json.code, 104);
  t.is(api.hits.length, 1);
});

test.serial('a pod without sidecar status: its namespace is read (once, best effort) to tell ambient from the rest', async (t) => {
  const plainPod = { metadata: { name: 'cart-7d9', namespace: 'shop', uid: 'uid-1', labels: {}, annotations: {} }, spec: { containers: [{ name: 'cart' }] } };
  const injectedPod = { ...pod, metadata: { ...pod.metadata, labels: {} } };
  const respond = (nsStatus: number, body: unknown) =>
    fakeApiServer((req, res) => {
      if (req.url === '/api/v1/namespaces/shop') res.writeHead(nsStatus).end(JSON.stringify({ metadata: { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } } }));
      else res.writeHead(200).end(JSON.stringify(body));
    });
  const ambient = await respond(200, plainPod);
  t.teardown(ambient.close);
  const r = await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(ambient.url, 'kc-amb') } }), unitDeps());
  t.like(JSON.parse(r.stderr), { decision: 'skipped', reason: 'ambient', source: 'api' });
  t.deepEqual(ambient.hits.map((h) => h.split(' ')[1]), ['/api/v1/namespaces/shop/pods/cart-7d9', '/api/v1/namespaces/shop']);

  const refused = await respond(403, plainPod);
  t.teardown(refused.close);
  const r2 = await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(refused.url, 'kc-ns403') } }), unitDeps());
  t.is(r2.exitCode, 0, 'the pod is skipped either way: a namespace that cannot be read never fails the ADD');
  const line = JSON.parse(r2.stderr);
  t.like(line, { decision: 'skipped', reason: 'no-istio-proxy' });
  t.regex(line.notes.join('\n'), /namespace shop not readable .*403.*ambient label was not checked/);

  const sidecar = await respond(200, injectedPod);
  t.teardown(sidecar.close);
  await run('ADD', netconf({ kubernetes: { kubeconfig: kubeconfigFor(sidecar.url, 'kc-sc') } }), unitDeps());
  t.is(sidecar.hits.length, 1, 'an injected pod never costs the namespace read');
});
