// What draining a workspace's output costs the daemon (December 2026 review, item 7): a workload held to a
// tenth of a core that spams one-byte writes must not make the daemon burn a core. Compared as CPU times
// over the same window (the daemon's utime+stime against the workspace cgroup's usage), never wall clock.
import os from 'node:os';
import t from 'tap';
import { startDaemon } from '../helpers/daemon';
import { cpuOverWindow } from '../helpers/cpu-time';

// Generous: before the fix the daemon spent about ten times the workload's CPU; paced it spends a few percent.
const MAX_DAEMON_PER_WORKLOAD = 1;

t.test('a workload spamming one-byte writes costs the daemon less CPU than it gets itself', async (t) => {
  const d = await startDaemon(t);
  const w = await d.start({
    id: 'spammer',
    ownerId: 'alice',
    image: 'builtin:busybox',
    // dd with bs=1: one read and one one-byte write per byte, about the cheapest write loop there is.
    command: ['/bin/dd', 'if=/dev/zero', 'bs=1'],
    resources: { memoryBytes: 64 << 20, cpuMillis: 100, pids: 16 },
  });
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
  const { daemonMs, workloadMs, windowMs } = await cpuOverWindow(d, 'spammer');
  t.comment(`over ${windowMs} ms on ${os.cpus().length} cpus: daemon ${daemonMs.toFixed(0)} ms CPU, workload ${workloadMs.toFixed(0)} ms CPU`);
  t.ok(workloadMs >= 300, 'the workload ran long enough to compare');
  t.ok(daemonMs <= MAX_DAEMON_PER_WORKLOAD * workloadMs, `the daemon's CPU (${daemonMs.toFixed(0)} ms) is at most ${MAX_DAEMON_PER_WORKLOAD}x the workload's (${workloadMs.toFixed(0)} ms)`);
  await d.teardown('spammer');
});
