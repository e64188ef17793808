/** Version negotiation and prevResult conversion between 0.3.x/0.4.0 and 1.x. */
import test from 'ava';
import { convertResult, decodePrevResult } from '../../src/cni/version';
import { run, netconf, unitDeps, withAnnotations } from './helpers';

const result031 = {
  cniVersion: '0.3.1',
  interfaces: [
    { name: 'cni0', mac: '0a:58:0a:f4:00:01' },
    { name: 'eth0', mac: '0a:58:0a:f4:00:05', sandbox: '/var/run/netns/cni-1' },
  ],
  ips: [
    { version: '4', address: '10.244.0.5/24', gateway: '10.244.0.1', interface: 1 },
    { version: '6', address: 'fd00::5/64', gateway: 'fd00::1', interface: 1 },
  ],
  routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0', gw: 'fd00::1' }],
  dns: { nameservers: ['10.96.0.10'], search: ['svc.cluster.local'] },
};

const result100 = {
  cniVersion: '1.0.0',
  interfaces: [
    { name: 'cni0', mac: '0a:58:0a:f4:00:01' },
    { name: 'eth0', mac: '0a:58:0a:f4:00:05', sandbox: '/var/run/netns/cni-1' },
  ],
  ips: [
    { address: '10.244.0.5/24', gateway: '10.244.0.1', interface: 1 },
    { address: 'fd00::5/64', gateway: 'fd00::1', interface: 1 },
  ],
  routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0', gw: 'fd00::1' }],
  dns: { nameservers: ['10.96.0.10'], search: ['svc.cluster.local'] },
};

test('0.3.1 → 1.0.0 drops ip.version and keeps interface indexes', (t) => {
  t.deepEqual(convertResult(decodePrevResult(result031, '0.3.1'), '1.0.0'), result100);
});

test('1.0.0 → 0.3.1 derives ip.version from the address', (t) => {
  t.deepEqual(convertResult(decodePrevResult(result100, '1.0.0'), '0.3.1'), result031);
});

test('round trip 0.3.1 → 1.0.0 → 0.3.1 is lossless', (t) => {
  const up = convertResult(decodePrevResult(result031, '0.3.1'), '1.0.0');
  t.deepEqual(convertResult(decodePrevResult(up, '1.0.0'), '0.3.1'), result031);
});

test('1.1.0 → 0.4.0 drops fields 0.x does not have (mtu, socketPath, pciID, route extras)', (t) => {
  const r110 = {
    cniVersion: '1.1.0',
    interfaces: [{ name: 'eth0', mtu: 1450, socketPath: '/run/x.sock', pciID: '0000:00:01.0', sandbox: '/n' }],
    ips: [{ address: '10.0.0.2/24', interface: 0 }],
    routes: [{ dst: '0.0.0.0/0', gw: '10.0.0.1', mtu: 1400, priority: 10, table: 100, scope: 0 }],
  };
  t.deepEqual(convertResult(decodePrevResult(r110, '1.1.0'), '0.4.0'), {
    cniVersion: '0.4.0',
    interfaces: [{ name: 'eth0', sandbox: '/n' }],
    ips: [{ version: '4', address: '10.0.0.2/24', interface: 0 }],
    routes: [{ dst: '0.0.0.0/0', gw: '10.0.0.1' }],
  });
});

test('within one family the result passes unchanged but for cniVersion', (t) => {
  const withExtra = { ...result100, cniVersion: '1.0.0', interfaces: [{ name: 'eth0', mtu: 9000 }] };
  t.deepEqual(convertResult(decodePrevResult(withExtra, '1.0.0'), '1.1.0'), { ...withExtra, cniVersion: '1.1.0' });
});

for (const [netconfVersion, prevVersion] of [
  ['0.3.1', '1.0.0'],
  ['1.0.0', '0.3.1'],
  ['0.4.0', '0.4.0'],
  ['1.1.0', '1.0.0'],
] as const) {
  test(`ADD with a ${netconfVersion} netconf prints the ${prevVersion} prevResult as ${netconfVersion}`, async (t) => {
    const prev = prevVersion.startsWith('0.') ? { ...result031, cniVersion: prevVersion } : { ...result100, cniVersion: prevVersion };
    const r = await run('ADD', withAnnotations({}, { prevResult: prev }, netconfVersion));
    t.is(r.exitCode, 0, r.stdout);
    t.is(r.json.cniVersion, netconfVersion);
    const expected = netconfVersion.startsWith('0.') ? result031 : result100;
    t.deepEqual({ ...r.json, cniVersion: undefined }, { ...expected, cniVersion: undefined });
  });
}

test('ADD without prevResult prints an empty result in the requested version', async (t) => {
  for (const v of ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']) {
    const r = await run('ADD', withAnnotations({}, {}, v));
    t.deepEqual(r.json, { cniVersion: v, dns: {} });
  }
});

test('VERSION echoes the requested cniVersion and lists what we support', async (t) => {
  const r = await run('VERSION', { cniVersion: '0.4.0' }, unitDeps(), { CNI_CONTAINERID: undefined, CNI_NETNS: undefined, CNI_IFNAME: undefined });
  t.is(r.exitCode, 0);
  t.deepEqual(r.json, { cniVersion: '0.4.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
});

test('VERSION with empty stdin answers 1.1.0', async (t) => {
  const r = await run('VERSION', '', unitDeps());
  t.is(r.json.cniVersion, '1.1.0');
  t.is(r.stderr, '', 'VERSION is only logged at debug level');
});

test('CHECK accepts 0.4.0 and later', async (t) => {
  for (const v of ['0.4.0', '1.0.0', '1.1.0']) {
    const r = await run('CHECK', withAnnotations({}, {}, v));
    t.is(r.exitCode, 0, `${v}: ${r.stdout}`);
  }
  t.is((await run('CHECK', netconf({}, '0.3.0'))).json.code, 1);
});
