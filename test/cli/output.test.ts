/**
 * Text from outside (pod names, annotations, Events, rules read from a netns, a program's stderr) never
 * reaches the terminal as a control sequence: `printable` escapes it visibly, every printer lays out escaped
 * values, and JSON output escapes what JSON.stringify leaves raw. Our own colour codes still work on a TTY.
 */
import test from 'ava';
import { jsonText, paint, printable, printText, table, textSafe } from '../../src/cli/output';
import { textTable, type PodRow } from '../../src/cli/commands/pods';
import { explanationText, type Explanation } from '../../src/cli/commands/explain';

/** Every character a terminal may act on: C0 but newline, DEL, C1, the line separators, the bidi controls. */
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/u;

const HOSTILE = [
  '\x1b]0;pwned\x07', // OSC: set the window title
  '\x1b[2J\x1b[H', // CSI: clear the screen, cursor home
  '\x1b]52;c;cHduZWQ=\x07', // OSC 52: write the clipboard
  '\x9b31m', // C1 CSI
  '\x9d0;pwned\x9c', // C1 OSC … ST
  '\u202egnp.exe', // right-to-left override
  '\u2066isolated\u2069',
  'line\nforged: healthy\r',
  'tab\there',
  '\x00\x08\x7f',
];

test('printable escapes every control character visibly, and leaves other text alone', (t) => {
  t.is(printable('\x1b]0;pwned\x07'), '\\x1b]0;pwned\\x07');
  t.is(printable('\x9b2J'), '\\x9b2J');
  t.is(printable('a\nb\tc\rd'), 'a\\nb\\tc\\rd');
  t.is(printable('\u202eabc\u2066'), '\\u202eabc\\u2066');
  t.is(printable('\u2028\u2029\u061c\u200e\u200f'), '\\u2028\\u2029\\u061c\\u200e\\u200f');
  for (const s of HOSTILE) t.notRegex(printable(s), CONTROL, JSON.stringify(s));
  for (const s of HOSTILE) t.false(printable(s).includes('\n'), JSON.stringify(s));
  // Ordinary text, including non-ASCII letters and emoji, is unchanged; escaping twice changes nothing.
  for (const s of ['shop/cart-7d9', 'ümlaut → ok', '名前', '🙂👍🏽', 'C:\\path', '']) t.is(printable(s), s);
  for (const s of HOSTILE) t.is(printable(printable(s)), printable(s));
});

test('printable with keepLayout keeps newlines and tabs (multi-line text), escapes the rest', (t) => {
  t.is(printable('a\n\tb\x1b[2J\r', { keepLayout: true }), 'a\n\tb\\x1b[2J\\r');
});

test('textSafe escapes every string of a value, keys too, and keeps the rest', (t) => {
  const value = { a: '\x1b[2J', n: 3, ok: true, none: null, list: ['\x9b', { '\x1bk': 'v\u202e' }] };
  t.deepEqual(textSafe(value), { a: '\\x1b[2J', n: 3, ok: true, none: null, list: ['\\x9b', { '\\x1bk': 'v\\u202e' }] });
  t.is(value.a, '\x1b[2J', 'the original is left as it was');
});

test('table and paint escape what they are handed; our colour codes survive on a TTY', (t) => {
  const out = table([['\x1b]0;pwned\x07', { text: '\x9b31mred', tone: 'bad' }]], { headers: ['A', 'B'], colour: true });
  t.true(out.includes('\x1b[1mA\x1b[0m'), 'bold header');
  t.true(out.includes('\x1b[31m\\x9b31mred\x1b[0m'), 'our red around the escaped text');
  t.false(out.includes('\x1b]'), out);
  t.notRegex(out.replace(/\x1b\[(?:0|1|2|31|32|33)m/g, ''), /[\x1b\x80-\x9f]/u);
  t.is(paint('ok', '\x1b[2J', true), '\x1b[32m\\x1b[2J\x1b[0m');
  t.is(paint('ok', '\x1b[2J', false), '\\x1b[2J');
  // Alignment counts the escaped text: the second column starts at the same place on every line.
  const aligned = table([['\x1b', 'Z'], ['abcdef', 'Q']], { colour: false }).split('\n');
  t.is(aligned[0]!.indexOf('Z'), aligned[1]!.indexOf('Q'));
});

test('printText lets through only our own colour codes, newlines and tabs', (t) => {
  let written = '';
  const sink = { write: (s: string) => ((written += s), true) } as unknown as NodeJS.WritableStream;
  printText(`${paint('bad', 'broken', true)}\t\x1b]0;pwned\x07 \x1b[2J \x9b \u202e\n`, sink);
  t.is(written, '\x1b[31mbroken\x1b[0m\t\\x1b]0;pwned\\x07 \\x1b[2J \\x9b \\u202e\n');
});

test('JSON output escapes DEL, C1, the line separators and bidi controls too, and parses back to the same value', (t) => {
  const value = { annotation: HOSTILE.join('|') };
  const text = jsonText(value);
  t.notRegex(text.replace(/\n/g, ''), CONTROL);
  t.deepEqual(JSON.parse(text), value);
  t.true(text.includes('\\u001b]0;pwned\\u0007'));
  t.true(text.includes('\\u009b31m'));
  t.true(text.includes('\\u202egnp.exe'));
});

const row = (over: Partial<PodRow>): PodRow => ({
  namespace: 'shop',
  name: 'cart',
  uid: 'u1',
  meshed: true,
  verdict: 'healthy',
  reason: 'rules match the plan',
  rules: 'ok',
  problems: [],
  netns: '/var/run/netns/x',
  backend: 'iptables-nft',
  lastAction: null,
  ...over,
});

test('pods text: a hostile name, reason or Event is printed escaped, on its own line', (t) => {
  const now = Date.parse('2026-01-01T00:01:00Z');
  const rows = [
    row({ name: 'cart\x1b[2J', reason: 'invalid x="\x9b31m": bad', lastAction: { source: 'event', reason: 'Evil\x1b]0;pwned\x07', message: 'm\x1b[H', at: '2026-01-01T00:00:00Z' } }),
    row({ name: 'orders\nshop/fake  yes  rules match the plan' }),
  ];
  const out = textTable(rows, now);
  t.notRegex(out, /[\x1b\x80-\x9f]/u, out);
  t.is(out.split('\n').filter(Boolean).length, 3, 'a header and one line per pod: a newline in a name forges no row');
  t.true(out.includes('shop/cart\\x1b[2J'), out);
  t.true(out.includes('Evil\\x1b]0;pwned\\x07'), out);
});

test('explain text: hostile annotations in the trail, an Event and rules read from the netns are printed escaped', (t) => {
  const e: Explanation = {
    pod: 'shop/cart',
    uid: 'u1',
    node: 'node-a',
    trail: [{ rule: 'annotations', outcome: 'error', detail: 'invalid traffic.sidecar.istio.io/includeOutboundIPRanges="\x1b]0;pwned\x07": not a CIDR' }],
    assumed: ['\u202eassumed'],
    meshed: false,
    mode: null,
    reason: 'invalid-config',
    backend: { name: 'iptables-nft', reason: 'auto' },
    netns: { path: '/var/run/netns/\x1b[2J', source: 'attachment', recorded: null, exists: true },
    families: ['ipv4'],
    expected: [],
    observed: [{ family: 'ipv4', table: 'nat', chain: 'OUTPUT', rule: '-m comment --comment "\x9b2J"' }],
    diff: [{ kind: 'unexpected', text: 'unexpected \x1b[2J' }],
    lastAction: { source: 'event', reason: 'R\x1b[2J', message: 'M\x1b]52;c;eA==\x07', at: '2026-01-01T00:00:00Z' },
    warnings: ['events: \x1b[31mforbidden'],
    verdict: 'unknown',
    problem: "the pod's annotations are invalid: \x1b[2J",
  };
  const out = explanationText(e, Date.parse('2026-01-01T00:01:00Z'));
  t.notRegex(out, /[\x1b\x80-\x9f\u202e]/u, out);
  t.true(out.includes('includeOutboundIPRanges="\\x1b]0;pwned\\x07"'), out);
  t.true(out.includes('M\\x1b]52;c;eA==\\x07'), out);
});
