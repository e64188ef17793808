/**
 * Fault injection: kube-apiserver stops while pods are being added (the runtime passes no annotations, so
 * the plugin must read each pod from the API). ADDs in flight end fully programmed or with code 11 and no
 * rules; while it is down every ADD answers 11 after the bounded wait; once it is back the next ADD succeeds.
 */
import test from 'ava';
import * as path from 'node:path';
import { showRedirect } from '../../src/redirect/engine';
import { startKube, type Kube } from '../support/kube';
import { execShim, type ShimRun } from '../support/shim';
import { testTempDir } from '../support/tmp';
import { requireKernelTools } from '../support/require';
import { createNetns, netnsPath } from '../support/netns';
import { STATUS_ANNOTATION } from '../cni/helpers';

const LOOKUP_TIMEOUT_MS = 1500;
let kube: Kube | undefined;

test.before(async () => {
  kube = await startKube();
});
test.after.always(async () => {
  await kube?.stop();
});

test.serial('fault api-outage: ADDs during an API outage end programmed or with 11 and no rules; after it, ADD succeeds', async (t) => {
  requireKernelTools(t);
  t.timeout(120_000);
  const dir = testTempDir(t, 'fault-api');
  const pods = Array.from({ length: 8 }, (_, i) => `api-${i}`);
  for (const name of pods) {
    await kube!.createPod({ namespace: 'shop', name, containers: ['app', 'istio-proxy'], annotations: { 'sidecar.istio.io/status': STATUS_ANNOTATION } });
  }
  const netconf = { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables-nft', log_file: path.join(dir, 'cni.log'), state_dir: dir, kubernetes: { kubeconfig: kube!.kubeconfig } };
  const add = (name: string, netns: string): Promise<ShimRun> =>
    execShim(
      {
        CNI_COMMAND: 'ADD',
        CNI_CONTAINERID: name,
        CNI_NETNS: netnsPath(netns),
        CNI_IFNAME: 'eth0',
        CNI_ARGS: `K8S_POD_NAMESPACE=shop;K8S_POD_NAME=${name}`,
        MESH_CNI_AGENT_SOCKET: path.join(dir, 'no-agent.sock'),
        MESH_CNI_POD_LOOKUP_TIMEOUT_MS: String(LOOKUP_TIMEOUT_MS),
        MESH_CNI_LOG_FILE: path.join(dir, 'cni.log'),
      },
      netconf,
    );
  const netns = pods.map(() => createNetns(t, 'api'));
  const rules = async (i: number) => (await showRedirect({ netns: netnsPath(netns[i]), backend: 'iptables-nft' })).rules.length;

  // Six ADDs start; the API goes away while they run.
  const inFlight = [0, 1, 2, 3, 4, 5].map((i) => add(pods[i], netns[i]));
  await new Promise((r) => setTimeout(r, 60));
  await kube!.stopApiserver();
  const results = await Promise.all(inFlight);
  let programmed = 0;
  let retry = 0;
  const partial: string[] = [];
  for (const [i, r] of results.entries()) {
    const n = await rules(i);
    if (r.code === 0 && n > 0) programmed++;
    else if (r.code !== 0 && r.json?.code === 11 && n === 0) retry++;
    else partial.push(`${pods[i]}: exit ${r.code} ${r.stdout}, ${n} rules`);
  }

  // While it is down: 11 after the bounded wait, nothing programmed.
  const started = Date.now();
  const down = await add(pods[6], netns[6]);
  const waited = Date.now() - started;
  t.is(down.json?.code, 11, down.stdout);
  t.regex(down.json?.msg ?? '', /API|pod/i);
  t.true(waited >= LOOKUP_TIMEOUT_MS, `answered after ${waited} ms, not before the bounded wait`);
  t.is(await rules(6), 0);

  // Back up: the next ADD succeeds.
  await kube!.startApiserver();
  const up = await add(pods[7], netns[7]);
  t.is(up.code, 0, up.stdout + up.stderr);
  t.true((await rules(7)) > 0);

  t.log(`fault api-outage: ${results.length} ADDs in flight at the outage: ${programmed} programmed, ${retry} answered 11 with no rules, ${partial.length} partial; down: 11 after ${waited} ms; back up: ADD succeeded`);
  t.deepEqual(partial, []);
  t.true(retry > 0 || programmed === results.length, 'the outage was exercised or every ADD finished first');
});
