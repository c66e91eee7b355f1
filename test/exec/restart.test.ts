// A daemon restart, kill -9 included, does not end terminal sessions: the workspace's init held their pty
// masters (native/exec.c parkSessions), the next daemon takes them back, and a re-attach finds the same
// shell, twice over. A plain exec ends with the daemon that ran it (PR_SET_PDEATHSIG), leaving nothing.
import t from 'tap';
import fs from 'node:fs';
import type { ListSessionsResponse__Output } from '../../src/generated/tetrix/agent/v1/ListSessionsResponse';
import { isAlive, type Daemon } from '../helpers/daemon';
import { eventually, exec, execDaemon, sleeper } from './fixture';

function listSessions(d: Daemon, id: string): Promise<ListSessionsResponse__Output> {
  return new Promise((resolve, reject) => d.clients.exec.ListSessions({ workspaceId: id }, (err, res) => (err ? reject(err) : resolve(res!))));
}

/** Host pids of the processes in workspace (init at initPid) whose cmdline contains text. */
function hostPidsRunning(initPid: number, text: string): number[] {
  const ns = fs.readlinkSync(`/proc/${initPid}/ns/pid`);
  const found: number[] = [];
  for (const entry of fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      if (fs.readlinkSync(`/proc/${entry}/ns/pid`) !== ns) continue;
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ').includes(text)) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

t.test('sessions survive a daemon kill -9 and are re-attached', async (t) => {
  const { d } = await execDaemon(t);
  await sleeper(d, 'ex-restart', 'alice');
  const init = (await d.get('ex-restart')).pid;

  const s = exec(d, { start: { workspaceId: 'ex-restart', argv: ['/bin/sh'], tty: true, session: true } });
  const id = await s.sessionId;
  s.send({ stdin: Buffer.from('echo "shell $$"\n') });
  await s.waitFor(/shell \d+\r\n/);
  const shell = /shell (\d+)\r\n/.exec(s.stdout().toString())![1];

  const plain = exec(d, { start: { workspaceId: 'ex-restart', argv: ['/bin/sh', '-c', 'echo started; exec sleep 4321'] } });
  await plain.waitFor('started');
  const plainPids = hostPidsRunning(init, 'sleep 4321');
  t.equal(plainPids.length, 1, 'the plain exec runs');

  for (const round of [1, 2]) {
    await d.kill9();
    await d.restart();
    const listed = (await listSessions(d, 'ex-restart')).sessions;
    t.match(listed, [{ sessionId: id, running: true, attached: false }], `round ${round}: the session is back, detached`);
    const again = exec(d, { attach: { workspaceId: 'ex-restart', sessionId: id } });
    t.equal(await again.sessionId, id);
    again.send({ stdin: Buffer.from(`echo "round ${round} $$"\n`) });
    await again.waitFor(`round ${round} ${shell}\r\n`);
    t.pass(`round ${round}: the same shell (pid ${shell} inside) answers`);
    if (round === 1) {
      again.send({ detach: true });
      await again.done;
      continue;
    }
    again.send({ stdin: Buffer.from('exit 4\n') });
    const { exit, error } = await again.done;
    t.notOk(error, error?.details);
    // Not our child any more (init reaped it): the status is honestly unknown.
    t.match(exit, { unknown: true });
  }
  t.notOk(plainPids.some(isAlive), 'the plain exec ended with the daemon that ran it');
  await eventually('no session left', async () => (await listSessions(d, 'ex-restart')).sessions.every((x) => !x.running));
  t.same(hostPidsRunning(init, '/bin/sh').filter((p) => p !== init), [], 'nothing of the sessions is left running');
  t.equal((await d.get('ex-restart')).state, 'WORKSPACE_STATE_RUNNING', 'the workload ran through it all');
});
