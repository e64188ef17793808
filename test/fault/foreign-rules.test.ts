/**
 * Fault: another component's rules in the built-in chains we use, of the very shapes ours have
 * (`-A PREROUTING -i v0 -j RETURN`, TPROXY marks, conntrack zones). Our owner tag is what tells them apart:
 * DEL on a never-meshed netns, ADD, a repeated ADD and DEL must all leave them exactly as they were. And
 * rules an earlier release wrote without the tag are still recognised and replaced (kept for one release).
 */
import test from 'ava';
import * as path from 'node:path';
import { runCni } from '../../src/cni/dispatch';
import { applyRedirect, checkRedirect, removeRedirect, showRedirect } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { buildPlan } from '../../src/redirect/plan';
import { renderRestore, stripOwnerTags } from '../../src/redirect/iptables/render';
import { createNetns, inNetns, netnsPath } from '../support/netns';
import { requireKernelTools } from '../support/require';
import { testTempDir } from '../support/tmp';
import { INJECTED } from '../cni/helpers';

/** Someone else's rules, one or more in every built-in chain our plans write to, shaped like ours. */
const FOREIGN: Array<[table: string, chain: string, spec: string]> = [
  ['nat', 'PREROUTING', '-i v0 -j RETURN'],
  ['nat', 'OUTPUT', '-o v0 -j RETURN'],
  ['mangle', 'PREROUTING', '-i v0 -j RETURN'],
  ['mangle', 'PREROUTING', '-p tcp -m mark --mark 0x539 -j CONNMARK --save-mark'],
  ['mangle', 'OUTPUT', '-o v0 -j RETURN'],
  ['mangle', 'OUTPUT', '-o lo -p tcp -m mark --mark 0x539 -j RETURN'],
  ['mangle', 'OUTPUT', '! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 2000 -j MARK --set-xmark 0x53a/0xffffffff'],
  ['mangle', 'OUTPUT', '-p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark'],
  ['raw', 'PREROUTING', '-p udp -m udp --sport 53 -j CT --zone 1'],
  ['raw', 'OUTPUT', '-o v0 -j RETURN'],
];

const CONFIGS: Record<string, Record<string, string>> = {
  redirect: { ...INJECTED, 'traffic.sidecar.istio.io/excludeInterfaces': 'v1' },
  tproxy: { ...INJECTED, 'sidecar.istio.io/interceptionMode': 'TPROXY', 'traffic.sidecar.istio.io/excludeInterfaces': 'v1' },
};

function plant(ns: string, flavour: 'nft' | 'legacy'): void {
  for (const [table, chain, spec] of FOREIGN) inNetns(ns, `iptables-${flavour}`, ['-t', table, '-A', chain, ...spec.split(' ')]);
}

/** The foreign rules missing from the netns, as iptables-save prints them. */
function missingForeign(ns: string, flavour: 'nft' | 'legacy', expected: string[]): string[] {
  const saved = inNetns(ns, `iptables-${flavour}-save`, []);
  const missing: string[] = [];
  for (const line of expected) if (!saved.split('\n').includes(line)) missing.push(line);
  return missing;
}

for (const flavour of ['nft', 'legacy'] as const) {
  for (const [configName, annotations] of Object.entries(CONFIGS)) {
    test.serial(`fault foreign-rules iptables-${flavour} ${configName}: DEL, ADD, re-ADD, remove and DEL leave another component's same-shaped rules alone`, async (t) => {
      requireKernelTools(t);
      const backend = `iptables-${flavour}` as const;
      const dir = testTempDir(t, 'foreign');
      const ns = createNetns(t, 'foreign');
      const p = netnsPath(ns);
      // Planted, then read back as iptables-save prints them (it spells out modules and masks).
      const before = inNetns(ns, `iptables-${flavour}-save`, []);
      plant(ns, flavour);
      const foreign = inNetns(ns, `iptables-${flavour}-save`, [])
        .split('\n')
        .filter((l) => l.startsWith('-A ') && !before.includes(l));
      t.is(foreign.length, FOREIGN.length);
      const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend, log_file: path.join(dir, 'cni.log'), state_dir: dir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': annotations } });
      const call = async (command: string) => {
        const r = await runCni({ env: { CNI_COMMAND: command, CNI_CONTAINERID: 'foreign1', CNI_NETNS: p, CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart' }, stdin: Buffer.from(conf) }, { defaultLogFile: null });
        t.is(r.exitCode, 0, `${command}: ${r.stdout}`);
      };
      const config = redirectConfigFromAnnotations(annotations);
      await call('DEL');
      t.deepEqual(missingForeign(ns, flavour, foreign), [], 'DEL on a never-meshed netns');
      await call('ADD');
      t.deepEqual(missingForeign(ns, flavour, foreign), [], 'ADD');
      t.deepEqual((await checkRedirect({ netns: p, config, backend })).problems, []);
      await call('ADD');
      t.deepEqual(missingForeign(ns, flavour, foreign), [], 're-ADD');
      t.deepEqual((await checkRedirect({ netns: p, config, backend })).problems, []);
      // what `mesh-cni remove` runs
      await removeRedirect({ netns: p, backend });
      t.deepEqual(missingForeign(ns, flavour, foreign), [], 'remove');
      t.is((await showRedirect({ netns: p, backend })).rules.length, 0, 'remove took ours');
      await call('ADD');
      await call('DEL');
      t.deepEqual(missingForeign(ns, flavour, foreign), [], 'DEL');
      t.is((await showRedirect({ netns: p, backend })).rules.length, 0, 'ours are gone');
      t.log(`fault foreign-rules iptables-${flavour} ${configName}: ${foreign.length} foreign rules in 6 built-in chains survived DEL, ADD, re-ADD, remove, ADD, DEL`);
    });
  }

  test.serial(`fault foreign-rules iptables-${flavour}: untagged rules an earlier release wrote are still removed and replaced`, async (t) => {
    requireKernelTools(t);
    const backend = `iptables-${flavour}` as const;
    const config = redirectConfigFromAnnotations(CONFIGS.tproxy);
    const plan = buildPlan(config);
    for (const step of ['remove', 'apply'] as const) {
      const ns = createNetns(t, 'legacy');
      const p = netnsPath(ns);
      inNetns(ns, `iptables-${flavour}-restore`, ['--noflush'], stripOwnerTags(renderRestore(plan.ipv4.rules)));
      const untagged = (await showRedirect({ netns: p, backend, families: ['ipv4'] })).rules;
      t.true(untagged.length > 0 && untagged.every((r) => !r.text.includes('mesh-cni/')));
      if (step === 'remove') {
        await removeRedirect({ netns: p, backend });
        t.is((await showRedirect({ netns: p, backend })).rules.length, 0);
        t.notRegex(inNetns(ns, `iptables-${flavour}-save`, []), /ISTIO|^-A (PREROUTING|OUTPUT)/m);
      } else {
        await applyRedirect({ netns: p, config, backend, families: ['ipv4'] });
        const now = (await showRedirect({ netns: p, backend, families: ['ipv4'] })).rules;
        t.deepEqual((await checkRedirect({ netns: p, config, backend })).problems, []);
        t.is(now.length, untagged.length, 'replaced, not duplicated');
        t.true(now.filter((r) => !r.chain.startsWith('ISTIO')).every((r) => r.text.includes('mesh-cni/')), 'now tagged');
      }
    }
  });
}
