/**
 * The agent's Event about its node (a primary CNI that keeps removing our entry, src/installer/fight.ts),
 * created through a real kube-apiserver: accepted, in `default`, about the Node, as `kubectl describe node`
 * finds it.
 */
import test from 'ava';
import * as k8s from '@kubernetes/client-node';
import { recordNodeEvent } from '../../src/kube/actions';
import { startKube, type Kube } from '../support/kube';

let kube: Kube | undefined;
test.before(async () => {
  kube = await startKube();
});
test.after.always(async () => {
  await kube?.stop();
});

test.serial('a node Event is accepted by the API server and names the node, the reason and the advice (message cut to 1 KiB)', async (t) => {
  const config = new k8s.KubeConfig();
  config.loadFromFile(kube!.kubeconfig);
  const node = `node-event-${process.pid}`;
  const message = `the primary CNI keeps removing our entry ... set cni.exclusive=false ${'x'.repeat(2000)}`;
  await recordNodeEvent(config, node, 'PrimaryCNIFight', message, 'Warning');
  const events = await config.makeApiClient(k8s.CoreV1Api).listNamespacedEvent({ namespace: 'default', fieldSelector: `involvedObject.name=${node}` });
  t.is(events.items.length, 1);
  const e = events.items[0];
  t.is(e.involvedObject.kind, 'Node');
  t.is(e.reason, 'PrimaryCNIFight');
  t.is(e.type, 'Warning');
  t.is(e.source?.component, 'mesh-cni');
  t.true(e.message!.includes('cni.exclusive=false'));
  t.is(e.message!.length, 1024);
});
