/**
 * Fault: CNI_IFNAME values the kernel accepts but that are unusual as file names (`eth0@x`, `eth+`, `ethé`).
 * The ADD programs the pod and must then succeed: its attachment record can never fail the ADD after the
 * rules are in. Names over 15 bytes are refused before anything is applied.
 */
import test from 'ava';
import * as path from 'node:path';
import { runCni } from '../../src/cni/dispatch';
import { AttachmentStore } from '../../src/state/attachments';
import { showRedirect } from '../../src/redirect/engine';
import { createNetns, netnsPath } from '../support/netns';
import { requireKernelTools } from '../support/require';
import { testTempDir } from '../support/tmp';
import { INJECTED } from '../cni/helpers';

async function cni(command: string, netns: string, ifName: string, dir: string) {
  const conf = { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables-nft', log_file: path.join(dir, 'cni.log'), state_dir: dir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED } };
  const env = { CNI_COMMAND: command, CNI_CONTAINERID: 'ifn1', CNI_NETNS: netns, CNI_IFNAME: ifName, CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart' };
  const r = await runCni({ env, stdin: Buffer.from(JSON.stringify(conf)) }, { defaultLogFile: null });
  return { code: r.exitCode, json: r.stdout ? JSON.parse(r.stdout) : undefined, stdout: r.stdout };
}

for (const ifName of ['eth0@x', 'eth+', 'ethé']) {
  test.serial(`fault ifname ${JSON.stringify(ifName)}: ADD succeeds with its record, DEL removes both`, async (t) => {
    requireKernelTools(t);
    const dir = testTempDir(t, 'ifname');
    const ns = netnsPath(createNetns(t, 'ifn'));
    const add = await cni('ADD', ns, ifName, dir);
    t.is(add.code, 0, add.stdout);
    t.true((await showRedirect({ netns: ns, backend: 'iptables-nft' })).rules.length > 0);
    t.deepEqual(new AttachmentStore(dir).list().map((r) => r.ifName), [ifName]);
    const del = await cni('DEL', ns, ifName, dir);
    t.is(del.code, 0, del.stdout);
    t.is((await showRedirect({ netns: ns, backend: 'iptables-nft' })).rules.length, 0);
    t.deepEqual(new AttachmentStore(dir).list(), []);
  });
}

test.serial('fault ifname: 15 characters but 30 bytes is refused with 4 before any rule', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'ifname');
  const ns = netnsPath(createNetns(t, 'ifn'));
  const add = await cni('ADD', ns, 'é'.repeat(15), dir);
  t.is(add.json?.code, 4, add.stdout);
  t.is((await showRedirect({ netns: ns, backend: 'iptables-nft' })).rules.length, 0);
});
