// The retention policy, as restic forget: per workspace, the newest N, one per day for D days, one per ISO
// week for W weeks; all zeros keep everything.
import t from 'tap';
import { isoWeek, toForget } from '../../../src/content/repo/retention';

const snap = (id: string, createdAt: string, workspaceId = 'ws-1') => ({ backupId: id, createdAt, binding: { workspaceId } });

t.test('keep-last, keep-daily and keep-weekly keep what restic forget keeps', async (t) => {
  const list = [
    snap('a', '2026-11-23T10:00:00.000Z'), // Monday, week 48
    snap('b', '2026-11-30T09:00:00.000Z'), // Monday, week 49
    snap('c', '2026-12-05T08:00:00.000Z'), // Saturday, week 49
    snap('d', '2026-12-06T08:00:00.000Z'), // Sunday
    snap('e', '2026-12-07T01:00:00.000Z'), // Monday, week 50
    snap('f', '2026-12-07T02:00:00.000Z'),
    snap('x', '2026-12-01T00:00:00.000Z', 'ws-2'),
  ];
  t.same(toForget(list, { keepLast: 0, keepDaily: 0, keepWeekly: 0 }), [], 'all zeros: nothing is forgotten');
  t.same(toForget(list, { keepLast: 2, keepDaily: 0, keepWeekly: 0 }).sort(), ['a', 'b', 'c', 'd'], 'the newest two per workspace');
  t.same(toForget(list, { keepLast: 1, keepDaily: 3, keepWeekly: 0 }).sort(), ['a', 'b', 'e'], 'newest, then the newest of each of 3 days');
  t.same(toForget(list, { keepLast: 0, keepDaily: 0, keepWeekly: 3 }).sort(), ['b', 'c', 'e'], 'the newest of each of 3 ISO weeks');
  t.equal(isoWeek(new Date('2026-12-07T00:00:00Z')), '2026-W50');
  t.equal(isoWeek(new Date('2027-01-01T00:00:00Z')), '2026-W53', 'a Friday 1 January belongs to the old year\'s last week');
});
