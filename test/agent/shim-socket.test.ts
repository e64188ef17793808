/** The shim ↔ agent framing: round trips, bounds, and what is dropped. */
import test from 'ava';
import {
  decodeRequestBody,
  decodeResponseBody,
  encodeRequest,
  encodeResponse,
  MAX_ENV_ENTRIES,
  serveCni,
  callCniSocket,
} from '../../src/agent/shim-socket';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { testTempDir } from '../support/tmp';
import { FrameError } from '../../src/errors';

test('request round trip keeps CNI_* and stdin, drops everything else', (t) => {
  const frame = encodeRequest({ env: { CNI_COMMAND: 'ADD', CNI_ARGS: 'a=b;c=d', HOME: '/root', MESH_CNI_AGENT_SOCKET: '/x' }, stdin: Buffer.from('{"x":1}') });
  t.is(frame.subarray(0, 4).toString(), 'MCQ1');
  t.is(frame.readUInt32BE(4), frame.length - 8);
  const back = decodeRequestBody(frame.subarray(8));
  t.deepEqual(back.env, { CNI_COMMAND: 'ADD', CNI_ARGS: 'a=b;c=d' });
  t.is(back.stdin.toString(), '{"x":1}');
});

test('response round trip', (t) => {
  const frame = encodeResponse({ exitCode: 1, stdout: '{"code":11}', stderr: 'log line\n' });
  t.deepEqual(decodeResponseBody(frame.subarray(8)), { exitCode: 1, stdout: '{"code":11}', stderr: 'log line\n' });
});

test('a truncated or padded body is refused', (t) => {
  const body = encodeRequest({ env: { CNI_COMMAND: 'DEL' }, stdin: Buffer.from('{}') }).subarray(8);
  t.throws(() => decodeRequestBody(body.subarray(0, body.length - 1)), { instanceOf: FrameError });
  t.throws(() => decodeRequestBody(Buffer.concat([body, Buffer.from([0])])), { instanceOf: FrameError });
});

test('too many environment entries are refused', (t) => {
  const env = Object.fromEntries(Array.from({ length: MAX_ENV_ENTRIES + 1 }, (_, i) => [`CNI_X${i}`, 'v']));
  t.throws(() => decodeRequestBody(encodeRequest({ env, stdin: Buffer.alloc(0) }).subarray(8)), { message: /too many/ });
});

test('serveCni refuses to replace a file that is not a socket, and a live socket', async (t) => {
  const dir = testTempDir(t, 'sock');
  writeFileSync(join(dir, 'file'), '');
  await t.throwsAsync(serveCni(join(dir, 'file'), async () => ({ exitCode: 0, stdout: '', stderr: '' })), { message: /not a socket/ });
  const live = await serveCni(join(dir, 'live.sock'), async (i) => ({ exitCode: 0, stdout: i.env.CNI_COMMAND ?? '', stderr: '' }));
  t.teardown(live.close);
  await t.throwsAsync(serveCni(join(dir, 'live.sock'), async () => ({ exitCode: 0, stdout: '', stderr: '' })), { message: /already served/ });
  t.deepEqual(await callCniSocket(join(dir, 'live.sock'), { env: { CNI_COMMAND: 'VERSION' }, stdin: Buffer.alloc(0) }, 2000), { exitCode: 0, stdout: 'VERSION', stderr: '' });
});

test('a handler that throws answers 999 instead of hanging the shim', async (t) => {
  const dir = testTempDir(t, 'sock');
  const server = await serveCni(join(dir, 'a.sock'), async () => {
    throw new Error('handler bug');
  });
  t.teardown(server.close);
  const r = await callCniSocket(join(dir, 'a.sock'), { env: { CNI_COMMAND: 'ADD' }, stdin: Buffer.alloc(0) }, 2000);
  t.is(r.exitCode, 1);
  t.is(JSON.parse(r.stdout).code, 999);
});
