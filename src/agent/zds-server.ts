/**
 * The agent's side of ZDS, Istio's protocol with ztunnel (src/agent/zds.proto, its comment "Protocol details"):
 * ztunnel connects to our SOCK_SEQPACKET socket (root only) and says ZdsHello; we send every workload we hold
 * as AddWorkload with its netns descriptor attached (SCM_RIGHTS), one at a time, each acked, then SnapshotSent;
 * afterwards AddWorkload as pods arrive and DelWorkload as they leave.
 *
 * As Istio's node agent does (cni/pkg/nodeagent/ztunnelserver.go): an add goes to the newest connection (a
 * replacement ztunnel takes over), a delete to every connection; each connection sends one request at a time
 * and reads its ack before the next, since an ack names nothing but follows its request. Where Istio logs an
 * ack that did not come in time and carries on, we close that connection: a late ack would otherwise be read
 * as the next request's, and ztunnel reconnects and gets a fresh snapshot.
 *
 * Timeouts are Istio's readWriteDeadline, 5 s: for the hello, for each send and for each ack.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SocketClosedError, SocketTimeoutError, ZtunnelUnavailableError } from '../errors';
import { SeqpacketListener, type SeqpacketSocket } from '../netns/seqpacket';
import { decodeHello, decodeResponse, encodeRequest, requestKind, type WorkloadInfo, type WorkloadRequest } from './zds-messages';

export const DEFAULT_ZTUNNEL_SOCKET = '/var/run/ztunnel/ztunnel.sock';
export const ZDS_TIMEOUT_MS = 5000;

/** A workload as ztunnel gets it: the pod's uid and names, and a descriptor of its netns held open by us. */
export interface ZdsWorkload {
  uid: string;
  info: WorkloadInfo;
  netnsFd: number;
}

export interface ZdsEvents {
  connected?(count: number): void;
  sent?(kind: string, snapshot: boolean): void;
  ackFailed?(reason: 'timeout' | 'error' | 'closed'): void;
  log?(line: Record<string, unknown>): void;
}

export interface ZdsServerOptions extends ZdsEvents {
  path?: string;
  /** the workloads held now: what a connecting ztunnel is sent */
  snapshot(): ZdsWorkload[];
  timeoutMs?: number;
}

class Connection {
  /** requests are sent one at a time: each waits for the previous one's ack */
  private chain: Promise<unknown> = Promise.resolve();
  private pendingAck?: { resolve(data: Buffer): void; reject(err: Error): void };
  private closedWith?: Error;
  /** resolves once the snapshot was sent and acked: adds wait for it (they must not overtake it) */
  ready: Promise<void>;
  private markReady!: () => void;

  constructor(
    readonly id: number,
    readonly socket: SeqpacketSocket,
    private readonly timeoutMs: number,
    private readonly events: ZdsEvents,
    private readonly onClose: (c: Connection) => void,
  ) {
    this.ready = new Promise((r) => (this.markReady = r));
    this.ready.catch(() => undefined);
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Reads every record: an ack for the request waiting, anything else ends the connection. */
  async readLoop(): Promise<void> {
    for (;;) {
      let data: Buffer;
      try {
        data = (await this.socket.receive({ maxBytes: 1024, maxFds: 0 })).data;
      } catch (err) {
        return this.close(err instanceof SocketClosedError ? new SocketClosedError('ztunnel closed the connection') : (err as Error));
      }
      const waiting = this.pendingAck;
      if (!waiting) return this.close(new Error('ztunnel sent a record nobody asked for (protocol error)'));
      this.pendingAck = undefined;
      waiting.resolve(data);
    }
  }

  /** One request and its ack; rejects with ZtunnelUnavailableError (closing the connection where it can no longer be trusted). */
  request(req: WorkloadRequest, fds: number[], snapshot: boolean): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.closedWith) throw new ZtunnelUnavailableError(`ztunnel connection ${this.id} is closed: ${this.closedWith.message}`);
      const kind = requestKind(req);
      const ack = new Promise<Buffer>((resolve, reject) => (this.pendingAck = { resolve, reject }));
      ack.catch(() => undefined); // a close after the timeout rejects it with nobody left waiting
      let timer: NodeJS.Timeout | undefined;
      try {
        await this.socket.send(encodeRequest(req), fds, this.timeoutMs);
        const data = await Promise.race([
          ack,
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new SocketTimeoutError(`no ack from ztunnel within ${this.timeoutMs} ms`)), this.timeoutMs);
          }),
        ]);
        const error = decodeResponse(data).ack.error;
        if (error) {
          this.events.ackFailed?.('error');
          throw new ZtunnelUnavailableError(`ztunnel refused ${kind}: ${error}`);
        }
        this.events.sent?.(kind, snapshot);
      } catch (err) {
        if (err instanceof ZtunnelUnavailableError) throw err;
        this.events.ackFailed?.(err instanceof SocketTimeoutError ? 'timeout' : 'closed');
        this.close(err as Error);
        throw new ZtunnelUnavailableError(`ztunnel did not ack ${kind}: ${(err as Error).message}`, err);
      } finally {
        clearTimeout(timer);
        this.pendingAck = undefined;
      }
    };
    const result = this.chain.then(run, run);
    this.chain = result.catch(() => undefined);
    return result;
  }

  /** The snapshot: every workload held, then SnapshotSent; the connection is ready once ztunnel acked it. */
  async sendSnapshot(workloads: ZdsWorkload[]): Promise<void> {
    for (const w of workloads) await this.request({ add: { uid: w.uid, workloadInfo: w.info } }, [w.netnsFd], true);
    await this.request({ snapshotSent: {} }, [], true);
    this.markReady();
  }

  close(err: Error = new SocketClosedError('closed by the agent')): void {
    if (this.closedWith) return;
    this.closedWith = err;
    this.pendingAck?.reject(err);
    this.pendingAck = undefined;
    this.socket.close();
    this.onClose(this);
  }
}

export class ZdsServer {
  private readonly conns: Connection[] = [];
  private nextId = 1;
  private stopped = false;

  private constructor(
    readonly path: string,
    private readonly listener: SeqpacketListener,
    private readonly o: ZdsServerOptions,
  ) {}

  /** Listens at the socket path (its directory made if absent, 0755; the socket itself 0600, root's). */
  static start(o: ZdsServerOptions): ZdsServer {
    const at = o.path ?? DEFAULT_ZTUNNEL_SOCKET;
    fs.mkdirSync(path.dirname(at), { recursive: true, mode: 0o755 });
    const server = new ZdsServer(at, SeqpacketListener.listen(at, { mode: 0o600 }), o);
    void server.acceptLoop();
    return server;
  }

  private log(line: Record<string, unknown>): void {
    this.o.log?.({ component: 'zds', ...line });
  }

  private async acceptLoop(): Promise<void> {
    while (!this.stopped) {
      let socket: SeqpacketSocket;
      try {
        socket = await this.listener.accept();
      } catch (err) {
        if (this.stopped) return;
        this.log({ level: 'warn', msg: 'accepting a ztunnel connection failed', error: (err as Error).message });
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      void this.serve(socket);
    }
  }

  private async serve(socket: SeqpacketSocket): Promise<void> {
    const timeoutMs = this.o.timeoutMs ?? ZDS_TIMEOUT_MS;
    const conn = new Connection(this.nextId++, socket, timeoutMs, this.o, (c) => {
      const i = this.conns.indexOf(c);
      if (i >= 0) this.conns.splice(i, 1);
      this.o.connected?.(this.conns.length);
      this.log({ level: 'info', msg: 'ztunnel disconnected', connection: c.id, connected: this.conns.length });
    });
    this.conns.push(conn);
    this.o.connected?.(this.conns.length);
    try {
      const hello = decodeHello((await socket.receive({ timeoutMs, maxBytes: 1024, maxFds: 0 })).data);
      this.log({ level: 'info', msg: 'ztunnel connected', connection: conn.id, version: hello.version, connected: this.conns.length });
      void conn.readLoop();
      const workloads = this.o.snapshot();
      await conn.sendSnapshot(workloads);
      this.log({ level: 'info', msg: 'snapshot sent to ztunnel', connection: conn.id, workloads: workloads.length });
    } catch (err) {
      this.log({ level: 'warn', msg: 'ztunnel connection ended before its snapshot was acked', connection: conn.id, error: (err as Error).message });
      conn.close(err as Error);
    }
  }

  /** Connections open now (for readiness and metrics). */
  connected(): number {
    return this.conns.length;
  }

  /**
   * Hands a workload to the newest ztunnel and waits for its ack. Rejects with ZtunnelUnavailableError when
   * none is connected (Istio: "no ztunnel connection"), or it does not ack in time, or acks with an error.
   */
  async addWorkload(w: ZdsWorkload): Promise<void> {
    const conn = this.conns[this.conns.length - 1];
    if (!conn) throw new ZtunnelUnavailableError(`no ztunnel is connected to ${this.path}`);
    await Promise.race([conn.ready, new Promise<never>((_, reject) => setTimeout(() => reject(new ZtunnelUnavailableError(`ztunnel on ${this.path} has not taken its snapshot within ${this.o.timeoutMs ?? ZDS_TIMEOUT_MS} ms`)), this.o.timeoutMs ?? ZDS_TIMEOUT_MS).unref())]);
    await conn.request({ add: { uid: w.uid, workloadInfo: w.info } }, [w.netnsFd], false);
  }

  /** Tells every connected ztunnel the workload is gone; resolves once each acked (or its connection failed). */
  async delWorkload(uid: string): Promise<void> {
    const results = await Promise.allSettled(this.conns.map((c) => c.request({ del: { uid } }, [], false)));
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0) throw new ZtunnelUnavailableError(`DelWorkload ${uid}: ${failed.map((f) => (f.reason as Error).message).join('; ')}`);
  }

  close(): void {
    this.stopped = true;
    this.listener.close();
    for (const c of [...this.conns]) c.close();
  }
}
