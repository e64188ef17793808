/**
 * ZDS, Istio's protocol between the node agent and ztunnel: its messages, encoded and decoded from Istio's own
 * `zds.proto` (kept beside this file as data, with the commit it was copied from) by protobufjs. One message
 * per SEQPACKET record, no framing of its own.
 *
 * The agent sends WorkloadRequest (add, keep, del, snapshot_sent) and reads ZdsHello and WorkloadResponse
 * (ack); ztunnel, and the test stand-in for it, the other way round. Both sides use this module, so each
 * direction has its encoder and its decoder here.
 */
import * as path from 'node:path';
import type * as Protobuf from 'protobufjs';
import { ZdsProtocolError } from '../errors';
export { ZdsProtocolError };

export const ZDS_PROTO = path.join(__dirname, 'zds.proto');

export interface WorkloadInfo {
  name: string;
  namespace: string;
  serviceAccount: string;
}

export type WorkloadRequest =
  | { add: { uid: string; workloadInfo?: WorkloadInfo } }
  | { keep: { uid: string } }
  | { del: { uid: string } }
  | { snapshotSent: Record<string, never> };

export interface WorkloadResponse {
  ack: { error: string };
}

/** ZDS `Version`: V1 is the only one. */
export const ZDS_V1 = 1;

interface Types {
  hello: Protobuf.Type;
  request: Protobuf.Type;
  response: Protobuf.Type;
}

let types: Types | undefined;

function load(): Types {
  if (!types) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const protobuf = require('protobufjs') as typeof Protobuf;
    const root = protobuf.loadSync(ZDS_PROTO);
    types = {
      hello: root.lookupType('istio.workload.zds.ZdsHello'),
      request: root.lookupType('istio.workload.zds.WorkloadRequest'),
      response: root.lookupType('istio.workload.zds.WorkloadResponse'),
    };
  }
  return types;
}

function decode(type: Protobuf.Type, data: Uint8Array, what: string): Record<string, unknown> {
  try {
    return type.toObject(type.decode(data), { oneofs: true, defaults: true, enums: Number }) as Record<string, unknown>;
  } catch (err) {
    throw new ZdsProtocolError(`a ${what} record does not decode: ${(err as Error).message}`);
  }
}

export function encodeHello(version = ZDS_V1): Uint8Array {
  const { hello } = load();
  return hello.encode(hello.create({ version })).finish();
}

export function decodeHello(data: Uint8Array): { version: number } {
  const m = decode(load().hello, data, 'ZdsHello');
  return { version: Number(m.version ?? 0) };
}

export function encodeRequest(req: WorkloadRequest): Uint8Array {
  const { request } = load();
  return request.encode(request.create(req)).finish();
}

export function decodeRequest(data: Uint8Array): WorkloadRequest {
  const m = decode(load().request, data, 'WorkloadRequest');
  switch (m.payload) {
    case 'add': {
      const add = m.add as { uid: string; workloadInfo?: WorkloadInfo | null };
      return { add: { uid: add.uid, ...(add.workloadInfo ? { workloadInfo: add.workloadInfo } : {}) } };
    }
    case 'keep':
      return { keep: { uid: (m.keep as { uid: string }).uid } };
    case 'del':
      return { del: { uid: (m.del as { uid: string }).uid } };
    case 'snapshotSent':
      return { snapshotSent: {} };
    default:
      throw new ZdsProtocolError('a WorkloadRequest record carries no payload');
  }
}

export function encodeAck(error = ''): Uint8Array {
  const { response } = load();
  // proto3 leaves a default out of the wire, as Go's encoder does (protobufjs would write a set empty string).
  return response.encode(response.create({ ack: error ? { error } : {} })).finish();
}

export function decodeResponse(data: Uint8Array): WorkloadResponse {
  const m = decode(load().response, data, 'WorkloadResponse');
  if (m.payload !== 'ack') throw new ZdsProtocolError('a WorkloadResponse record carries no ack');
  return { ack: { error: String((m.ack as { error?: string }).error ?? '') } };
}

/** The request's kind, for logs and metrics. */
export function requestKind(req: WorkloadRequest): 'add' | 'keep' | 'del' | 'snapshot-sent' {
  if ('add' in req) return 'add';
  if ('keep' in req) return 'keep';
  if ('del' in req) return 'del';
  return 'snapshot-sent';
}
