/**
 * The agent as the DaemonSet runs it: `node dist/src/cli/main.js agent ...`, a real child process (under the
 * harness's reaper, so it never outlives the test), which tests can SIGKILL and start again.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { CLI } from './paths';
import { startService, waitUntil, type Service } from './service';

export interface AgentProcess {
  service: Service;
  healthPort: number;
  /** The agent's node process (the service's pid is its reaper's). */
  nodePid(): number | undefined;
  /** SIGKILL, as an OOM kill or a node crash would: no uninstall, the socket file stays. */
  kill(): Promise<void>;
  stop(): Promise<void>;
  log(lines?: number): string;
  /** The agent's JSON log lines (stderr), parsed. */
  lines(): Array<Record<string, any>>;
}

/**
 * `env`: added to the agent's (PATH only otherwise), e.g. the downward API's POD_NAMESPACE and POD_NAME.
 * `netnsPath`: the network namespace the agent runs in (a test's "node"), instead of this process's.
 */
export async function startAgentProcess(args: string[], logFile: string, env: Record<string, string> = {}, options: { netnsPath?: string } = {}): Promise<AgentProcess> {
  const from = fs.existsSync(logFile) ? fs.statSync(logFile).size : 0;
  const service = startService('mesh-cni agent', [process.execPath, CLI, 'agent', ...args], { logFile, graceSeconds: 5, env: { PATH: process.env.PATH, ...env }, netnsPath: options.netnsPath });
  const text = () => fs.readFileSync(logFile).subarray(from).toString();
  let healthPort = 0;
  await waitUntil(service, 'its ready line', 30_000, () => {
    const m = /health on port (\d+)/.exec(text());
    if (m) healthPort = Number(m[1]);
    return healthPort > 0;
  });
  const nodePid = () => {
    const r = spawnSync('pgrep', ['-P', String(service.pid)], { encoding: 'utf8' });
    const pid = Number(r.stdout.trim().split('\n')[0]);
    return pid > 0 ? pid : undefined;
  };
  return {
    service,
    healthPort,
    nodePid,
    async kill() {
      const pid = nodePid();
      if (pid) process.kill(pid, 'SIGKILL');
      await waitUntil({ ...service, exited: () => false }, 'agent gone', 10_000, () => !pid || !fs.existsSync(`/proc/${pid}`) || /^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8')));
      await service.stop();
    },
    stop: () => service.stop(),
    log: (lines = 40) => text().trimEnd().split('\n').slice(-lines).join('\n'),
    lines: () =>
      text()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => {
          try {
            return JSON.parse(l) as Record<string, any>;
          } catch {
            return { raw: l };
          }
        }),
  };
}

export function httpGet(port: number, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath} timed out`)));
  });
}

/** A counter or gauge's value from Prometheus text, for the series whose labels include `labels`. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const want = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
    if (want) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}
