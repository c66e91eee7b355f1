// turnGate: a burst of callers passes a few per event-loop turn, in arrival order, so the loop gets
// back to its I/O between batches (src/promises.ts; used by StartWorkspace).
import t from 'tap';
import { turnGate } from '../../src/promises';

t.test('callers pass at most perTurn per turn, in order, until none is left', async (t) => {
  // A ticker that re-arms itself every turn: the gate's release, armed after it, runs right after it
  // in each turn's check phase, so passes that see the same tick passed in the same turn.
  let tick = 0;
  let ticking = true;
  const ticker = (): void => {
    tick++;
    if (ticking) setImmediate(ticker);
  };
  setImmediate(ticker);
  const gate = turnGate(3);
  const passed: Array<{ caller: number; tick: number }> = [];
  await Promise.all(Array.from({ length: 7 }, (_, caller) => gate().then(() => passed.push({ caller, tick }))));
  ticking = false;
  t.same(passed.map((p) => p.caller), [0, 1, 2, 3, 4, 5, 6], 'in arrival order');
  const perTurn = new Map<number, number>();
  for (const p of passed) perTurn.set(p.tick, (perTurn.get(p.tick) ?? 0) + 1);
  t.same([...perTurn.values()], [3, 3, 1], 'three turns: 3, 3 and the last one');
  t.same([...perTurn.keys()].map((k, i, all) => k - all[0]), [0, 1, 2], 'one batch per turn, in consecutive turns');
});

t.test('a caller that comes alone passes in the next turn, and the gate can be used again', async (t) => {
  const gate = turnGate(8);
  let other = false;
  setImmediate(() => (other = true));
  await gate();
  t.ok(other, 'the turn that was already queued ran first: the gate only defers to the check phase');
  await gate();
  await Promise.all([gate(), gate()]);
  t.pass('reused after it drained');
});
