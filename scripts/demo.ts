/**
 * `npm run demo`: two pods in network namespaces, one meshed and one not, each joined to a "service" netns
 * by a veth. The meshed pod gets mesh-cni's rules; both then open a real TCP connection to the service,
 * and the table shows where each connection landed. Everything it creates is removed at the end.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { applyRedirect, showRedirect } from '../src/redirect/engine';
import { redirectConfigFromAnnotations } from '../src/redirect/config';

const PYTHON = '/usr/bin/python3';
const SUPPORT = path.resolve(__dirname, '../../test/support');
const tag = `mcni-demo-${process.pid}`;
const created: string[] = [];
const children: ChildProcess[] = [];

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr || r.error?.message}`);
}

function netns(name: string): string {
  ip(['netns', 'add', name]);
  created.push(name);
  ip(['-n', name, 'link', 'set', 'lo', 'up']);
  return name;
}

async function listener(ns: string, name: string, ports: string[]): Promise<void> {
  const child = spawn('ip', ['netns', 'exec', ns, PYTHON, path.join(SUPPORT, 'listener.py'), name, ...ports], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`listener ${name} exited with ${code}`)));
  });
}

function connect(ns: string, host: string, port: number): string {
  const r = spawnSync('ip', ['netns', 'exec', ns, PYTHON, path.join(SUPPORT, 'client.py'), host, String(port)], { encoding: 'utf8' });
  try {
    const got = JSON.parse(r.stdout.trim());
    return got.error ? `error: ${got.error}` : `${got.listener}:${got.port} (asked for ${got.orig})`;
  } catch {
    return `error: ${r.stderr.trim()}`;
  }
}

function cleanup(): void {
  for (const c of children) c.kill('SIGKILL');
  for (const name of created) spawnSync('ip', ['netns', 'del', name]);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the demo creates network namespaces: run it as root');
  const service = netns(`${tag}-svc`);
  await listener(service, 'service', ['80']);
  const pods = [
    { name: 'reviews-v1 (meshed)', meshed: true, ip: '10.99.1.2', gw: '10.99.1.1' },
    { name: 'legacy-batch (not meshed)', meshed: false, ip: '10.99.2.2', gw: '10.99.2.1' },
  ];
  const rows: string[][] = [['POD', 'IP', 'MESHED', 'RULES', 'OUTBOUND TO 10.99.x.1:80 LANDED ON', 'APPLY']];
  for (const [i, pod] of pods.entries()) {
    const ns = netns(`${tag}-pod${i}`);
    ip(['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', `svc${i}`, 'netns', service]);
    ip(['-n', ns, 'addr', 'add', `${pod.ip}/24`, 'dev', 'eth0']);
    ip(['-n', service, 'addr', 'add', `${pod.gw}/24`, 'dev', `svc${i}`]);
    ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
    ip(['-n', service, 'link', 'set', `svc${i}`, 'up']);
    await listener(ns, 'sidecar', ['15001', '15006']);
    let rules = 0;
    let took = '-';
    if (pod.meshed) {
      const report = await applyRedirect({ netns: `/var/run/netns/${ns}`, config: redirectConfigFromAnnotations({}) });
      took = `${report.durationMs.toFixed(1)} ms`;
      rules = (await showRedirect({ netns: `/var/run/netns/${ns}` })).rules.length;
    }
    rows.push([pod.name, pod.ip, pod.meshed ? 'yes' : 'no', String(rules), connect(ns, pod.gw, 80), took]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) console.log(r.map((cell, c) => cell.padEnd(widths[c])).join('  '));
  console.log('\nThe meshed pod\'s connection was redirected to its sidecar port 15001; the other reached the service.');
}

main()
  .catch((err) => {
    console.error(`demo failed: ${err instanceof Error ? err.message : err}`);
    process.exitCode = 1;
  })
  .finally(cleanup);
