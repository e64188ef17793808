/**
 * Fault: CNI_NETNS names a symlink that another process flips, as fast as it can, between the pod's netns and
 * the plugin's own. The plugin must open the path once and then use only that descriptor (to check it, lock
 * it and enter it): an ADD either programs the pod's netns or fails, and never answers 0 with rules
 * anywhere else; a CHECK never reads, and a DEL never removes, anything but the pod's. The "plugin" runs in a "node" netns this test made (the agent, and the shim run from there
 * as a runtime would), so its own netns, the one the flip points at, is the test's, never the machine's.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { applyRedirect, checkRedirect, removeRedirect, showRedirect } from '../../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../../src/redirect/config';
import { startAgentProcess } from '../support/agent';
import { execShim } from '../support/shim';
import { testTempDir } from '../support/tmp';
import { requireKernelTools } from '../support/require';
import { createNetns, netnsPath } from '../support/netns';
import { INJECTED } from '../cni/helpers';

const BACKEND = 'iptables-nft';
const config = redirectConfigFromAnnotations(INJECTED);

// Replaces the link with a new symlink by rename(2), so the path always exists and names one or the other.
const FLIPPER = `
import os, sys
link, a, b = sys.argv[1:4]
tmp = link + '.next'
sys.stdout.write('flipping\\n'); sys.stdout.flush()
i = 0
while True:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(a if i % 2 else b, tmp)
    os.rename(tmp, link)
    i += 1
`;

/** Starts flipping `link` between `a` and `b`; the flipper is stopped (by its pid) when the test ends. */
async function flip(t: ExecutionContext, link: string, a: string, b: string): Promise<void> {
  const child = spawn('/usr/bin/python3', ['-c', FLIPPER, link, a, b], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`the flipper exited (${code})`)));
  });
}

function conf(dir: string) {
  return { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'mesh-cni', backend: BACKEND, log_file: path.join(dir, 'cni.log'), state_dir: path.join(dir, 'state'), runtimeConfig: { 'io.kubernetes.cri.pod-annotations': INJECTED } };
}

function cniEnv(command: string, netns: string, socket: string, id: string): Record<string, string> {
  return { CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart;K8S_POD_UID=u1', MESH_CNI_AGENT_SOCKET: socket };
}

const rulesIn = async (netns: string) => (await showRedirect({ netns, backend: BACKEND })).rules.length;
const holdsPlan = async (netns: string) => (await checkRedirect({ netns, config, backend: BACKEND })).ok;

type Command = 'ADD' | 'CHECK' | 'DEL';

/**
 * What each command must never do while the link flips, given the namespaces as `prepare` left them:
 * ADD (both empty): answer 0 without the pod's netns holding the plan, or leave rules in the node's;
 * CHECK (only the node's holds the plan): answer 0, which it could only do by reading the node's;
 * DEL (both hold the plan): remove anything from the node's.
 */
const SCENARIOS: Record<Command, { prepare(pod: string, node: string): Promise<unknown>; wrong(code: number, pod: string, node: string): Promise<string | undefined> }> = {
  ADD: {
    prepare: async () => undefined,
    async wrong(code, pod, node) {
      const inNode = await rulesIn(node);
      if (code === 0 && (inNode > 0 || !(await holdsPlan(pod)))) return `answered 0 with ${inNode} rules in the plugin's own netns and ${await rulesIn(pod)} in the pod's`;
      if (code !== 0 && (inNode > 0 || (await rulesIn(pod)) > 0)) return `failed and left ${inNode} rules in the plugin's own netns, ${await rulesIn(pod)} in the pod's`;
      return undefined;
    },
  },
  CHECK: {
    prepare: (_pod, node) => applyRedirect({ netns: node, config, backend: BACKEND }),
    async wrong(code) {
      return code === 0 ? 'answered 0 for a pod netns without rules (it read the plugin\'s own)' : undefined;
    },
  },
  DEL: {
    prepare: async (pod, node) => Promise.all([applyRedirect({ netns: node, config, backend: BACKEND }), applyRedirect({ netns: pod, config, backend: BACKEND })]),
    async wrong(_code, _pod, node) {
      return (await holdsPlan(node)) ? undefined : `removed rules from the plugin's own netns (${await rulesIn(node)} left)`;
    },
  },
};

/** Runs `count` requests through the shim (from the node's netns) while the link flips; each must leave things as SCENARIOS says. */
async function flipped(t: ExecutionContext, via: 'agent' | 'standalone', command: Command, count: number): Promise<void> {
  requireKernelTools(t);
  const dir = testTempDir(t, `flip-${via}`);
  const node = netnsPath(createNetns(t, 'node'));
  const pod = netnsPath(createNetns(t, 'pod'));
  let socket = path.join(dir, 'no-agent.sock');
  if (via === 'agent') {
    socket = path.join(dir, 'agent.sock');
    const agent = await startAgentProcess(['--health-port', '0', '--health-host', '127.0.0.1', '--no-kubernetes', '--no-install', '--socket', socket, '--state-dir', path.join(dir, 'agent-state')], path.join(dir, 'agent.log'), {}, { netnsPath: node });
    t.teardown(() => agent.stop());
  }
  const link = path.join(dir, 'netns');
  fs.symlinkSync(pod, link);
  await flip(t, link, pod, node);
  const scenario = SCENARIOS[command];
  const answers = new Map<string, number>();
  const wrong: string[] = [];
  for (let i = 0; i < count; i++) {
    await scenario.prepare(pod, node);
    const stdin = command === 'CHECK' ? { ...conf(dir), prevResult: { cniVersion: '1.0.0', interfaces: [], ips: [] } } : conf(dir);
    const r = await execShim(cniEnv(command, link, socket, `flip${i}`), stdin, { netnsPath: node });
    const answer = r.code === 0 ? '0' : `${r.json?.code}: ${String(r.json?.msg).replace(/\/proc\/\S+|\S+\/netns\b/g, 'PATH')}`;
    answers.set(answer, (answers.get(answer) ?? 0) + 1);
    const bad = await scenario.wrong(r.code, pod, node);
    if (bad) wrong.push(`${command} ${i} ${bad}: ${r.stdout}`);
    // Each request starts from two clean namespaces.
    await removeRedirect({ netns: node, backend: BACKEND });
    await removeRedirect({ netns: pod, backend: BACKEND });
  }
  t.log(`netns-flip ${command} via ${via}: ${count} requests, answers ${JSON.stringify([...answers])}, wrong: ${wrong.length}`);
  t.deepEqual(wrong, []);
  if (command === 'ADD') t.true((answers.get('0') ?? 0) > 0, 'some ADDs opened the path while it named the pod');
  // The plugin's own netns is refused with 4, whether the path named it when classified or when opened.
  for (const answer of answers.keys()) if (answer !== '0' && !(command === 'CHECK' && answer.startsWith('103: '))) t.regex(answer, /^4: /);
}

const RUNS: Array<[Command, 'agent' | 'standalone', number]> = [
  ['ADD', 'agent', 60],
  ['ADD', 'standalone', 30],
  ['CHECK', 'agent', 40],
  ['CHECK', 'standalone', 15],
  ['DEL', 'agent', 40],
  ['DEL', 'standalone', 15],
];

for (const [command, via, count] of RUNS) {
  test.serial(`fault netns-flip: ${command} ${via === 'agent' ? 'through the agent' : 'standalone'} on a path flipping to the plugin's own netns never acts there`, async (t) => {
    t.timeout(180_000);
    await flipped(t, via, command, count);
  });
}
