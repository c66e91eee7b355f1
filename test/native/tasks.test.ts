// init --tasks (native/init.c run_tasks) driven by the daemon's side of the task channel
// (src/prebuild/tasks.ts): tasks in order, each with its own env and output pipes, statuses from init's
// own waitpid, with and without the gate, and what init does when the daemon goes away.
import t, { type Test } from 'tap';
import { native, type ExitStatus } from '../../src/native';
import { serveTasks, type TaskEvent } from '../../src/prebuild/tasks';
import type { TaskSpec } from '../../src/workspace/types';
import fs from 'node:fs';
import { makeHostDir, makeRootfs, openFds, testIdBase, workspaceOptions } from './fixture';

const { SIGKILL } = native.constants;

async function readAll(fd: number): Promise<string> {
  const net = await import('node:net');
  const s = new net.Socket({ fd, readable: true, writable: false });
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts).toString();
}

interface Run {
  events: string[];
  outputs: Map<number, Promise<[string, string]>>;
  served: Promise<void>;
  exited: Promise<ExitStatus>;
  status(): string;
  initOutput(): string;
  pid: number;
  channel: number;
}

async function runTasks(t: Test, tasks: TaskSpec[], opts: { hold?: boolean; serve?: boolean } = {}): Promise<Run> {
  const rootfs = makeRootfs(t);
  const [daemonEnd, initEnd] = native.socketPair();
  const base = testIdBase();
  const dir = makeHostDir(t, 'tasks');
  fs.chownSync(dir, base, base);
  const ws = workspaceOptions(t, rootfs, [], {
    tasksFd: initEnd,
    env: ['PATH=/bin', 'SHARED=workspace', 'OVERRIDDEN=workspace'],
    uidBase: base,
    gidBase: base,
    mounts: [{ source: dir, target: '/workspace', readonly: false }],
  });
  const spawned = opts.hold ? await native.spawn({ ...ws.options, holdWorkload: true }) : await native.spawn(ws.options);
  ws.close();
  native.closeFd(initEnd);
  let ended = false;
  const exited = new Promise<ExitStatus>((resolve) => native.watchExit(spawned.pidfd, (s) => { ended = true; native.closeFd(spawned.pidfd); resolve(s); }));
  t.teardown(async () => {
    if (!ended) native.pidfdSendSignal(spawned.pidfd, SIGKILL);
    await exited;
  });
  if (spawned.held) await native.releaseWorkload(spawned.held);
  const events: string[] = [];
  const outputs = new Map<number, Promise<[string, string]>>();
  const served = opts.serve === false
    ? Promise.resolve()
    : serveTasks(tasks, daemonEnd, native, {
        onEvent: (e: TaskEvent) => events.push(e.kind === 'start' ? `start ${e.index}` : `end ${e.index} ${e.exitCode}`),
        onOutput: (i, out, err) => outputs.set(i, Promise.all([readAll(out), readAll(err)])),
      });
  return { events, outputs, served, exited, status: ws.status, initOutput: ws.output, pid: spawned.pid, channel: daemonEnd };
}

const task = (name: string, script: string, env: Record<string, string> = {}, workingDir = '/'): TaskSpec => ({ name, command: ['sh', '-c', script], workingDir, env });

for (const hold of [false, true]) {
  t.test(`tasks run in order with their own env and output, and stop at the first failure${hold ? ' (held first)' : ''}`, async (t) => {
    const before = openFds();
    const run = await runTasks(t, [
      task('a', 'echo "a $SHARED $OVERRIDDEN $OWN"; pwd; echo err-a >&2', { OWN: 'a-value', OVERRIDDEN: 'task-a' }, '/tmp'),
      task('b', 'echo "b ${OWN:-unset}"; exit 3'),
      task('c', 'echo never'),
    ], { hold });
    await run.served;
    t.same(await run.exited, { exitCode: 3, signal: null, reaped: true }, "init exits with the failed task's code");
    t.equal(run.status(), 'exited 3\n', 'and writes it to the status fd');
    t.same(run.events, ['start 0', 'end 0 0', 'start 1', 'end 1 3'], 'statuses as init saw them; the third never started');
    t.same(await run.outputs.get(0), ['a workspace task-a a-value\n/tmp\n', 'err-a\n'], 'task a: its env over the workspace env, its cwd, its streams');
    t.same(await run.outputs.get(1), ['b unset\n', ''], "task b does not see task a's env");
    t.notOk(run.outputs.has(2), 'task c was never sent');
    t.equal(run.initOutput(), '', 'nothing reached the workspace stdout');
    t.same(openFds(), before, 'no fd leaked');
  });
}

t.test('a task that cannot be exec\'d fails with 127 and says why on its stderr', async (t) => {
  const run = await runTasks(t, [{ name: 'x', command: ['/no/such/program'], workingDir: '/', env: {} }]);
  await run.served;
  t.same(run.events, ['start 0', 'end 0 127']);
  const [, err] = (await run.outputs.get(0))!;
  t.match(err, /task 0: execve \/no\/such\/program: No such file or directory/);
});

t.test('what a task leaves running is gone before the next task starts', async (t) => {
  const run = await runTasks(t, [
    task('a', 'sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /workspace/left'),
    task('b', 'p=$(cat /workspace/left); if kill -0 "$p" 2>/dev/null; then echo alive; else echo gone; fi'),
  ]);
  await run.served;
  t.same(run.events.slice(0, 2), ['start 0', 'end 0 0'], `the first task succeeded (${(await run.outputs.get(0))?.join('|')})`);
  t.equal((await run.outputs.get(1))?.[0], 'gone\n');
  t.same(await run.exited, { exitCode: 0, signal: null, reaped: true });
});

t.test('when the daemon goes away, init starts no further task and exits 125', async (t) => {
  const run = await runTasks(t, [task('a', 'echo a')], { serve: false });
  native.closeFd(run.channel);
  t.same(await run.exited, { exitCode: 125, signal: null, reaped: true });
  t.equal(run.status(), 'exited 125\n');
});
