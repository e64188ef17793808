/**
 * Fault injection: the agent is SIGKILLed at random points while 100 pods are being added through the real
 * shim. Every pod must end fully programmed with success, or with no rules of ours and an error: zero
 * partial rule sets. (When the agent dies mid-request the shim runs the request again standalone; ADD is
 * idempotent.)
 */
import test from 'ava';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { checkRedirect, showRedirect } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { startAgentProcess, type AgentProcess } from '../support/agent';
import { execShim } from '../support/shim';
import { testTempDir } from '../support/tmp';
import { requireKernelTools } from '../support/require';
import { uniqueName, netnsPath } from '../support/netns';
import { INJECTED } from '../cni/helpers';

const PODS = 100;
const IN_FLIGHT = 8;
const KILLS = 8;

function addNetns(name: string): void {
  for (const args of [['netns', 'add', name], ['-n', name, 'link', 'set', 'lo', 'up']]) {
    const r = spawnSync('ip', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  }
}

test.serial(`fault agent-sigkill: ${PODS} ADDs while the agent is killed at random points → zero partial rule sets`, async (t) => {
  requireKernelTools(t);
  t.timeout(180_000);
  const dir = testTempDir(t, 'fault-kill');
  const socket = path.join(dir, 'agent.sock');
  const names = Array.from({ length: PODS }, (_, i) => uniqueName(`kill${i}`));
  t.teardown(() => {
    for (const n of names) spawnSync('ip', ['netns', 'del', n]);
  });
  for (const n of names) addNetns(n);

  const agentArgs = ['--health-port', '0', '--health-host', '127.0.0.1', '--no-kubernetes', '--no-install', '--socket', socket, '--state-dir', dir];
  let agent: AgentProcess | undefined = await startAgentProcess(agentArgs, path.join(dir, 'agent.log'));
  t.teardown(() => agent?.kill());
  // Kills are tied to progress, not to the clock (a faster ADD would otherwise outrun them): when a worker
  // starts one of the ADDs at KILL_POINTS, the agent is SIGKILLed a few milliseconds later, with ADDs in flight,
  // and that worker waits for the restarted agent before it goes on (the others keep going meanwhile).
  const killPoints = new Set<number>();
  while (killPoints.size < KILLS) killPoints.add(5 + Math.floor(Math.random() * (PODS - 10)));
  let kills = 0;
  let inFlight = 0;
  let inFlightAtKills = 0;
  // One kill and restart at a time: two kill points can come close together, and two agents must never
  // start on the same socket.
  let killQueue = Promise.resolve();
  const killAndRestart = () =>
    (killQueue = killQueue.then(async () => {
      await new Promise((r) => setTimeout(r, Math.random() * 20));
      const dying = agent;
      agent = undefined;
      inFlightAtKills += inFlight;
      await dying?.kill();
      kills++;
      await new Promise((r) => setTimeout(r, Math.random() * 100));
      agent = await startAgentProcess(agentArgs, path.join(dir, 'agent.log'));
    }));


  const netconf = { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: 'iptables-nft', log_file: path.join(dir, 'cni.log'), state_dir: dir, runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED } };
  const results: number[] = new Array(PODS);
  let next = 0;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next < PODS) {
        const i = next++;
        const killing = killPoints.has(i) ? killAndRestart() : undefined;
        inFlight++;
        const r = await execShim(
          {
            CNI_COMMAND: 'ADD',
            CNI_CONTAINERID: `kill${i}`,
            CNI_NETNS: netnsPath(names[i]),
            CNI_IFNAME: 'eth0',
            CNI_ARGS: `K8S_POD_NAMESPACE=shop;K8S_POD_NAME=pod-${i};K8S_POD_UID=uid-${i}`,
            MESH_CNI_AGENT_SOCKET: socket,
            MESH_CNI_LOG_FILE: path.join(dir, 'cni.log'),
          },
          netconf,
        );
        inFlight--;
        results[i] = r.code;
        await killing;
      }
    }),
  );

  const config = redirectConfigFromAnnotations({});
  let succeeded = 0;
  let failedClean = 0;
  const partial: string[] = [];
  for (let i = 0; i < PODS; i++) {
    const netns = netnsPath(names[i]);
    const full = (await checkRedirect({ netns, config, backend: 'iptables-nft', families: ['ipv4'] })).ok;
    const none = (await showRedirect({ netns, backend: 'iptables-nft' })).rules.length === 0;
    if (results[i] === 0 && full) succeeded++;
    else if (results[i] !== 0 && none) failedClean++;
    else partial.push(`pod ${i}: exit ${results[i]}, ${full ? 'full' : none ? 'no' : 'PARTIAL'} rules`);
  }
  t.log(`fault agent-sigkill: ${PODS} trials, ${kills} agent kills with ${inFlightAtKills} ADDs in flight in all, ${succeeded} programmed, ${failedClean} failed cleanly, ${partial.length} partial`);
  t.is(kills, KILLS);
  t.true(inFlightAtKills >= KILLS, `only ${inFlightAtKills} ADDs were in flight across ${kills} kills; the fault was not exercised`);
  t.deepEqual(partial, [], 'every pod ends fully programmed with success, or with no rules and an error');
});
