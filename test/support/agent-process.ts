/** The agent as a separate process (`mesh-cni agent`), so tests can SIGKILL and restart it. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { CLI } from './paths';

export interface AgentProcess {
  child: ChildProcess;
  healthPort: number;
  kill(): Promise<void>;
}

/** Starts `mesh-cni agent` with `args` and resolves once it says it is ready (and on which health port). */
export function startAgentProcess(args: string[], logFile: string): Promise<AgentProcess> {
  const log = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [CLI, 'agent', '--health-port', '0', '--health-host', '127.0.0.1', ...args], { stdio: ['ignore', 'pipe', log] });
  fs.closeSync(log);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      void kill();
      reject(new Error(`the agent did not start within 20 s; see ${logFile}`));
    }, 20_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /health on port (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, healthPort: Number(m[1]), kill });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the agent exited (${code}) before it was ready; see ${logFile}`));
    });
  });
}
