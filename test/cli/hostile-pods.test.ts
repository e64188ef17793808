/**
 * Pods as a hostile or careless cluster hands them to the CLI, against a real kube-apiserver + etcd, the built
 * CLI run as a separate process (issue 20):
 * - terminal escapes: annotations and Events carrying ESC/OSC/CSI sequences, C1 controls and bidi overrides
 *   never reach the operator's terminal from `explain`, `pods` or `status`, in text or JSON;
 * - one bad pod never hides the node: `pods` lists every pod and shows the one with invalid annotations as
 *   `invalid`, with the reason.
 */
import test, { type ExecutionContext } from 'ava';
import type { V1Pod } from '@kubernetes/client-node';
import { type CliResult } from '../support/cli';
import { NODE, startCliNode, type CliNode } from '../support/cli-node';

let node: CliNode | undefined;

/** What a terminal acts on: ESC and every other C0 control but newline, DEL, C1, the line separators, bidi controls. */
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/u;

const TITLE = '\x1b]0;pwned\x07';
const CLEAR = '\x1b[2J\x1b[H';
const BAD_RANGES = `10.0.0.0/33${TITLE}${CLEAR}`;
const EVENT_REASON = `Evil${TITLE}`;
const EVENT_MESSAGE = `${CLEAR}\x9b31mred\u202egnp.exe\x1b]52;c;cHduZWQ=\x07\nforged line`;

/** Every character of the output a terminal could act on, listed, so a failure shows what leaked. */
function noControls(t: ExecutionContext, r: CliResult, what: string): void {
  for (const [name, text] of [['stdout', r.stdout], ['stderr', r.stderr]] as const) {
    const leaked = [...text].filter((c) => CONTROL.test(c)).map((c) => `U+${c.codePointAt(0)!.toString(16).padStart(4, '0')}`);
    t.deepEqual(leaked, [], `${what}: control characters on ${name}:\n${JSON.stringify(text)}`);
  }
}

const json = (r: CliResult) => JSON.parse(r.stdout);

test.before(async () => {
  node = await startCliNode();
  const n = node;
  await n.createPod({ namespace: 'shop', name: 'cart' });
  await n.createPod({ namespace: 'shop', name: 'bad-ranges', annotations: { 'traffic.sidecar.istio.io/includeOutboundIPRanges': BAD_RANGES } });
  await n.createPod({ namespace: 'shop', name: 'bad-status', meshed: false, annotations: { 'sidecar.istio.io/status': '{not json' } });
  await n.createPod({ namespace: 'shop', name: 'plain', meshed: false });
  // A namespace with no invalid pod, so `pods -n evil` prints its table on any version: the Event is the attack.
  const victim = await n.createPod({ namespace: 'evil', name: 'victim' });
  await createEvent(n, victim, EVENT_REASON, EVENT_MESSAGE);
});

test.after.always(async () => {
  if (node) await node.stop();
});

/** An Event as mesh-cni writes them (source mesh-cni, on the pod), with whatever reason and message. */
async function createEvent(n: CliNode, pod: V1Pod, reason: string, message: string): Promise<void> {
  const now = new Date();
  await n.kube.core().createNamespacedEvent({
    namespace: pod.metadata!.namespace!,
    body: {
      metadata: { name: `${pod.metadata!.name}.hostile`, namespace: pod.metadata!.namespace! },
      involvedObject: { kind: 'Pod', apiVersion: 'v1', namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, uid: pod.metadata!.uid! },
      reason,
      message,
      type: 'Warning',
      source: { component: 'mesh-cni', host: NODE },
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
    },
  });
}

test('pods: one pod with an invalid annotation is listed as invalid with the reason, every other pod is listed too (exit 1)', (t) => {
  const n = node!;
  const text = n.run(['pods']);
  t.is(text.code, 1, `${text.stdout}${text.stderr}`);
  const rows = text.stdout.split('\n').filter((l) => /^\S+\/\S+ /.test(l));
  t.deepEqual(
    rows.map((l) => l.split(/\s+/)[0]),
    ['evil/victim', 'shop/bad-ranges', 'shop/bad-status', 'shop/cart', 'shop/plain'],
    text.stdout + text.stderr,
  );
  const bad = rows.find((l) => l.startsWith('shop/bad-ranges '))!;
  t.regex(bad, /^shop\/bad-ranges\s+invalid\s+invalid traffic\.sidecar\.istio\.io\/includeOutboundIPRanges="10\.0\.0\.0\/33\\x1b\]0;pwned\\x07\\x1b\[2J\\x1b\[H": /);
  t.regex(text.stdout, /^1 invalid: the pod's annotations are invalid, so every ADD for it fails/m);
  noControls(t, text, 'pods');

  const out = n.run(['pods', '-o', 'json']);
  t.is(out.code, 1, out.stdout + out.stderr);
  const pods = json(out).pods as Array<{ namespace: string; name: string; verdict: string; meshed: boolean; reason: string; rules: string; backend: string | null }>;
  t.deepEqual(
    pods.map((p) => `${p.namespace}/${p.name}`),
    ['evil/victim', 'shop/bad-ranges', 'shop/bad-status', 'shop/cart', 'shop/plain'],
  );
  const row = pods.find((p) => p.name === 'bad-ranges')!;
  t.like(row, { verdict: 'invalid', meshed: false, rules: 'n/a', backend: null });
  t.is(row.reason, `invalid traffic.sidecar.istio.io/includeOutboundIPRanges="${BAD_RANGES}": "10.0.0.0/33${TITLE}${CLEAR}" is not an IPv4 or IPv6 CIDR`, 'JSON keeps the value exactly');
  // A malformed sidecar.istio.io/status is not an error: the plugin decides from the pod spec, as ADD does.
  t.like(pods.find((p) => p.name === 'bad-status'), { verdict: 'not-meshed' });
  t.like(pods.find((p) => p.name === 'cart'), { verdict: 'unknown', meshed: true });
  noControls(t, out, 'pods -o json');
});

test('status counts the invalid pod and names it as a problem', (t) => {
  const n = node!;
  const text = n.run(['status']);
  t.is(text.code, 1, text.stdout + text.stderr);
  t.regex(text.stdout, new RegExp(`^pods\\s+5 on ${NODE}: 2 meshed \\(0 healthy, 0 broken, 2 unknown\\), 2 skipped, 1 invalid$`, 'm'), text.stdout);
  t.regex(text.stdout, /^ {2}- 1 pod with invalid annotations: every ADD for it fails \(mesh-cni pods\)$/m);
  noControls(t, text, 'status');
  const out = json(n.run(['status', '-o', 'json']));
  t.like(out.pods, { available: true, total: 5, meshed: 2, unknown: 2, skipped: 2, invalid: 1 });
});

test('pods and explain print an Event\'s hostile reason and message escaped, never as control sequences', (t) => {
  const n = node!;
  const pods = n.run(['pods', '-n', 'evil']);
  t.is(pods.code, 0, pods.stdout + pods.stderr);
  t.regex(pods.stdout, /^evil\/victim\s+yes\s+.*Evil\\x1b\]0;pwned\\x07 /m, pods.stdout);
  noControls(t, pods, 'pods -n evil');

  const explain = n.run(['explain', 'evil/victim']);
  t.true(explain.stdout.includes(`last action: Evil\\x1b]0;pwned\\x07 `), explain.stdout);
  t.true(explain.stdout.includes(': \\x1b[2J\\x1b[H\\x9b31mred\\u202egnp.exe\\x1b]52;c;cHduZWQ=\\x07\\nforged line\n'), explain.stdout);
  noControls(t, explain, 'explain evil/victim');

  // JSON: escaped on the wire, exactly the Event's words once parsed.
  for (const args of [['pods', '-n', 'evil', '-o', 'json'], ['explain', 'evil/victim', '-o', 'json']]) {
    const r = n.run(args);
    noControls(t, { ...r, stdout: r.stdout.replace(/\n/g, '') }, args.join(' '));
    const parsed = json(r);
    const lastAction = args[0] === 'pods' ? parsed.pods[0].lastAction : parsed.lastAction;
    t.like(lastAction, { source: 'event', reason: EVENT_REASON, message: EVENT_MESSAGE }, args.join(' '));
  }
});

test('explain prints a hostile annotation in its decision trail escaped, never as control sequences', (t) => {
  const n = node!;
  const explain = n.run(['explain', 'shop/bad-ranges']);
  t.regex(explain.stdout, /^ {2}annotations\s+error\s+invalid traffic\.sidecar\.istio\.io\/includeOutboundIPRanges="10\.0\.0\.0\/33\\x1b\]0;pwned\\x07\\x1b\[2J\\x1b\[H": /m, explain.stdout);
  noControls(t, explain, 'explain shop/bad-ranges');
  const out = n.run(['explain', 'shop/bad-ranges', '-o', 'json']);
  noControls(t, { ...out, stdout: out.stdout.replace(/\n/g, '') }, 'explain -o json');
  t.true(json(out).trail.some((s: { detail: string }) => s.detail.includes(BAD_RANGES)));
});

test('explain of a pod with invalid annotations and no netns: the trail ends in the error, the verdict names the problem (exit 1)', (t) => {
  const n = node!;
  const out = n.run(['explain', 'shop/bad-ranges', '-o', 'json']);
  t.is(out.code, 1, out.stdout + out.stderr);
  const e = json(out);
  t.like(e, { meshed: false, reason: 'invalid-config', verdict: 'unknown', problem: "the pod's annotations are invalid: every ADD for it fails" });
  const last = e.trail[e.trail.length - 1];
  t.like(last, { rule: 'annotations', outcome: 'error' });
  t.false(
    e.trail.some((s: { rule: string; outcome: string }) => s.rule === 'meshed' || (s.rule === 'annotations' && s.outcome === 'pass')),
    'no "annotations pass" or "meshed" step before the error: they were not the answer',
  );
  const text = n.run(['explain', 'shop/bad-ranges']);
  t.is(text.code, 1);
  t.regex(text.stdout, /^verdict: unknown: the pod's annotations are invalid: every ADD for it fails$/m, text.stdout);
});
