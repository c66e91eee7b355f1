// The daemon's log as an operator reads it (pino-pretty, jq, journald): the daemon's own lines only,
// with field names the usual tools do not misread; access decisions in an audit file of their own.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon } from '../helpers/daemon';

const parsed = (lines: string[]): Array<Record<string, unknown>> =>
  lines.flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });

t.test("a workspace's host pid is not logged as the daemon's pid, and audit lines go to their own file", async (t) => {
  const d = await startDaemon(t);
  const w = await d.start({ id: 'log-fields', ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'] });
  const running = parsed(d.output).find((l) => l.msg === 'workspace running');
  t.ok(running, 'the daemon says the workspace runs');
  t.equal(running?.hostPid, w.pid, 'naming its host pid as hostPid');
  t.notOk(running && 'pid' in running, "and no field named pid, which log viewers show as the daemon's own");
  await d.list();
  t.notOk(d.output.some((l) => l.includes('"component":"audit"')), 'no audit line in the daemon log');
  const audit = parsed(fs.readFileSync(path.join(d.stateDir, 'audit.log'), 'utf8').split('\n'));
  t.ok(audit.some((l) => l.audit === true && l.decision === 'allow' && l.workspace === 'log-fields' && String(l.who).startsWith('operator:')), 'the operator\'s access is in the audit file');
  t.equal(fs.statSync(path.join(d.stateDir, 'audit.log')).mode & 0o777, 0o600, 'which only root reads');
  await d.teardown('log-fields');
});
