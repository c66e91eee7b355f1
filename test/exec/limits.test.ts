// An exec counts against its workspace's limits: it joined the workspace's cgroup before it exec'd, so a
// fork bomb in an exec session is stopped by the workspace's pids limit, the workload goes on, and the
// client going away clears the bomb away.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { cgroupDirsOf } from '../helpers/daemon';
import { eventually, exec, execDaemon, sleeper } from './fixture';

const PIDS = 32;

function pidsGroup(parent: string, id: string): string {
  const dir = cgroupDirsOf(parent).map((p) => path.join(p, id)).find((p) => fs.existsSync(path.join(p, 'pids.current')));
  if (!dir) throw new Error(`no pids group for ${id} under ${parent}`);
  return dir;
}

const read = (file: string): string => fs.readFileSync(file, 'utf8').trim();

t.test('a fork bomb in an exec is stopped by the workspace\'s pids limit', async (t) => {
  const { d } = await execDaemon(t);
  await sleeper(d, 'ex-bomb', 'alice', { resources: { memoryBytes: 128 << 20, cpuMillis: 500, pids: PIDS } });
  const group = pidsGroup(d.cgroupParent, 'ex-bomb');
  const before = Number(read(path.join(group, 'pids.current')));
  t.equal(read(path.join(group, 'pids.max')), String(PIDS));

  const bomb = exec(d, { start: { workspaceId: 'ex-bomb', argv: ['/bin/sh', '-c', 'echo go; b() { b | b & }; b; sleep 100'] } });
  await bomb.waitFor('go');
  const events = (): number => Number(/max (\d+)/.exec(read(path.join(group, 'pids.events')))?.[1] ?? 0);
  await eventually('the pids limit to refuse forks', () => events() > 0);
  t.ok(Number(read(path.join(group, 'pids.current'))) <= PIDS, `pids.current stays at or below ${PIDS}`);
  t.equal((await d.get('ex-bomb')).state, 'WORKSPACE_STATE_RUNNING', 'the workload is still running');

  bomb.call.cancel();
  await eventually('the bomb to be cleared away', () => Number(read(path.join(group, 'pids.current'))) <= before, 60_000);
  t.pass(`back to ${before} pids`);
  const after = exec(d, { start: { workspaceId: 'ex-bomb', argv: ['/bin/sh', '-c', 'echo fine'] } });
  await after.done;
  t.equal(after.stdout().toString(), 'fine\n', 'the workspace takes execs again');
});
