/**
 * Fault: an ADD fails and taking its rules out again fails too. The answer must say so (code 100, the rules
 * left listed in `details`), never "the rules were not applied", and CHECK (what the reconciler asks) must
 * call the netns broken even when its rules cannot be read.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runCni } from '../../src/cni/dispatch';
import { applyRedirect, checkRedirect, removeRedirect, showRedirect } from '../../src/redirect/engine';
import { NftablesBackend, nftProgram } from '../../src/redirect/nftables/backend';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { toCniError } from '../../src/errors';
import { createPodPeer, netnsPath } from '../support/netns';
import { requireKernelTools, requireNft } from '../support/require';
import { testTempDir } from '../support/tmp';
import { INJECTED } from '../cni/helpers';

function realProgram(name: string): string {
  const found = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].map((d) => path.join(d, name)).find((p) => fs.existsSync(p));
  if (!found) throw new Error(`${name} not found: install the iptables package`);
  return found;
}

/** A stand-in that fails its first `failures` calls (exit 1, nothing done) and then runs the real program. */
function flaky(dir: string, name: string, failures: number): void {
  const counter = path.join(dir, `${name}.calls`);
  fs.writeFileSync(
    path.join(dir, name),
    `#!/bin/sh\nn=$(cat ${counter} 2>/dev/null || echo 0); echo $((n+1)) > ${counter}\nif [ "$n" -lt ${failures} ]; then cat >/dev/null; echo "${name}: injected fault" >&2; exit 1; fi\nexec ${realProgram(name)} "$@"\n`,
    { mode: 0o755 },
  );
}

function withPath(t: ExecutionContext, dir: string): void {
  const before = process.env.PATH;
  process.env.PATH = `${dir}:${before}`;
  t.teardown(() => {
    process.env.PATH = before;
  });
}

test.serial('fault rollback-save: a dual-stack ADD whose rollback cannot save answers 100 with the rules left, and CHECK calls the netns broken', async (t) => {
  requireKernelTools(t);
  const dir = testTempDir(t, 'rollback-ipt');
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  // IPv6's restore always fails (the ADD fails after IPv4 committed); IPv4's save fails once: the rollback's.
  flaky(bin, 'ip6tables-nft-restore', 1000);
  flaky(bin, 'iptables-nft-save', 1);
  const pp = createPodPeer(t);
  withPath(t, bin);
  const conf = { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables-nft', log_file: path.join(dir, 'cni.log'), state_dir: dir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED } };
  const r = await runCni(
    { env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'rb1', CNI_NETNS: pp.podPath, CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart' }, stdin: Buffer.from(JSON.stringify(conf)) },
    { defaultLogFile: null },
  );
  const json = JSON.parse(r.stdout);
  t.is(r.exitCode, 1);
  t.is(json.code, 100, r.stdout);
  t.regex(json.msg, /removing the rules again failed too/);
  t.regex(json.details, /rules left in .*\n.*ipv4 nat\/ISTIO_OUTPUT/s, json.details);
  t.notRegex(json.details, /the rules were not applied\s*$/);
  // Even with its rules unreadable, the netns is not healthy to CHECK (and so to the reconciler).
  flaky(bin, 'iptables-nft-save', 1000);
  flaky(bin, 'ip6tables-nft-save', 1000);
  const check = await checkRedirect({ netns: pp.podPath, config: redirectConfigFromAnnotations(INJECTED), backend: 'iptables-nft' });
  t.false(check.ok);
  t.regex(check.problems.join('\n'), /failed rollback/);
  process.env.PATH = process.env.PATH!.split(':').slice(1).join(':');
  await removeRedirect({ netns: pp.podPath, backend: 'iptables-nft' });
  t.is((await showRedirect({ netns: pp.podPath, backend: 'iptables-nft' })).rules.length, 0);
  t.log('fault rollback-save: 1 trial, code 100 with the rules left listed, CHECK broken while unreadable');
});

test.serial('fault rollback-nft: an nft that commits and then exits 1, twice, gives 100 listing the rules left', async (t) => {
  requireKernelTools(t);
  requireNft(t);
  const dir = testTempDir(t, 'rollback-nft');
  const fake = path.join(dir, 'nft');
  const counter = path.join(dir, 'calls');
  // The first script (the apply) is committed and then reported as failed; the second (the rollback's
  // delete) fails without doing anything; listings work.
  fs.writeFileSync(
    fake,
    `#!/bin/sh\nif [ "$1" = "-f" ]; then n=$(cat ${counter} 2>/dev/null || echo 0); echo $((n+1)) > ${counter}\n  if [ "$n" = 0 ]; then ${nftProgram()} "$@"; echo "Error: injected fault after commit" >&2; exit 1; fi\n  cat >/dev/null; echo "Error: injected fault" >&2; exit 1\nfi\nexec ${nftProgram()} "$@"\n`,
    { mode: 0o755 },
  );
  const pp = createPodPeer(t, { ipv6: false });
  const err = await t.throwsAsync(applyRedirect({ netns: pp.podPath, config: redirectConfigFromAnnotations(INJECTED), backendInstance: new NftablesBackend({ nft: fake }) }));
  const cni = toCniError(err);
  t.is(cni.cniCode, 100);
  t.regex(cni.message, /rule\(s\) of ours are left/);
  t.regex(cni.details ?? '', /ipv4 nat\/istio-output/, cni.details);
  const left = await showRedirect({ netns: netnsPath(pp.pod), backend: 'nftables' });
  t.true(left.rules.length > 0, 'the injected fault really left rules');
  await removeRedirect({ netns: pp.podPath, backend: 'nftables' });
  t.log(`fault rollback-nft: 1 trial, code 100 listing ${left.rules.length} rules left`);
});
