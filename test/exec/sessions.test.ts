// Terminal sessions through the real daemon: they outlive their client, ListSessions shows them, a re-attach
// replays at least the last 256 KiB and carries on, `tetrixctl attach` does the same on a terminal, a
// session left detached and quiet is closed after the configured time, and 100 MB through a session leave
// the daemon's memory flat.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { ExecOutput__Output } from '../../src/generated/tetrix/agent/v1/ExecOutput';
import type { ListSessionsResponse__Output } from '../../src/generated/tetrix/agent/v1/ListSessionsResponse';
import { ctlMain, isAlive, type Daemon } from '../helpers/daemon';
import { eventually, exec, execDaemon, sleeper } from './fixture';

const IDLE_MS = 4000;
const KiB = 1024;

function listSessions(d: Daemon, id: string): Promise<ListSessionsResponse__Output> {
  return new Promise((resolve, reject) => d.clients.exec.ListSessions({ workspaceId: id }, (err, res) => (err ? reject(err) : resolve(res!))));
}

function rssBytes(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * KiB;
}

t.test('terminal sessions', async (t) => {
  const { d } = await execDaemon(t, ['--exec-detached-timeout-ms', String(IDLE_MS)]);
  await sleeper(d, 'ex-sess', 'alice');
  const content = path.join(d.stateDir, 'workspaces', 'ex-sess', 'content');

  await t.test('a session outlives its client; a re-attach replays the last 256 KiB and carries on', async (t) => {
    // 400 lines of ~1 KiB while nobody is attached, then it waits for a line.
    const printer = 'pad=$(head -c 1000 /dev/zero | tr "\\0" x); i=0; while [ $i -lt 400 ]; do echo "line $i $pad"; i=$((i+1)); done; echo done-printing; touch /workspace/printed; read x; echo "got $x"; exit 5';
    const first = exec(d, { start: { workspaceId: 'ex-sess', argv: ['/bin/sh', '-c', printer], tty: true, session: true } });
    const id = await first.sessionId;
    t.match(id, /^s-[0-9a-f]{16}$/);
    first.call.cancel(); // the client dies
    await first.done;
    await eventually('the session to finish printing', () => fs.existsSync(path.join(content, 'printed')));
    const listed = (await listSessions(d, 'ex-sess')).sessions.find((s) => s.sessionId === id);
    t.match(listed, { running: true, attached: false, argv: ['/bin/sh', '-c', printer] }, 'listed, running, detached');

    const again = exec(d, { attach: { workspaceId: 'ex-sess', sessionId: id } });
    await again.waitFor('done-printing');
    const replay = again.stdout().toString('latin1');
    t.ok(replay.length >= 256 * KiB, `replayed ${replay.length} bytes (at least 256 KiB)`);
    t.match(replay, /line 399 x+\r\ndone-printing\r\n$/, 'the tail, up to the last byte');
    t.notMatch(replay, /line 0 /, 'not the whole history: a ring');
    t.ok((await listSessions(d, 'ex-sess')).sessions.find((s) => s.sessionId === id)?.attached, 'attached again');
    again.send({ stdin: Buffer.from('hello\n') });
    const { exit } = await again.done;
    t.match(again.stdout().toString(), /got hello/);
    t.match(exit, { exitCode: 5 });
  });

  await t.test('tetrixctl attach on a terminal', async (t) => {
    const s = exec(d, { start: { workspaceId: 'ex-sess', argv: ['/bin/sh'], tty: true, session: true } });
    const id = await s.sessionId;
    s.send({ stdin: Buffer.from('echo before-detach\n') });
    await s.waitFor('before-detach\r\n');
    s.send({ detach: true });
    t.notOk((await s.done).error, 'detach ends the call cleanly');
    const child = spawn('script', ['-qefc', `${process.execPath} ${ctlMain} attach ex-sess ${id}`, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, TETRIX_SOCKET_PATH: d.socketPath } });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    const code = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    await eventually('the replay', () => out.includes('before-detach'));
    child.stdin.write('echo via-ctl; exit 3\r');
    t.equal(await code, 3, 'the session\'s exit code');
    t.match(out, /via-ctl/);
  });

  await t.test('a session left detached and quiet is closed after the configured time', async (t) => {
    const s = exec(d, { start: { workspaceId: 'ex-sess', argv: ['/bin/sh', '-c', 'echo "pid $$"; exec sleep 1000'], tty: true, session: true } });
    const id = await s.sessionId;
    await s.waitFor(/pid \d+/);
    s.call.cancel();
    await s.done;
    const began = Date.now();
    await eventually('the idle session to be closed', async () => !(await listSessions(d, 'ex-sess')).sessions.some((x) => x.sessionId === id && x.running), 60_000);
    t.ok(Date.now() - began >= IDLE_MS - 500, 'not before the timeout');
    const gone = exec(d, { attach: { workspaceId: 'ex-sess', sessionId: id } });
    const { error, exit } = await gone.done;
    t.ok(error?.code === 5 || exit?.signal === 'SIGHUP', `then it is gone, or ended by SIGHUP (${error?.details ?? JSON.stringify(exit)})`);
  });

  await t.test('100 MB through a session: the daemon\'s memory stays flat', async (t) => {
    const call = d.clients.exec.ExecWorkspace();
    let bytes = 0;
    let peak = 0;
    const before = rssBytes(d.process.pid!);
    const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(d.process.pid!))), 50);
    const done = new Promise<ExecOutput__Output['exit']>((resolve, reject) => {
      let exit: ExecOutput__Output['exit'];
      call.on('data', (m: ExecOutput__Output) => {
        if (m.stdout) {
          // A slow client for a while: the daemon must hold the producer back, not buffer for it.
          const crosses = (mark: number): boolean => bytes < mark && bytes + m.stdout!.length >= mark;
          if (crosses(10 * 2 ** 20)) {
            call.pause();
            setTimeout(() => call.resume(), 3000);
          }
          // And at the very end, for longer than the daemon waits for an exited process's output: what the
          // process left in its pty must still all arrive.
          if (crosses(100 * 2 ** 20 - 64 * 1024)) {
            call.pause();
            setTimeout(() => call.resume(), 2500);
          }
          bytes += m.stdout.length;
        }
        if (m.exit) exit = m.exit;
      });
      call.on('error', reject);
      call.on('end', () => resolve(exit));
    });
    call.write({ start: { workspaceId: 'ex-sess', argv: ['/bin/sh', '-c', 'head -c 104857600 /dev/zero; stty -opost; printf END'], tty: true, session: true } });
    const exit = await done;
    clearInterval(sampler);
    const growth = peak - before;
    t.comment(`daemon RSS before ${(before / 2 ** 20).toFixed(1)} MiB, peak ${(peak / 2 ** 20).toFixed(1)} MiB`);
    t.equal(bytes, 100 * 2 ** 20 + 3, `every byte arrived, END included (${100 * 2 ** 20 + 3 - bytes} missing)`);
    t.match(exit, { exitCode: 0 });
    t.ok(growth < 32 * 2 ** 20, `the daemon grew by ${(growth / 2 ** 20).toFixed(1)} MiB for 100 MiB through it, a slow client included (under 32 MiB; ~45 without flow control)`);
    t.ok(isAlive(d.process.pid!));
  });
});
