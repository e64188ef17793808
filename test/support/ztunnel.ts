/**
 * A stand-in for ztunnel, written from Istio's zds.proto (src/agent/zds.proto and its protocol comment), not
 * from Istio's Go code. It does what ztunnel does with the node agent's socket, in the order the protocol
 * says: connects, says ZdsHello V1, and for every record answers one Ack.
 *
 * - AddWorkload: exactly one descriptor must come with it, a network namespace; the stand-in checks it is the
 *   pod's (same inode as the namespace file the test expects for that uid, when it names one), keeps it, and,
 *   with `listen`, starts listeners inside that namespace (entered through the descriptor it received, as
 *   ztunnel does) on 15001, 15006 and 15008 with ztunnel's packet mark 0x539 on their sockets; then acks.
 * - DelWorkload: forgets the workload, stops its listeners, closes the descriptor, acks.
 * - KeepWorkload, SnapshotSent: noted and acked. At SnapshotSent ztunnel drops every workload the snapshot did
 *   not name; the stand-in records the snapshot's uids for the test to compare.
 * Anything else, or an add without exactly one netns descriptor, is answered with an Ack carrying an error.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { connectSeqpacket, type SeqpacketSocket } from '../../src/netns/seqpacket';
import { isNsfs } from '../../src/netns/identity';
import { decodeRequest, encodeAck, encodeHello, type WorkloadInfo, type WorkloadRequest } from '../../src/agent/zds-messages';

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const SUPPORT_DIR = path.resolve(__dirname, '../../../test/support');

/** ztunnel's ports in the pod (Istio cni/pkg/config: ZtunnelOutboundPort, ZtunnelInboundPlaintextPort, ZtunnelInboundPort). */
export const ZTUNNEL_PORTS = ['15001', '15006', '15008'];
/** ztunnel's mark on its own sockets (Istio's InpodMark 1337). */
export const ZTUNNEL_MARK = 0x539;

export interface StandInWorkload {
  uid: string;
  info?: WorkloadInfo;
  fd: number;
  /** the inode of the namespace the descriptor names */
  inode: number;
  /** a path that opens the same namespace: this process's descriptor */
  netnsPath: string;
  listener?: ChildProcess;
}

export interface StandInOptions {
  /** For a uid the test knows, the netns file the descriptor must be (compared by inode). */
  expectNetns?: (uid: string) => string | undefined;
  /** Start listeners on ztunnel's ports inside each added workload's namespace. */
  listen?: boolean;
  /** Answer an add with this error instead of accepting it (a ztunnel that refuses). */
  refuse?: (uid: string) => string | undefined;
  /** Never ack (a wedged ztunnel). */
  silent?: boolean;
}

export class ZtunnelStandIn {
  readonly workloads = new Map<string, StandInWorkload>();
  /** Every request in the order it came, as `kind uid`. */
  readonly log: string[] = [];
  /** The uids of adds and keeps before SnapshotSent, once it came. */
  snapshot?: string[];
  /** Errors the stand-in answered with (a wrong descriptor, an unknown record). */
  readonly problems: string[] = [];
  private readonly beforeSnapshot: string[] = [];
  private waiters: Array<() => void> = [];
  private closed = false;
  private readonly loop: Promise<void>;

  private constructor(
    private readonly socket: SeqpacketSocket,
    private readonly options: StandInOptions,
  ) {
    this.loop = this.serve();
  }

  static async connect(t: ExecutionContext, socketPath: string, options: StandInOptions = {}): Promise<ZtunnelStandIn> {
    const socket = connectSeqpacket(socketPath);
    await socket.send(encodeHello());
    const z = new ZtunnelStandIn(socket, options);
    t.teardown(() => z.close());
    return z;
  }

  private async serve(): Promise<void> {
    for (;;) {
      let packet;
      try {
        packet = await this.socket.receive({ maxFds: 4 });
      } catch {
        return this.closeAll();
      }
      let answer = '';
      try {
        answer = await this.handle(decodeRequest(packet.data), packet.fds);
      } catch (err) {
        answer = (err as Error).message;
        for (const fd of packet.fds) fs.closeSync(fd);
      }
      if (answer) this.problems.push(answer);
      if (this.options.silent) continue;
      try {
        await this.socket.send(encodeAck(answer));
      } catch {
        return this.closeAll();
      }
      this.notify();
    }
  }

  private async handle(req: WorkloadRequest, fds: number[]): Promise<string> {
    if ('add' in req) {
      const uid = req.add.uid;
      this.log.push(`add ${uid}`);
      if (fds.length !== 1) throw new Error(`add ${uid}: ${fds.length} descriptors, expected the pod's netns`);
      const fd = fds[0]!;
      const netnsPath = `/proc/${process.pid}/fd/${fd}`;
      const st = fs.fstatSync(fd);
      const inode = st.ino;
      if (!isNsfs(netnsPath)) throw new Error(`add ${uid}: the descriptor is not a namespace file (${fs.readlinkSync(netnsPath)})`);
      const expected = this.options.expectNetns?.(uid);
      if (expected !== undefined) {
        const want = fs.statSync(expected);
        if (want.ino !== inode || want.dev !== st.dev) throw new Error(`add ${uid}: the descriptor is namespace ${inode}, the pod's is ${want.ino}`);
      }
      const refused = this.options.refuse?.(uid);
      if (refused) {
        fs.closeSync(fd);
        return refused;
      }
      this.forget(uid);
      const w: StandInWorkload = { uid, info: req.add.workloadInfo, fd, inode, netnsPath };
      if (this.options.listen) w.listener = await startListener(netnsPath);
      this.workloads.set(uid, w);
      if (!this.snapshot) this.beforeSnapshot.push(uid);
      return '';
    }
    if ('del' in req) {
      this.log.push(`del ${req.del.uid}`);
      this.forget(req.del.uid);
      return '';
    }
    if ('keep' in req) {
      this.log.push(`keep ${req.keep.uid}`);
      if (!this.snapshot) this.beforeSnapshot.push(req.keep.uid);
      return '';
    }
    this.log.push('snapshot-sent');
    this.snapshot = [...this.beforeSnapshot];
    // ztunnel drops what the snapshot did not name.
    for (const uid of [...this.workloads.keys()]) if (!this.snapshot.includes(uid)) this.forget(uid);
    return '';
  }

  private forget(uid: string): void {
    const w = this.workloads.get(uid);
    if (!w) return;
    this.workloads.delete(uid);
    if (w.listener && w.listener.exitCode === null) w.listener.kill('SIGKILL');
    fs.closeSync(w.fd);
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Resolves once `done()` holds after some answered record; rejects after `timeoutMs`. */
  async until(done: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      if (this.closed) throw new Error(`ztunnel stand-in disconnected while waiting for ${what} (log: ${this.log.join(', ')})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`ztunnel stand-in: no ${what} within ${timeoutMs} ms (log: ${this.log.join(', ')})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  get disconnected(): boolean {
    return this.closed;
  }

  private closeAll(): void {
    this.closed = true;
    for (const uid of [...this.workloads.keys()]) this.forget(uid);
    this.socket.close();
    this.notify();
  }

  /** Disconnects, as a ztunnel that restarts does. */
  async close(): Promise<void> {
    if (!this.closed) this.closeAll();
    await this.loop;
  }
}

/** Listeners on ztunnel's ports in the namespace `netnsPath` names, marked as ztunnel marks its sockets. */
function startListener(netnsPath: string): Promise<ChildProcess> {
  const child = spawn('nsenter', [`--net=${netnsPath}`, '--', PYTHON, path.join(SUPPORT_DIR, 'listener.py'), 'ztunnel', ...ZTUNNEL_PORTS], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LISTENER_MARK: String(ZTUNNEL_MARK) },
  });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`ztunnel listeners did not start: ${err}`)), 5000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`ztunnel listeners exited (${code}): ${err}`));
    });
  });
}
