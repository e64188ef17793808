/**
 * Golden test: ZDS messages as bytes on the wire, written out by hand from the field numbers and types in
 * Istio's zds.proto (src/agent/zds.proto), so an encoder reading the wrong file, field or oneof fails here.
 */
import test from 'ava';
import { decodeHello, decodeRequest, decodeResponse, encodeAck, encodeHello, encodeRequest, ZdsProtocolError } from '../../src/agent/zds-messages';

const bytes = (...parts: Array<number | string | Buffer>) => Buffer.concat(parts.map((p) => (typeof p === "number" ? Buffer.from([p]) : typeof p === "string" ? Buffer.from(p) : p)));

test('golden: ZdsHello{version: V1} is field 1 varint 1', (t) => {
  t.deepEqual(Buffer.from(encodeHello()), bytes(0x08, 0x01));
  t.deepEqual(decodeHello(bytes(0x08, 0x01)), { version: 1 });
  t.deepEqual(decodeHello(bytes()), { version: 0 }, 'NOT_USED when absent');
});

test('golden: WorkloadRequest.add (field 1) with uid (1) and workload_info (2: name 1, namespace 2, service_account 3)', (t) => {
  const info = bytes(0x0a, 1, 'p', 0x12, 2, 'ns', 0x1a, 2, 'sa');
  const add = bytes(0x0a, 3, 'u-1', 0x12, info.length, info);
  const wire = bytes(0x0a, add.length, add);
  t.deepEqual(Buffer.from(encodeRequest({ add: { uid: 'u-1', workloadInfo: { name: 'p', namespace: 'ns', serviceAccount: 'sa' } } })), wire);
  t.deepEqual(decodeRequest(wire), { add: { uid: 'u-1', workloadInfo: { name: 'p', namespace: 'ns', serviceAccount: 'sa' } } });
});

test('golden: del (field 2, uid in field 2), snapshot_sent (field 3, empty), keep (field 5)', (t) => {
  t.deepEqual(Buffer.from(encodeRequest({ del: { uid: 'u-1' } })), bytes(0x12, 5, 0x12, 3, 'u-1'));
  t.deepEqual(Buffer.from(encodeRequest({ snapshotSent: {} })), bytes(0x1a, 0x00));
  t.deepEqual(Buffer.from(encodeRequest({ keep: { uid: 'u-1' } })), bytes(0x2a, 5, 0x0a, 3, 'u-1'));
  t.deepEqual(decodeRequest(bytes(0x12, 5, 0x12, 3, 'u-1')), { del: { uid: 'u-1' } });
  t.deepEqual(decodeRequest(bytes(0x1a, 0x00)), { snapshotSent: {} });
  t.deepEqual(decodeRequest(bytes(0x2a, 5, 0x0a, 3, 'u-1')), { keep: { uid: 'u-1' } });
});

test('golden: WorkloadResponse.ack (field 1) with error (1)', (t) => {
  t.deepEqual(Buffer.from(encodeAck()), bytes(0x0a, 0x00));
  t.deepEqual(Buffer.from(encodeAck('no')), bytes(0x0a, 4, 0x0a, 2, 'no'));
  t.deepEqual(decodeResponse(bytes(0x0a, 0x00)), { ack: { error: '' } });
  t.deepEqual(decodeResponse(bytes(0x0a, 4, 0x0a, 2, 'no')), { ack: { error: 'no' } });
});

test('records that are not the message expected are protocol errors', (t) => {
  t.throws(() => decodeResponse(bytes()), { instanceOf: ZdsProtocolError });
  t.throws(() => decodeRequest(bytes()), { instanceOf: ZdsProtocolError });
  t.throws(() => decodeResponse(bytes(0x0a, 9, 0x01)), { instanceOf: ZdsProtocolError });
});
