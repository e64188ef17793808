/**
 * `npm run demo`: a real node in network namespaces. containerd's CRI (what kubelet talks to) runs the real
 * `bridge` + `host-local` plugins and then mesh-cni from a conflist; the mesh-cni agent serves the plugin.
 * One meshed pod and one plain pod are started with RunPodSandbox, each opens a real TCP connection to the
 * node (the bridge gateway) on port 80, and the table shows where each landed. Everything is removed at the end.
 */
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { showRedirect } from '../src/redirect/engine';
import { POD_GATEWAY } from '../test/support/cni-conf';
import type { Sandbox } from '../test/support/cri-client';
import { startNode, type CriNode } from '../test/support/cri';
import { startAgentProcess, type AgentProcess } from '../test/support/agent';
import { connect, listen } from '../test/support/traffic';

const STATUS = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });

const PODS = [
  { name: 'reviews-v1', meshed: true, annotations: { 'sidecar.istio.io/status': STATUS } },
  { name: 'legacy-batch', meshed: false, annotations: {} as Record<string, string> },
];

/** The test helpers take a test context for cleanup; the demo collects the cleanups itself. */
const cleanups: Array<() => unknown> = [];
const context = { teardown: (fn: () => unknown) => cleanups.push(fn) } as unknown as ExecutionContext;

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c])).join('  ').trimEnd()).join('\n');
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the demo creates network namespaces and runs containerd: run it as root');
  process.stdout.write('starting a node: containerd (CRI) in its own network namespace, bridge + host-local + mesh-cni, the mesh-cni agent...\n');
  let agent: AgentProcess | undefined;
  let node: CriNode | undefined;
  const sandboxes: Sandbox[] = [];
  try {
    // The shim finds the agent through this variable; containerd passes its environment to CNI plugins.
    const socketDir = path.join('/var/run', `mesh-cni-demo-${process.pid}`);
    const socket = path.join(socketDir, 'agent.sock');
    node = await startNode({ env: { MESH_CNI_AGENT_SOCKET: socket } });
    agent = await startAgentProcess(['--health-port', '0', '--health-host', '127.0.0.1', '--no-kubernetes', '--no-install', '--socket', socket, '--state-dir', path.join(node.dir, 'mesh-cni-state')], path.join(node.dir, 'agent.log'));
    cleanups.push(() => import('node:fs').then((fs) => fs.rmSync(socketDir, { recursive: true, force: true })));
    await listen(context, node.netnsPath, 'node:80', ['80']);

    const rows = [['POD', 'IP', 'MESHED', 'RULES', 'OUTBOUND TO 10.99.0.1:80 LANDED ON', 'ADD TIME']];
    for (const pod of PODS) {
      const from = node.meshCniLogSize();
      const sandbox = await node.runPodSandbox({ name: pod.name, namespace: 'demo', annotations: pod.annotations });
      sandboxes.push(sandbox);
      const add = node.meshCniLogSince(from).find((l) => l.command === 'ADD');
      const rules = (await showRedirect({ netns: sandbox.netnsPath })).rules.length;
      await listen(context, sandbox.netnsPath, `${pod.name}:sidecar`, ['15001']);
      const landed = connect(sandbox.netnsPath, POD_GATEWAY, 80);
      const where = landed.error ? `error: ${landed.error}` : `${landed.listener === 'node:80' ? 'the node, port 80' : `its sidecar, port ${landed.port}`}`;
      rows.push([pod.name, sandbox.ip, add?.decision === 'meshed' ? 'yes' : `no (${add?.reason ?? '?'})`, String(rules), where, add ? `${add.durationMs} ms` : '-']);
    }
    const metrics = await (await fetch(`http://127.0.0.1:${agent.healthPort}/metrics`)).text();
    const servedByAgent = metrics.split('\n').filter((l) => l.startsWith('mesh_cni_requests_total{command="ADD"')).reduce((n, l) => n + Number(l.split(' ').pop()), 0);
    process.stdout.write(`\n${table(rows)}\n\n`);
    process.stdout.write('The meshed pod got the sidecar rules from mesh-cni and its connection was redirected to port 15001;\n');
    process.stdout.write(`the plain pod passed through untouched and reached the node. The agent served ${servedByAgent} of the ${PODS.length} ADDs;\n`);
    process.stdout.write("ADD TIME is mesh-cni's own part of the sandbox setup.\n");
  } finally {
    for (const fn of cleanups.reverse()) await Promise.resolve(fn()).catch(() => undefined);
    for (const s of sandboxes) {
      await node?.stopPodSandbox(s.id).catch(() => undefined);
      await node?.removePodSandbox(s.id).catch(() => undefined);
    }
    await agent?.kill();
    await node?.stop();
    process.stdout.write('cleaned up: pods, containerd, the agent and every namespace are gone.\n');
  }
}

main().catch((err) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
