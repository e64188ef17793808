/** A CRI client that calls what kubelet calls (RuntimeService v1alpha2, over containerd's socket). */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CRI_PROTO } from './node-deps';

export interface Sandbox {
  id: string;
  uid: string;
  netnsPath: string;
  ip: string;
  status: any;
  info: any;
}

type Unary = (request: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, response: any) => void) => void;

export class CriClient {
  private readonly runtime: grpc.Client & Record<string, Unary>;

  constructor(socket: string) {
    const definition = protoLoader.loadSync(CRI_PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(definition) as any;
    const RuntimeService = pkg.runtime.v1alpha2.RuntimeService as grpc.ServiceClientConstructor;
    this.runtime = new RuntimeService(`unix:${socket}`, grpc.credentials.createInsecure()) as any;
  }

  call<T = any>(method: string, request: unknown, timeoutMs = 60_000): Promise<T> {
    return new Promise((resolve, reject) => {
      this.runtime[method]!.call(this.runtime, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, response) => {
        if (err) reject(Object.assign(new Error(`CRI ${method}: ${err.details || err.message}`), { code: err.code, details: err.details }));
        else resolve(response as T);
      });
    });
  }

  version(): Promise<any> {
    return this.call('Version', { version: 'v1alpha2' }, 2_000);
  }

  close(): void {
    this.runtime.close();
  }
}
