/**
 * Benchmark 5, agent memory: RSS of the agent process (as the DaemonSet runs it, watching its node's pods
 * through a real kube-apiserver + etcd from test/support/kube.ts) idle with no pods on its node, then with
 * 500 pod objects bound to its node in its watch cache. The idle agent without Kubernetes is shown too.
 * Each figure is the median of several samples taken a few hundred ms apart once the cache holds the pods.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import { startKube, type Kube } from '../test/support/kube';
import { INJECTED, startAgentProcess, type AgentProcess } from './agent-process';
import { median, rssKb, table, tempDir, writeResult, type Summary } from './lib';

const PODS = 500;
const NODE = 'bench-node';

function metric(port: number, name: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(body)?.[1] ?? NaN)));
      })
      .on('error', reject);
  });
}

async function sampleRss(pid: number, samples = 7): Promise<number> {
  const values: number[] = [];
  for (let i = 0; i < samples; i++) {
    await new Promise((r) => setTimeout(r, 300));
    values.push(rssKb(pid) / 1024);
  }
  return median(values);
}

async function until(what: string, ms: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what} did not happen within ${ms} ms`);
}

export async function benchMemory(): Promise<Summary[]> {
  const dir = tempDir('memory');
  let kube: Kube | undefined;
  let agent: AgentProcess | undefined;
  let bare: AgentProcess | undefined;
  const result: Record<string, number> = {};
  try {
    bare = await startAgentProcess(fs.mkdtempSync(`${dir}/bare-`));
    await new Promise((r) => setTimeout(r, 1500));
    result.bareIdle = await sampleRss(bare.pid);
    await bare.stop();
    bare = undefined;

    kube = await startKube();
    await kube.ensureNamespace('bench');
    agent = await startAgentProcess(fs.mkdtempSync(`${dir}/kube-`), { kubeconfig: kube.kubeconfig, nodeName: NODE });
    // Settled: the first seconds after start still hold the garbage of loading the Kubernetes client.
    await new Promise((r) => setTimeout(r, 5000));
    result.idle = await sampleRss(agent.pid);

    const k = kube;
    for (let i = 0; i < PODS; i += 25) {
      await Promise.all(
        Array.from({ length: Math.min(25, PODS - i) }, (_, j) =>
          k.createPod({ namespace: 'bench', name: `pod-${i + j}`, nodeName: NODE, annotations: INJECTED, containers: ['app', 'istio-proxy'] }),
        ),
      );
    }
    const port = agent.healthPort;
    await until(`the agent's cache holding ${PODS} pods`, 120_000, async () => (await metric(port, 'mesh_cni_pods_cached')) >= PODS);
    result.cached = await metric(port, 'mesh_cni_pods_cached');
    result.loaded = await sampleRss(agent.pid);
  } finally {
    await bare?.stop();
    await agent?.stop();
    await kube?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log('\n== 5. Agent memory (RSS, MiB, median of 7 samples)');
  console.log(
    table(
      ['agent', 'RSS MiB'],
      [
        ['no Kubernetes, idle', result.bareIdle!],
        ['watching its node, 0 pods', result.idle!],
        [`watching its node, ${result.cached} pods cached (apiserver)`, result.loaded!],
      ],
    ),
  );
  writeResult('memory', { pods: PODS, source: 'kube-apiserver + etcd (test/support/kube.ts), node-scoped watch', rssMiB: result });
  return [
    { name: 'agent-rss-idle', value: result.idle!, unit: 'MiB', target: 90, atMost: true, note: `without Kubernetes ${result.bareIdle!.toFixed(0)} MiB` },
    { name: 'agent-rss-500-pods', value: result.loaded!, unit: 'MiB', target: 130, atMost: true, note: `${result.cached} pods from a real apiserver` },
  ];
}
