/** Unit tests: annotations → RedirectConfig (pure; no kernel). */
import test from 'ava';
import { redirectConfigFromAnnotations, parseAnnotationArgs } from '../../src/redirect/config';
import { InvalidConfigError } from '../../src/errors';
import { INVALID_ANNOTATIONS } from './invalid-cases';

const T = 'traffic.sidecar.istio.io/';

test('defaults are those of Istio HEAD\'s CNI plugin (sidecar_redirect.go)', (t) => {
  const c = redirectConfigFromAnnotations({});
  t.is(c.mode, 'REDIRECT');
  t.is(c.proxyPort, 15001);
  t.is(c.inboundCapturePort, 15006);
  t.is(c.inboundTunnelPort, 15008);
  t.is(c.proxyUid, 1337);
  t.is(c.proxyGid, 1337);
  t.is(c.includeInboundPorts, '*');
  t.deepEqual(c.excludeInboundPorts, [15020, 15021, 15090]);
  t.deepEqual(c.excludeOutboundPorts, [15020]);
  t.true(c.includeOutboundIPRanges.all);
  t.deepEqual(c.excludeOutboundIPRanges.ipv4, []);
  t.false(c.dnsCapture);
});

test('inbound exclusions always keep the status, health and telemetry ports, without duplicates', (t) => {
  const c = redirectConfigFromAnnotations({ [`${T}excludeInboundPorts`]: '15021, 8080' });
  t.deepEqual(c.excludeInboundPorts, [15021, 8080, 15020, 15090]);
});

test('an excludeOutboundPorts annotation replaces the 15020 default, as in Istio', (t) => {
  t.deepEqual(redirectConfigFromAnnotations({ [`${T}excludeOutboundPorts`]: '5432' }).excludeOutboundPorts, [5432]);
  t.deepEqual(redirectConfigFromAnnotations({ [`${T}excludeOutboundPorts`]: '' }).excludeOutboundPorts, []);
});

test('CIDR lists split by family, normalised to the network address, loopback noticed', (t) => {
  const c = redirectConfigFromAnnotations({ [`${T}includeOutboundIPRanges`]: ' 10.1.2.3/8 , fd00::1/64,127.0.0.1/32' });
  t.false(c.includeOutboundIPRanges.all);
  t.deepEqual(c.includeOutboundIPRanges.ipv4, ['10.0.0.0/8', '127.0.0.1/32']);
  t.deepEqual(c.includeOutboundIPRanges.ipv6, ['fd00::/64']);
  t.true(c.includeOutboundIPRanges.hasLoopback);
  t.false(redirectConfigFromAnnotations({ [`${T}includeOutboundIPRanges`]: '0.0.0.0/0' }).includeOutboundIPRanges.hasLoopback);
  t.true(redirectConfigFromAnnotations({ [`${T}includeOutboundIPRanges`]: '::1/128' }).includeOutboundIPRanges.hasLoopback);
});

test('empty include lists mean "capture nothing" for that direction', (t) => {
  const c = redirectConfigFromAnnotations({ [`${T}includeInboundPorts`]: '', [`${T}includeOutboundIPRanges`]: '' });
  t.deepEqual(c.includeInboundPorts, []);
  t.false(c.includeOutboundIPRanges.all);
  t.deepEqual(c.includeOutboundIPRanges.ipv4, []);
});

test('proxy uid/gid come from the proxy settings; zero means the default', (t) => {
  t.is(redirectConfigFromAnnotations({}, { proxyUid: 2000, proxyGid: 3000 }).proxyUid, 2000);
  t.is(redirectConfigFromAnnotations({}, { proxyUid: 2000, proxyGid: 3000 }).proxyGid, 3000);
  t.is(redirectConfigFromAnnotations({}, { proxyUid: 0 }).proxyUid, 1337);
  t.throws(() => redirectConfigFromAnnotations({}, { proxyUid: -5 }), { instanceOf: InvalidConfigError });
});

test('modes: TPROXY and NONE parse', (t) => {
  t.is(redirectConfigFromAnnotations({ 'sidecar.istio.io/interceptionMode': 'TPROXY' }).mode, 'TPROXY');
  t.is(redirectConfigFromAnnotations({ 'sidecar.istio.io/interceptionMode': 'NONE' }).mode, 'NONE');
});

test('annotations that are not ours are ignored', (t) => {
  t.notThrows(() => redirectConfigFromAnnotations({ 'prometheus.io/scrape': 'true', 'sidecar.istio.io/status': '{}' }));
});

test('--annotation KEY=VALUE parsing keeps "=" inside values and rejects pairs without a key', (t) => {
  t.deepEqual(parseAnnotationArgs(['a=b=c', 'x=']), { a: 'b=c', x: '' });
  t.throws(() => parseAnnotationArgs(['novalue']), { instanceOf: InvalidConfigError });
  t.throws(() => parseAnnotationArgs(['=v']), { instanceOf: InvalidConfigError });
});

for (const c of INVALID_ANNOTATIONS) {
  test(`invalid ${c.key}="${c.value}" is rejected naming the annotation, the value and why`, (t) => {
    const err = t.throws(() => redirectConfigFromAnnotations({ [c.key]: c.value }), { instanceOf: InvalidConfigError });
    t.true(err!.message.includes(c.key), err!.message);
    t.true(err!.message.includes(JSON.stringify(c.value)), err!.message);
    t.regex(err!.message, c.why);
    t.truthy((err as InvalidConfigError).hint);
  });
}
