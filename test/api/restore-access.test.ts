// The access rule for restore_from (src/api/auth.ts authorizeRestore), without a daemon: the backup's
// recorded workspace decides, as the workspace itself would, with the prebuild team's share.
import t from 'tap';
import { authorizeRestore, RESTORE_PERMISSION_DENIED, type Principal } from '../../src/api/auth';
import type { AuditEvent } from '../../src/api/audit';

const alice: Principal = { kind: 'user', userId: 'alice', teams: ['team-a'] };
const bob: Principal = { kind: 'user', userId: 'bob', teams: ['team-a'] };
const dave: Principal = { kind: 'user', userId: 'dave', teams: ['team-b'] };
const operator: Principal = { kind: 'operator', name: 'local' };
const regular = { workspaceId: 'ws-a', ownerId: 'alice', teamId: 'team-a', kind: 'REGULAR' as const };
const prebuild = { ...regular, workspaceId: 'pb', kind: 'PREBUILD' as const };

function decide(p: Principal | undefined, binding: typeof regular | typeof prebuild | undefined): { outcome: string; audit: AuditEvent[] } {
  const audit: AuditEvent[] = [];
  try {
    authorizeRestore(p, { id: 'bk-x', binding }, { record: (e) => audit.push(e) });
    return { outcome: 'allow', audit };
  } catch (err) {
    const e = err as { code: string; message: string };
    return { outcome: `${e.code}: ${e.message}`, audit };
  }
}

t.test('owner, prebuild team and operators may restore; anyone else is refused as for an unknown id', async (t) => {
  const denied = `PERMISSION_DENIED: ${RESTORE_PERMISSION_DENIED}`;
  const cases: Array<[string, Principal | undefined, typeof regular | undefined, string]> = [
    ['the owner, her regular backup', alice, regular, 'allow'],
    ['a teammate, a regular backup', bob, regular, denied],
    ['a teammate, a prebuild backup', bob, prebuild, 'allow'],
    ['outside the team, a prebuild backup', dave, prebuild, denied],
    ['a user, an unknown or version 1 backup', alice, undefined, denied],
    ['an operator, anything', operator, regular, 'allow'],
    ['an operator, an unknown or version 1 backup', operator, undefined, 'allow'],
    ['nobody', undefined, regular, 'UNAUTHENTICATED: credentials required'],
  ];
  for (const [what, p, binding, expected] of cases) {
    const { outcome, audit } = decide(p, binding);
    t.equal(outcome, expected, what);
    t.match(audit, [{ action: 'restore', backup: 'bk-x', decision: expected === 'allow' ? 'allow' : 'deny' }], `${what}: audited`);
  }
});
