// What an exec's output costs the daemon (December 2026 review, item 7, on the exec path of issue 18): a
// workspace held to a tenth of a core whose exec spams one-byte writes, to a client or into a detached
// session's replay ring, costs the daemon a small part of what the workspace gets, as its log does. Compared
// as CPU times over one window (the daemon's utime+stime against the workspace cgroup's usage).
import os from 'node:os';
import t, { type Test } from 'tap';
import type { Daemon } from '../helpers/daemon';
import { cpuOverWindow } from '../helpers/cpu-time';
import { exec, execDaemon, sleeper } from './fixture';

// Unpaced, the daemon spent 1.1 to 3.6 times the workload's CPU on a pipe, 0.3 to 0.4 times on a detached
// pty (native/exec.c's reader takes what piled up); paced, 0.1 to 0.16 times on either.
const MAX_ON_A_PIPE = 0.5;
const MAX_ON_A_PTY = 0.35;
const SPAM = ['/bin/dd', 'if=/dev/zero', 'bs=1'];
const LIMITED = { resources: { memoryBytes: 64 << 20, cpuMillis: 100, pids: 16 } };

async function compare(t: Test, d: Daemon, id: string, max: number): Promise<void> {
  const { daemonMs, workloadMs, windowMs } = await cpuOverWindow(d, id);
  t.comment(`over ${windowMs} ms on ${os.cpus().length} cpus: daemon ${daemonMs.toFixed(0)} ms CPU, workload ${workloadMs.toFixed(0)} ms CPU`);
  t.ok(workloadMs >= 300, 'the workload ran long enough to compare');
  t.ok(daemonMs <= max * workloadMs, `the daemon's CPU (${daemonMs.toFixed(0)} ms) is at most ${max}x the workload's (${workloadMs.toFixed(0)} ms)`);
}

t.test('an exec spamming one-byte writes to its client costs the daemon a small part of the workspace\'s CPU', async (t) => {
  const { d } = await execDaemon(t);
  await sleeper(d, 'ex-spam', 'alice', LIMITED);
  const run = exec(d, { start: { workspaceId: 'ex-spam', argv: SPAM } });
  await run.sessionId;
  await compare(t, d, 'ex-spam', MAX_ON_A_PIPE);
  run.call.cancel();
  await run.done;
});

t.test('a detached terminal session spamming one-byte writes costs the daemon a small part of the workspace\'s CPU', async (t) => {
  const { d } = await execDaemon(t);
  await sleeper(d, 'ex-spam-tty', 'alice', LIMITED);
  const run = exec(d, { start: { workspaceId: 'ex-spam-tty', argv: SPAM, tty: true, session: true } });
  await run.sessionId;
  run.send({ detach: true });
  t.notOk((await run.done).error, 'detached');
  await compare(t, d, 'ex-spam-tty', MAX_ON_A_PTY);
});
