/**
 * Fault: many ADDs into one netns at once (overlapping runtime retries, a repair racing an ADD). Every ADD
 * that answers 0 must leave the netns fully programmed. Each trial runs 10 ADDs together: 5 in this process
 * (as the agent serves them, one event loop) and 5 standalone plugin processes (as the shim runs them when
 * the agent is away), so both the in-process queue and the cross-process lock on the netns are exercised.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { runCni } from '../../src/cni/dispatch';
import { applyRedirect, checkRedirect, type BackendName } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { createNetns, netnsPath } from '../support/netns';
import { requireKernelTools, requireNft } from '../support/require';
import { testTempDir } from '../support/tmp';
import { REPO_ROOT } from '../support/paths';
import { INJECTED } from '../cni/helpers';

const TRIALS = 20;
const IN_PROCESS = 5;
const PROCESSES = 5;
const ENGINE_MAIN = path.join(REPO_ROOT, 'dist', 'src', 'standalone', 'main.js');

function addEnv(netns: string, i: number): Record<string, string> {
  return {
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: `race${i}`,
    CNI_NETNS: netns,
    CNI_IFNAME: 'eth0',
    CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart;K8S_POD_UID=u1',
  };
}

function standalone(env: Record<string, string>, stdin: string, logFile: string): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [ENGINE_MAIN], { env: { PATH: process.env.PATH, MESH_CNI_LOG_FILE: logFile, ...env }, stdio: ['pipe', 'pipe', 'ignore'] });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout }));
    child.stdin.end(stdin);
  });
}

for (const backend of ['iptables-nft', 'iptables-legacy', 'nftables'] as BackendName[]) {
  test.serial(`fault concurrent-add ${backend}: ${TRIALS} trials of ${IN_PROCESS + PROCESSES} concurrent ADDs, every rc-0 ADD leaves the full rule set`, async (t) => {
    t.timeout(170_000);
    requireKernelTools(t);
    if (backend === 'nftables') requireNft(t);
    const dir = testTempDir(t, `race-${backend}`);
    const logFile = path.join(dir, 'cni.log');
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend, log_file: logFile, state_dir: dir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED } });
    const config = redirectConfigFromAnnotations(INJECTED);
    let ok = 0;
    let failed = 0;
    let partial = 0;
    const problems: string[] = [];
    for (let trial = 0; trial < TRIALS; trial++) {
      const ns = createNetns(t, 'race');
      const p = netnsPath(ns);
      const runs = [
        ...Array.from({ length: IN_PROCESS }, (_, i) => runCni({ env: addEnv(p, i), stdin: Buffer.from(conf) }, { defaultLogFile: logFile }).then((r) => ({ code: r.exitCode, stdout: r.stdout }))),
        ...Array.from({ length: PROCESSES }, (_, i) => standalone(addEnv(p, IN_PROCESS + i), conf, logFile)),
      ];
      const results = await Promise.all(runs);
      const check = await checkRedirect({ netns: p, config, backend });
      for (const r of results) {
        if (r.code === 0) {
          ok++;
          if (!check.ok) partial++;
        } else {
          failed++;
          problems.push(`trial ${trial}: ${r.stdout}`);
        }
      }
      if (!check.ok && results.some((r) => r.code === 0)) problems.push(`trial ${trial}: ${check.problems.length} problems after rc-0 ADDs, first: ${check.problems[0]}`);
    }
    t.log(`concurrent-add ${backend}: ${TRIALS} trials x ${IN_PROCESS + PROCESSES} ADDs, ${ok} rc 0, ${failed} failed, ${partial} rc-0 ADDs with rules missing`);
    t.is(partial, 0, problems.slice(0, 5).join('\n'));
    // Serialised, no ADD has a reason to fail: each later one replaces what the first wrote, atomically.
    t.is(failed, 0, problems.slice(0, 5).join('\n'));
  });
}

test.serial('fault concurrent-add: the lock lives with the namespace: an flock through /proc/PID/ns/net holds back an apply through /var/run/netns', async (t) => {
  requireKernelTools(t);
  const ns = createNetns(t, 'lock');
  // A process inside the netns gives a second path to it; flock(1) holds the lock on that path for 1.5 s.
  const sleeper = spawn('ip', ['netns', 'exec', ns, 'sleep', '30'], { stdio: 'ignore' });
  t.teardown(() => void sleeper.kill('SIGKILL'));
  // `ip netns exec` enters the netns and execs the program, so the child's own pid is inside it.
  const pid = sleeper.pid!;
  const inside = () => {
    try {
      return fs.statSync(`/proc/${pid}/ns/net`).ino === fs.statSync(netnsPath(ns)).ino;
    } catch {
      return false;
    }
  };
  for (let i = 0; i < 100 && !inside(); i++) await new Promise((r) => setTimeout(r, 20));
  t.true(inside(), 'the sleeper runs inside the netns');
  const holder = spawn('flock', ['-x', `/proc/${pid}/ns/net`, 'sleep', '1.5'], { stdio: 'ignore' });
  t.teardown(() => void holder.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 200));
  const started = Date.now();
  await applyRedirect({ netns: netnsPath(ns), config: redirectConfigFromAnnotations(INJECTED), backend: 'iptables-nft' });
  const waited = Date.now() - started;
  t.true(waited >= 1000, `the apply waited ${waited} ms for the lock held through the other path`);
  t.log(`fault concurrent-add lock: apply waited ${waited} ms behind an flock taken through /proc/${pid}/ns/net`);
});
