// ExecWorkspace through the real daemon, without a terminal: exit codes and signals, stdin to EOF, the
// state and access checks, and the client going away.
import t from 'tap';
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { isAlive, refusal } from '../helpers/daemon';
import { eventually, exec, execDaemon, sleeper } from './fixture';
import { prebuildRequest } from '../prebuild/daemon-fixtures';

t.test('exec without a terminal', async (t) => {
  const { d, token } = await execDaemon(t);
  await sleeper(d, 'ex-plain', 'alice');

  await t.test('stdout, stderr and the exit code', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'echo out; echo err >&2; exit 3'] } });
    const { exit, error } = await r.done;
    t.notOk(error, error?.details);
    t.equal(r.stdout().toString(), 'out\n');
    t.equal(r.stderr().toString(), 'err\n');
    t.match(exit, { exitCode: 3, signal: '', unknown: false });
  });

  await t.test('stdin to EOF (the client half-closes)', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'wc -c'] } });
    await r.sessionId;
    const chunk = Buffer.alloc(300_000, 'x');
    r.send({ stdin: chunk });
    r.send({ stdin: Buffer.from('tail\n') });
    r.call.end();
    const { exit } = await r.done;
    t.equal(r.stdout().toString().trim(), String(chunk.length + 5));
    t.match(exit, { exitCode: 0 });
  });

  await t.test('a signal from the client ends it, and the exit names the signal', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'echo ready; exec sleep 100'] } });
    await r.waitFor('ready');
    r.send({ signal: 'SIGTERM' });
    const { exit } = await r.done;
    t.match(exit, { exitCode: -1, signal: 'SIGTERM' });
  });

  await t.test('a program that does not exist: FAILED_PRECONDITION naming argv[0], the step and errno, nothing left', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-plain', argv: ['no-such-program'] } });
    const { error } = await r.done;
    t.equal(error?.code, grpc.status.FAILED_PRECONDITION);
    t.match(error?.details, /^argv\[0\]: execve no-such-program: ENOENT/);
  });

  await t.test('the env is the workspace\'s, the request\'s over it; the cwd resolves inside', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'echo "$FOO:$HOME:$(pwd)"'], env: { FOO: 'bar' }, workingDir: '/tmp' } });
    await r.done;
    t.equal(r.stdout().toString(), 'bar:/root:/tmp\n');
  });

  await t.test('another uid inside keeps no capability', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'id -u; id -g; grep -E "^Cap(Prm|Eff)" /proc/self/status'], user: '1000:1001' } });
    await r.done;
    t.match(r.stdout().toString(), /^1000\n1001\nCapPrm:\s+0+\nCapEff:\s+0+\n$/);
  });

  await t.test('a working dir behind a workspace symlink stays inside the root; magic links are refused', async (t) => {
    await exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'ln -s ../../../../../.. /workspace/up; ln -s /proc/self/root /workspace/magic'] } }).done;
    const up = exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'pwd; ls /workspace >/dev/null && echo inside'], workingDir: '/workspace/up' } });
    await up.done;
    t.equal(up.stdout().toString(), '/\ninside\n', '.. past the root is the root (RESOLVE_IN_ROOT)');
    const magic = await exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/true'], workingDir: '/workspace/magic' } }).done;
    t.match(magic, { error: { details: /exec: chdir \/workspace\/magic: ELOOP/ } }, 'a /proc magic link is not followed');
  });

  await t.test('the client going away hangs the process group up and reaps it', async (t) => {
    const r = exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'sleep 100 & echo "pids $$ $!"; wait'] } });
    await r.waitFor(/pids \d+ \d+\n/);
    const w = await d.get('ex-plain');
    const inside = r.stdout().toString().trim().split(' ').slice(1).map(Number);
    const hostPids = inside.map((p) => hostPidOf(w.pid, p));
    t.ok(hostPids.every((p) => p > 0 && isAlive(p)), `both run (host pids ${hostPids})`);
    r.call.cancel();
    await eventually('the session and its child to end', () => hostPids.every((p) => !isAlive(p)));
    t.pass('both ended');
  });

  await t.test('FAILED_PRECONDITION for a workspace that is not running', async (t) => {
    const w = await d.start({ id: 'ex-done', ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/true'] });
    await d.waitFor(w.id, (x) => x.state === 'WORKSPACE_STATE_STOPPED');
    const { error } = await exec(d, { start: { workspaceId: 'ex-done', argv: ['/bin/true'] } }).done;
    t.equal(error?.code, grpc.status.FAILED_PRECONDITION);
    t.match(error?.details, /not running/);
  });

  await t.test('no exec into a prebuild: its provenance says only its tasks ran', async (t) => {
    const w = await d.start(prebuildRequest('ex-prebuild', [{ name: 'wait', script: 'sleep 30' }]));
    t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
    const { error } = await exec(d, { start: { workspaceId: 'ex-prebuild', argv: ['/bin/true'] } }).done;
    t.equal(error?.code, grpc.status.FAILED_PRECONDITION);
    t.match(error?.details, /is a prebuild: only its tasks run in it/);
    await d.teardown('ex-prebuild');
  });

  await t.test("someone else's workspace is refused as an unknown one is, and both are audited", async (t) => {
    const mallory = token('mallory');
    const foreign = await exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/true'] } }, mallory).done;
    const unknown = await exec(d, { start: { workspaceId: 'ex-nosuch', argv: ['/bin/true'] } }, mallory).done;
    t.equal(foreign.error?.code, grpc.status.PERMISSION_DENIED);
    t.equal(foreign.error?.code, unknown.error?.code);
    t.equal(foreign.error?.details, unknown.error?.details, 'the same message');
    const owner = await exec(d, { start: { workspaceId: 'ex-plain', argv: ['/bin/sh', '-c', 'echo mine'] } }, token('alice')).done;
    t.notOk(owner.error, 'the owner may');
    const audit = fs.readFileSync(`${d.stateDir}/audit.log`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, string>);
    const execs = audit.filter((e) => e.action === 'exec');
    t.ok(execs.some((e) => e.who === 'user:mallory' && e.workspace === 'ex-plain' && e.decision === 'deny'), 'the denial is audited');
    t.ok(execs.some((e) => e.who === 'user:alice' && e.workspace === 'ex-plain' && e.decision === 'allow'), 'the allowed exec is audited');
  });

  await t.test('bad requests name the field', async (t) => {
    const cases: Array<[object, RegExp]> = [
      [{ workspaceId: 'ex-plain', argv: [] }, /start\.argv/],
      [{ workspaceId: 'ex-plain', argv: ['/bin/true'], user: 'root' }, /start\.user/],
      [{ workspaceId: 'ex-plain', argv: ['/bin/true'], session: true }, /start\.session/],
      [{ workspaceId: 'ex-plain', argv: ['/bin/true'], workingDir: '../x' }, /start\.working_dir/],
    ];
    for (const [start, field] of cases) {
      const { error } = await exec(d, { start }).done;
      t.equal(error?.code, grpc.status.INVALID_ARGUMENT);
      t.match(error?.details, field);
    }
    t.match(await refusal(new Promise((resolve, reject) => d.clients.exec.ListSessions({ workspaceId: 'BAD' }, (e, r) => (e ? reject(e) : resolve(r))))), { code: grpc.status.INVALID_ARGUMENT });
  });
});

/** The host pid of a process the workspace (init at host pid initPid) knows as pid `inside`. */
function hostPidOf(initPid: number, inside: number): number {
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = fs.readFileSync(`/proc/${entry}/status`, 'utf8');
      const nspid = /^NSpid:\s+(.*)$/m.exec(status)?.[1].trim().split(/\s+/).map(Number);
      if (nspid && nspid.length >= 2 && nspid[nspid.length - 1] === inside && sameNs(initPid, Number(entry))) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  return 0;
}

function sameNs(a: number, b: number): boolean {
  return fs.readlinkSync(`/proc/${a}/ns/pid`) === fs.readlinkSync(`/proc/${b}/ns/pid`) || fs.readlinkSync(`/proc/${a}/ns/pid_for_children`) === fs.readlinkSync(`/proc/${b}/ns/pid`);
}
