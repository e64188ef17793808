/**
 * Real traffic for kernel tests: listeners that report which port accepted a connection and its original
 * destination, and a client that can run as the proxy's uid. Both run inside the test's namespaces only.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';

// Debian's interpreter, readable by the unprivileged proxy uid (a per-user Python under /root is not).
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const SUPPORT_DIR = path.resolve(__dirname, '../../../test/support');
const CLIENT_SOURCE = fs.readFileSync(path.join(SUPPORT_DIR, 'client.py'), 'utf8');

/**
 * How to run a program inside `netns`: a name under /var/run/netns (`ip netns exec`), or a path such as the
 * one containerd gives a sandbox (`nsenter --net=PATH`, which also leaves /sys alone).
 */
export function inNetnsArgv(netns: string): string[] {
  return netns.startsWith('/') ? ['nsenter', `--net=${netns}`, '--'] : ['ip', 'netns', 'exec', netns];
}

export interface Landing {
  listener?: string;
  port?: number;
  proto?: string;
  orig?: string;
  peer?: string;
  error?: string;
}

export interface Listener {
  name: string;
  stop(): void;
}

/** Runs the rest of a command line as this uid/gid (the proxy's 1337, to test what the proxy's own traffic does). */
function asUser(uid?: number, gid?: number): string[] {
  return uid === undefined ? [] : ['setpriv', `--reuid=${uid}`, `--regid=${gid ?? uid}`, '--clear-groups'];
}

/**
 * Starts listeners on `ports` ("15001", "15053/udp") in `netns` (a name or a path), optionally as another
 * uid; stopped when the test ends.
 */
export async function listen(t: ExecutionContext, netns: string, name: string, ports: string[], options: { uid?: number; gid?: number; mark?: number } = {}): Promise<Listener> {
  const [program, ...prefix] = inNetnsArgv(netns);
  const child: ChildProcess = spawn(program!, [...prefix, ...asUser(options.uid, options.gid), PYTHON, path.join(SUPPORT_DIR, 'listener.py'), name, ...ports], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: options.mark ? { ...process.env, LISTENER_MARK: String(options.mark) } : process.env,
  });
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  t.teardown(stop);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`listener ${name} did not start: ${err}`)), 5000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`listener ${name} exited (${code}): ${err}`));
    });
  });
  child.removeAllListeners('exit');
  return { name, stop };
}

export interface ConnectOptions {
  /** Run the client as this uid and gid (the proxy's 1337 to test the bypass). */
  uid?: number;
  gid?: number;
  proto?: 'tcp' | 'udp';
  timeoutSeconds?: number;
  /** The socket's packet mark (SO_MARK), as ztunnel marks its own connections (0x539). */
  mark?: number;
  /** A source address to bind first (the kubelet probe's SNAT address). */
  source?: string;
}

/** One connection from inside `netns` (a name or a path) to host:port; resolves with where it landed or the error. */
export function connect(netns: string, host: string, port: number, options: ConnectOptions = {}): Landing {
  const [program, ...prefix] = inNetnsArgv(netns);
  const args = [...prefix, ...asUser(options.uid, options.gid), PYTHON, '-c', CLIENT_SOURCE, host, String(port), options.proto ?? 'tcp', String(options.timeoutSeconds ?? 1.5)];
  const env = { ...process.env, ...(options.mark ? { CLIENT_MARK: String(options.mark) } : {}), ...(options.source ? { CLIENT_SOURCE: options.source } : {}) };
  const r = spawnSync(program!, args, { encoding: 'utf8', timeout: 10_000, env });
  const line = (r.stdout ?? '').trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Landing;
  } catch {
    return { error: `client failed (${r.status}): ${r.stderr}` };
  }
}

/**
 * The default plan at work in both families of a pod/peer pair (listeners on the pod's 15001, 15006 and 8080
 * and the peer's 80 already up): outbound lands on 15001, inbound on 15006, the proxy's uid/gid go out direct.
 */
export function expectDefaultRedirect(t: ExecutionContext, pair: { pod: string; peer: string; podIp4: string; peerIp4: string; podIp6: string; peerIp6: string }): void {
  for (const [peer, pod] of [
    [pair.peerIp4, pair.podIp4],
    [pair.peerIp6, pair.podIp6],
  ] as const) {
    t.like(connect(pair.pod, peer, 80), { listener: 'pod', port: 15001 }, `outbound to ${peer}:80`);
    t.like(connect(pair.peer, pod, 8080), { listener: 'pod', port: 15006 }, `inbound to ${pod}:8080`);
    t.like(connect(pair.pod, peer, 80, { uid: 1337, gid: 1337 }), { listener: 'peer', port: 80 }, 'the proxy uid is not captured');
  }
}
