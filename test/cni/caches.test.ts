/** The bounded cache the agent's caches share (src/caches.ts): a unit test. */
import test from 'ava';
import { deepFreeze, RecentMap } from '../../src/caches';

test('RecentMap keeps at most max entries and drops the least recently used; get counts as a use, peek does not', (t) => {
  const m = new RecentMap<string, number>(2);
  m.set('a', 1);
  m.set('b', 2);
  t.is(m.get('a'), 1, 'a is now the most recently used');
  m.set('c', 3);
  t.deepEqual([m.has('a'), m.has('b'), m.has('c')], [true, false, true], 'b went, not a');
  t.is(m.peek('a'), 1);
  m.set('d', 4);
  t.deepEqual([m.has('a'), m.has('c'), m.has('d')], [false, true, true], 'peek left a the least recently used');
  m.set('c', 30);
  t.is(m.size, 2, 'setting a key that is there replaces it');
  t.deepEqual([...m.values()], [4, 30]);
  m.clear();
  t.is(m.size, 0);
});

test('deepFreeze freezes every level and hands back the same object', (t) => {
  const value = { a: { b: [1, { c: 2 }] } };
  t.is(deepFreeze(value), value);
  t.true(Object.isFrozen(value.a.b[1]));
  t.throws(() => {
    'use strict';
    (value.a.b as unknown[]).push(3);
  });
});
