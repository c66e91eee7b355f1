// Who may use ImageService: operators everything, users pull only, nobody without credentials; audited.
import t from 'tap';
import { authorizeImageAccess, decideImageAccess, decideImageRegistry, type Principal } from '../../src/api/auth';
import type { AuditEvent } from '../../src/api/audit';

t.test('the image access rule', async (t) => {
  const operator: Principal = { kind: 'operator', name: 'local' };
  const user: Principal = { kind: 'user', userId: 'alice', teams: ['t1'] };
  for (const action of ['pull', 'list', 'remove'] as const) t.ok(decideImageAccess(operator, action).allow, `operators may ${action}`);
  t.ok(decideImageAccess(user, 'pull').allow, 'users may pull (a start pulls anyway)');
  t.match(decideImageAccess(user, 'list'), { allow: false, code: 'PERMISSION_DENIED' }, 'users may not list');
  t.match(decideImageAccess(user, 'remove'), { allow: false, code: 'PERMISSION_DENIED' }, 'users may not remove');
  t.match(decideImageAccess(undefined, 'pull'), { allow: false, code: 'UNAUTHENTICATED' });
  const events: AuditEvent[] = [];
  const audit = { record: (e: AuditEvent) => void events.push(e) };
  t.throws(() => authorizeImageAccess(user, 'remove', 'reg.example/app:1', audit), { code: 'PERMISSION_DENIED', message: 'image: remove: node operators only' });
  authorizeImageAccess(user, 'pull', 'reg.example/app:1', audit);
  t.match(events, [
    { who: 'user:alice', action: 'image.remove', image: 'reg.example/app:1', decision: 'deny' },
    { who: 'user:alice', action: 'image.pull', decision: 'allow' },
  ]);
});

t.test('--user-registries limits the registries users may name', async (t) => {
  const operator: Principal = { kind: 'operator', name: 'local' };
  const user: Principal = { kind: 'user', userId: 'alice', teams: [] };
  t.ok(decideImageRegistry(user, 'anywhere.example', []).allow, 'no list: any');
  t.ok(decideImageRegistry(user, 'reg.example:5000', ['reg.example:5000']).allow, 'a listed one');
  t.match(decideImageRegistry(user, '10.0.0.1:443', ['reg.example:5000']), { allow: false, code: 'PERMISSION_DENIED' }, 'an internal host is refused');
  t.ok(decideImageRegistry(operator, '10.0.0.1:443', ['reg.example:5000']).allow, 'operators may name any');
});
