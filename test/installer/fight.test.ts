/**
 * The fight policy (src/installer/fight.ts) on a clock the test moves: when a hold starts, how long it lasts,
 * what a failed try does, when the fight counts as over, and the advice the operator gets.
 */
import test from 'ava';
import { adviceFor, FightGuard, type FightPolicy } from '../../src/installer/fight';

const POLICY: FightPolicy = { removals: 5, windowMs: 60_000, quietMs: 60_000, maxQuietMs: 300_000 };

test('four removals in a minute are repaired; the fifth starts a hold of the quiet period', (t) => {
  const g = new FightGuard(POLICY);
  for (let i = 0; i < 4; i++) t.is(g.removal(i * 1000), undefined);
  t.is(g.holding(4000), undefined);
  const hold = g.removal(4000);
  t.deepEqual(hold, { since: 4000, until: 64_000, removals: 5, strike: 1 });
  t.truthy(g.holding(63_999));
});

test('removals spread wider than the window never hold (a primary that rewrites now and then)', (t) => {
  const g = new FightGuard(POLICY);
  for (let i = 0; i < 50; i++) t.is(g.removal(i * 15_000), undefined, `removal ${i}`);
});

test('while held, removals do not count; the hold ends on time and the try that stands a window ends the fight', (t) => {
  const g = new FightGuard(POLICY);
  for (let i = 0; i < 5; i++) g.removal(i);
  t.is(g.removal(30_000), undefined);
  t.is(g.holding(60_004), undefined, 'the hold ran its time');
  // The try stands for a window: strikes reset, and five more removals are needed again, with the first quiet period.
  t.is(g.holding(120_004), undefined);
  for (let i = 0; i < 4; i++) t.is(g.removal(200_000 + i), undefined);
  t.deepEqual(g.removal(200_004), { since: 200_004, until: 260_004, removals: 5, strike: 1 });
});

test('a removal right after a try holds again at once, twice as long each time, up to the maximum', (t) => {
  const g = new FightGuard(POLICY);
  for (let i = 0; i < 5; i++) g.removal(i);
  let now = 60_004;
  const quiet: number[] = [];
  for (let strike = 2; strike <= 5; strike++) {
    t.is(g.holding(now), undefined);
    const hold = g.removal(now + 100);
    t.truthy(hold);
    t.is(hold!.strike, strike);
    t.is(hold!.removals, 1);
    quiet.push(hold!.until - hold!.since);
    now = hold!.until;
  }
  t.deepEqual(quiet, [120_000, 240_000, 300_000, 300_000]);
});

test('advice: Cilium is told cni.exclusive=false; any other primary is named with the conf dir', (t) => {
  t.regex(adviceFor('cilium-cni', '/etc/cni/net.d'), /cni\.exclusive=false/);
  const other = adviceFor('calico', '/etc/cni/net.d');
  t.regex(other, /calico/);
  t.regex(other, /\/etc\/cni\/net\.d/);
});
