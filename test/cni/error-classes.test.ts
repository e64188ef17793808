/**
 * Every error class the agent or the standalone engine can answer with, walked to its CNI code (table-driven):
 * constructed as the code that throws it does, it is (or maps through toCniError to) a CniError with the
 * documented code, its name is its class's, and the answer JSON carries code and message. Then the answers
 * that once were written by hand, produced for real: the agent's bound on a request (11), a handler that
 * throws (999), a bad frame read back by a client (6), and the standalone engine failing to read stdin (5).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as errors from '../../src/errors';
import { CniCode, CniError, FrameError, InstallerError, RetryableLookupError, toCniError } from '../../src/errors';
import { callCniSocket, RESPONSE_MAGIC, serveCni } from '../../src/agent/shim-socket';
import { ENGINE } from '../support/node-deps';
import { testTempDir } from '../support/tmp';

type Row = [name: string, make: () => Error, cniCode: number, code?: string];

const rows: Row[] = [
  ['CniError', () => new CniError(CniCode.InvalidNetworkConfig, 'bad value'), 7, 'CNI_ERROR'],
  ['FrameError', () => new FrameError('bad frame magic'), CniCode.DecodingFailure, 'BAD_FRAME'],
  ['RetryableLookupError', () => new RetryableLookupError('GET pod shop/cart: API server answered 404'), CniCode.TryAgainLater, 'LOOKUP_RETRYABLE'],
  ['InvalidConfigError', () => new errors.InvalidConfigError('traffic.sidecar.istio.io/excludeOutboundPorts', 'x', 'not a port'), CniCode.InvalidPodAnnotation, 'INVALID_CONFIG'],
  ['NetnsNotFoundError', () => new errors.NetnsNotFoundError('/var/run/netns/gone'), CniCode.UnknownContainer, 'NETNS_NOT_FOUND'],
  ['NotANetnsError', () => new errors.NotANetnsError('/tmp'), CniCode.InvalidEnvironment, 'NOT_A_NETNS'],
  ['OwnNetnsError', () => new errors.OwnNetnsError('/var/run/netns/node'), CniCode.InvalidEnvironment, 'OWN_NETNS'],
  ['NetnsBusyError', () => new errors.NetnsBusyError('/var/run/netns/p', 5000), CniCode.TryAgainLater, 'NETNS_BUSY'],
  ['RequestAbandonedError', () => new errors.RequestAbandonedError('/var/run/netns/p', new Error('shim gone')), CniCode.TryAgainLater, 'REQUEST_ABANDONED'],
  ['RuleMismatchError', () => new errors.RuleMismatchError('rules differ', '-A OUTPUT ...'), CniCode.RuleMismatch, 'RULE_MISMATCH'],
  ['CommandFailedError', () => new errors.CommandFailedError('iptables-restore', 1, 'Bad rule'), CniCode.RedirectFailed, 'COMMAND_FAILED'],
  ['NftRefusedError', () => new errors.NftRefusedError('<rules>:3:1-20: Error: Could not process rule: Operation not supported'), CniCode.RedirectFailed, 'COMMAND_FAILED'],
  ['RollbackFailedError', () => new errors.RollbackFailedError('/var/run/netns/p', new Error('apply failed'), new Error('rollback failed'), ['-A OUTPUT -j ISTIO_OUTPUT']), CniCode.RedirectFailed, 'ROLLBACK_FAILED'],
  ['ApiUnavailableError', () => new errors.ApiUnavailableError('listing pods: no answer'), CniCode.RedirectFailed, 'API_UNAVAILABLE'],
  ['PodNotFoundError', () => new errors.PodNotFoundError('shop', 'cart'), CniCode.RedirectFailed, 'POD_NOT_FOUND'],
  ['PodNotOnNodeError', () => new errors.PodNotOnNodeError('shop/cart', 'node-b', 'node-a'), CniCode.RedirectFailed, 'POD_NOT_ON_NODE'],
  ['PodNetnsUnknownError', () => new errors.PodNetnsUnknownError('shop/cart', '/var/run/mesh-cni'), CniCode.RedirectFailed, 'NETNS_UNKNOWN'],
  ['InstallerError', () => new InstallerError('cannot write the conflist'), CniCode.RedirectFailed, 'INSTALL_FAILED'],
  ['MeshCniError', () => new errors.MeshCniError('something of ours'), CniCode.RedirectFailed, 'MESH_CNI_ERROR'],
  ['SpawnError', () => new errors.SpawnError('iptables-restore', 2), CniCode.RedirectFailed, 'SPAWN_FAILED'],
  ['ApiStatusError', () => new errors.ApiStatusError(403, 'GET pod shop/cart'), CniCode.PodLookupRefused, 'API_STATUS'],
  ['ApiStatusError (500)', () => new errors.ApiStatusError(500, 'GET pod shop/cart'), CniCode.TryAgainLater, 'API_STATUS'],
  ['UncopyableError', () => new errors.UncopyableError('nf_tables message type 9'), CniCode.Internal, 'REPLAY_UNCOPYABLE'],
  ['SocketClosedError', () => new errors.SocketClosedError('receive: the peer closed the connection'), CniCode.TryAgainLater, 'SOCKET_CLOSED'],
  ['SocketTimeoutError', () => new errors.SocketTimeoutError('receive: nothing within 5000 ms'), CniCode.TryAgainLater, 'SOCKET_TIMEOUT'],
  ['ZtunnelUnavailableError', () => new errors.ZtunnelUnavailableError('no ztunnel is connected'), CniCode.TryAgainLater, 'ZTUNNEL_UNAVAILABLE'],
  ['ZdsProtocolError', () => new errors.ZdsProtocolError('a WorkloadResponse record carries no ack'), CniCode.TryAgainLater, 'ZDS_PROTOCOL'],
  ['TypeError (a bug)', () => new TypeError("Cannot read properties of undefined (reading 'x')"), CniCode.Internal],
];

for (const [name, make, cniCode, code] of rows) {
  test(`${name} answers code ${cniCode}`, (t) => {
    const err = make();
    t.true(err instanceof Error);
    if (!name.includes(' ')) t.is(err.name, name);
    if (code) t.is((err as errors.MeshCniError).code, code);
    const cni = toCniError(err);
    t.true(cni instanceof CniError);
    t.is(cni.cniCode, cniCode);
    if (err instanceof CniError) t.is(cni, err, 'a CniError is never wrapped');
    const json = cni.toJson('1.1.0');
    t.is(json.code, cniCode);
    t.true(json.msg.includes(err.message));
  });
}

test('every error class of src/errors.ts has a row', (t) => {
  const classes = Object.entries(errors).filter(([, v]) => typeof v === 'function' && (v === errors.MeshCniError || v.prototype instanceof errors.MeshCniError));
  const covered = new Set(rows.map(([n]) => n));
  t.deepEqual(classes.map(([n]) => n).filter((n) => !covered.has(n)), []);
});

test('no error class is defined outside src/errors.ts (a source scan)', (t) => {
  const src = path.join(__dirname, '../../../src');
  const found: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts') && p !== path.join(src, 'errors.ts')) {
        for (const m of fs.readFileSync(p, 'utf8').matchAll(/class (\w+) extends \w*Error\b/g)) found.push(`${path.relative(src, p)}: ${m[1]}`);
      }
    }
  };
  walk(src);
  t.deepEqual(found, []);
});

test("the agent's answers: its bound on a request is 11, a handler that throws is 999, a bad answer frame is 6", async (t) => {
  const dir = testTempDir(t, 'errors');
  fs.chmodSync(dir, 0o755);
  const socketPath = path.join(dir, 'agent.sock');
  const server = await serveCni(
    socketPath,
    async (inv) => {
      if (inv.env.CNI_COMMAND === 'SLOW') await new Promise((r) => setTimeout(r, 2000));
      throw new TypeError('a bug in the handler');
    },
    { handlerTimeoutMs: 300 },
  );
  t.teardown(() => server.close());
  const slow = await callCniSocket(socketPath, { env: { CNI_COMMAND: 'SLOW' }, stdin: Buffer.alloc(0) }, 5000);
  t.is(slow.exitCode, 1);
  t.like(JSON.parse(slow.stdout), { cniVersion: '1.1.0', code: 11, msg: 'the agent did not finish within 300 ms; try again' });
  const bug = await callCniSocket(socketPath, { env: { CNI_COMMAND: 'ADD' }, stdin: Buffer.alloc(0) }, 5000);
  t.like(JSON.parse(bug.stdout), { cniVersion: '1.1.0', code: 999, msg: 'a bug in the handler' });

  // A peer that answers with a wrong magic: the client's read fails with a FrameError, which is code 6.
  const net = await import('node:net');
  const fake = path.join(dir, 'fake.sock');
  const liar = net.createServer((s) => s.end(Buffer.from(`${RESPONSE_MAGIC.replace('1', '9')}\0\0\0\0`, 'latin1')));
  await new Promise<void>((r) => liar.listen(fake, r));
  // Not awaited: the close callback may never come once the only connection is gone, and nothing waits on it.
  t.teardown(() => void liar.close());
  const err = await t.throwsAsync(callCniSocket(fake, { env: { CNI_COMMAND: 'ADD' }, stdin: Buffer.alloc(0) }, 5000), { instanceOf: FrameError });
  t.is(toCniError(err).cniCode, CniCode.DecodingFailure);
});

test('the standalone engine answers 5 when stdin cannot be read', (t) => {
  const dir = testTempDir(t, 'stdin');
  // A write-only file as stdin: read(2) fails with EBADF (a directory, EISDIR, counts as no stdin).
  const fd = fs.openSync(path.join(dir, 'write-only'), 'w');
  t.teardown(() => fs.closeSync(fd));
  const r = spawnSync(process.execPath, [ENGINE], { stdio: [fd, 'pipe', 'pipe'], encoding: 'utf8', env: { PATH: process.env.PATH, CNI_COMMAND: 'VERSION', MESH_CNI_LOG_FILE: path.join(dir, 'cni.log') }, timeout: 20_000 });
  t.is(r.status, 1, r.stderr);
  const json = JSON.parse(r.stdout);
  t.is(json.code, CniCode.IoFailure);
  t.regex(json.msg, /^error reading from stdin: .*EBADF/);
});
