/** The native shim executed as a container runtime executes a CNI plugin: CNI_* environment, netconf on stdin. */
import { spawn } from 'node:child_process';
import { SHIM } from './node-deps';

export interface ShimRun {
  code: number;
  stdout: string;
  stderr: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
}

/** `stdin`: a Buffer or string is sent as it is, anything else as JSON. */
export function execShim(env: Record<string, string | undefined>, stdin: unknown, timeoutMs = 60_000): Promise<ShimRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(SHIM, [], { env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString();
      let json: unknown;
      try {
        json = stdout ? JSON.parse(stdout) : undefined;
      } catch {
        json = undefined;
      }
      resolve({ code: code ?? -1, stdout, stderr: Buffer.concat(err).toString(), json });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(typeof stdin === 'string' || Buffer.isBuffer(stdin) ? stdin : JSON.stringify(stdin));
  });
}
