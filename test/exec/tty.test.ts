// Terminals through the real daemon: a pty from the workspace's own devpts with the asked size, resizes
// (`stty size` inside), Ctrl-C reaching the remote foreground process, and `tetrixctl exec -it` run on a
// real terminal (util-linux script(1)): raw mode, the size, Ctrl-C, the remote exit code as its own, and the
// local terminal restored afterwards.
import t from 'tap';
import { spawn } from 'node:child_process';
import { ctlMain, type Daemon } from '../helpers/daemon';
import { eventually, exec, execDaemon, sleeper } from './fixture';

function script(d: Daemon, shell: string): { output: () => string; write(s: string): void; code: Promise<number | null> } {
  // script runs shell on a new pty; -e: its exit code is the shell's.
  const child = spawn('script', ['-qefc', shell, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, TETRIX_SOCKET_PATH: d.socketPath, TERM: 'xterm' } });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString('latin1')));
  child.stderr.on('data', (b: Buffer) => (out += b.toString('latin1')));
  return {
    output: () => out,
    write: (s) => child.stdin.write(s),
    code: new Promise((resolve) => child.on('exit', (code) => resolve(code))),
  };
}

async function until(what: string, pred: () => boolean, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('terminals', async (t) => {
  const { d } = await execDaemon(t, ['--pty-limit', '3']);
  await sleeper(d, 'ex-tty', 'alice');
  const ctl = `${process.execPath} ${ctlMain}`;

  await t.test('a pty of the asked size, then a resize', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-tty', argv: ['/bin/sh', '-c', 'stty size; tty; read x; stty size'], tty: true, size: { rows: 33, cols: 77 } } });
    await r.waitFor('33 77');
    await r.waitFor(/\/dev\/pts\/\d+/);
    r.send({ resize: { rows: 40, cols: 100 } });
    r.send({ stdin: Buffer.from('\n') });
    const { exit } = await r.done;
    t.match(r.stdout().toString(), /33 77\r\n\/dev\/pts\/\d+\r\n[\s\S]*40 100\r\n/);
    t.equal(r.stderr().length, 0, 'one stream with a pty');
    t.match(exit, { exitCode: 0 });
  });

  await t.test('Ctrl-C reaches the remote foreground process', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-tty', argv: ['/bin/sh', '-c', 'trap "echo got-int; exit 7" INT; echo ready; while :; do sleep 1; done'], tty: true } });
    await r.waitFor('ready');
    r.send({ stdin: Buffer.from([0x03]) });
    const { exit } = await r.done;
    t.match(r.stdout().toString(), /got-int/);
    t.match(exit, { exitCode: 7 });
  });

  await t.test("the pty comes from the workspace's own devpts: it counts against its pty limit", async (t) => {
    const held = [1, 2, 3].map(() => exec(d, { start: { workspaceId: 'ex-tty', argv: ['/bin/sh', '-c', 'echo held; exec sleep 100'], tty: true } }));
    for (const h of held) await h.waitFor('held');
    const fourth = await exec(d, { start: { workspaceId: 'ex-tty', argv: ['/bin/true'], tty: true } }).done;
    t.match(fourth.error?.details, /exec: open \/dev\/pts\/ptmx: ENOSPC/, 'the fourth pty is refused (--pty-limit 3)');
    for (const h of held) h.call.cancel();
    for (const h of held) await h.done;
    await eventually('a pty to be free again', async () => !(await exec(d, { start: { workspaceId: 'ex-tty', argv: ['/bin/true'], tty: true } }).done).error);
    t.pass('freed when the sessions ended');
  });

  await t.test('tetrixctl exec -it on a terminal: size, exit code, and our terminal restored', async (t) => {
    const s = script(d, `stty rows 31 cols 91; before=$(stty -g); ${ctl} exec -it ex-tty -- sh -c 'stty size; exit 42'; rc=$?; [ "$(stty -g)" = "$before" ] && echo restored; exit $rc`);
    t.equal(await s.code, 42, 'the remote exit code is tetrixctl\'s');
    t.match(s.output(), /31 91/);
    t.match(s.output(), /restored/, 'raw mode is undone');
  });

  await t.test('tetrixctl exec -it follows our terminal when it is resized', async (t) => {
    // A background job resizes the terminal (the kernel then sends SIGWINCH to tetrixctl, the foreground).
    const sized = `${d.stateDir}/workspaces/ex-tty/content/sized`;
    const s = script(d, `stty rows 20 cols 30; (trap '' TTOU; until [ -e ${sized} ]; do sleep 0.1; done; stty rows 44 cols 55 </dev/tty; echo resized-here) & ${ctl} exec -it ex-tty -- sh -c 'stty size; touch /workspace/sized; read x; stty size'`);
    // The remote's first line and the local job's line race each other to our terminal.
    await until('the first size and the resize', () => s.output().includes('20 30') && s.output().includes('resized-here'));
    await new Promise((r) => setTimeout(r, 300));
    const before = s.output().length;
    s.write('\r');
    t.equal(await s.code, 0);
    t.match(s.output().slice(before), /44 55/, `the remote pty has the new size: ${JSON.stringify(s.output())}`);
  });

  await t.test('tetrixctl exec -it: Ctrl-C typed on our terminal reaches the remote process', async (t) => {
    const s = script(d, `${ctl} exec -it ex-tty -- sh -c 'trap "echo got-int; exit 9" INT; echo ready; while :; do sleep 1; done'`);
    await until('ready', () => s.output().includes('ready'));
    s.write('\x03');
    t.equal(await s.code, 9);
    t.match(s.output(), /got-int/);
  });

  await t.test('tetrixctl exec without -t: a signal is the remote signal, 128+N', async (t) => {
    const s = script(d, `${ctl} exec ex-tty -- sh -c 'kill -TERM $$'`);
    t.equal(await s.code, 128 + 15);
  });
});
