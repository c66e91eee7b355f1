// A workspace started by the addon is its own little machine: its own PID 1, processes, network,
// hostname, /dev and /proc, root that is nobody on the host, and nothing of the daemon's fds.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native, NativeError, type SpawnOptions } from '../../src/native';
import { capabilityNumbers, DEFAULT_CAPABILITIES } from '../../src/sandbox/capabilities';
import { hostDeviceActivity } from '../helpers/daemon';
import { childPids, makeHostDir, makeRootfs, openFds, run, runScript, testIdBase, workspaceOptions } from './fixture';

// The product's set, from its one source (src/sandbox/capabilities.ts), as /proc/<pid>/status prints it.
const DEFAULT_CAPS_HEX = capabilityNumbers(DEFAULT_CAPABILITIES).reduce((mask, n) => mask | (1n << BigInt(n)), 0n)
  .toString(16).padStart(16, '0');

t.test('init is PID 1, the workload PID 2, and ps sees only the workspace', async (t) => {
  const rootfs = makeRootfs(t);
  const { output, exit } = await runScript(t, rootfs, 'echo "pid=$$"; echo "init=$(cat /proc/1/cmdline | tr "\\0" " ")"; ps -o pid,args');
  t.same(exit, { exitCode: 0, signal: null, reaped: true });
  t.match(output, /^pid=2$/m);
  t.match(output, /^init=init -- sh -c /m);
  const pids = output.split('\n').slice(3).map((l) => l.trim().split(/\s+/)[0]).filter(Boolean).map(Number);
  t.ok(pids.length >= 2 && pids.every((p) => p < 10), `only a handful of small pids: ${pids.join(' ')}`);
});

t.test('root in the workspace is an unprivileged uid on the host', async (t) => {
  const rootfs = makeRootfs(t);
  const base = testIdBase();
  const ws = workspaceOptions(t, rootfs, ['sh', '-c', 'id -u; id -g; echo ready; exec sleep 1000'], { uidBase: base, gidBase: base + 65536 });
  const running = await run(t, ws);
  await running.waitForOutput('ready');
  const status = fs.readFileSync(`/proc/${running.result.pid}/status`, 'utf8');
  t.match(status, new RegExp(`^Uid:\\t${base}\\t${base}\\t${base}\\t${base}$`, 'm'), 'host sees the mapped uid');
  t.match(status, new RegExp(`^Gid:\\t${base + 65536}\\t`, 'm'), 'host sees the mapped gid');
  t.match(status, /^Groups:[\t ]*$/m, 'no host supplementary groups');
  t.match(running.output(), /^0\n0\nready\n/, 'inside, uid and gid are 0');
  native.pidfdSendSignal(running.result.pidfd, native.constants.SIGKILL);
  t.equal((await running.exited).signal, 'SIGKILL');
});

t.test('the workspace has its own network (only lo) and hostname', async (t) => {
  const rootfs = makeRootfs(t);
  const { output } = await runScript(t, rootfs, 'ip -o link; echo "host=$(hostname)"', { hostname: 'tetrix-ws-name' });
  const links = output.split('\n').filter((l) => /^\d+: /.test(l)).map((l) => l.split(':')[1].trim());
  t.same(links, ['lo']);
  t.match(output, /^host=tetrix-ws-name$/m);
});

t.test('the workload holds only fds 0, 1 and 2', async (t) => {
  const rootfs = makeRootfs(t);
  // ls' own directory fd shows up as 3 while it lists.
  const { output } = await runScript(t, rootfs, 'ls /proc/self/fd | tr "\\n" " "; echo; readlink /proc/self/fd/0');
  t.match(output, /^0 1 2 3 \n\/dev\/null\n$/);
});

t.test('capabilities: the default bounding set, nothing inheritable or ambient, no_new_privs', async (t) => {
  const rootfs = makeRootfs(t);
  const { output } = await runScript(t, rootfs, 'grep -E "^(Cap|NoNewPrivs)" /proc/self/status');
  t.match(output, new RegExp(`^CapBnd:\\t${DEFAULT_CAPS_HEX}$`, 'm'));
  t.match(output, new RegExp(`^CapEff:\\t${DEFAULT_CAPS_HEX}$`, 'm'));
  t.match(output, /^CapInh:\t0000000000000000$/m);
  t.match(output, /^CapAmb:\t0000000000000000$/m);
  t.match(output, /^NoNewPrivs:\t1$/m);

  const none = await runScript(t, rootfs, 'grep -E "^CapBnd" /proc/self/status', { capabilities: [] });
  t.match(none.output, /^CapBnd:\t0000000000000000$/m, 'an empty list keeps nothing');
});

t.test('spawn has no capability set of its own: opts.capabilities is required', async (t) => {
  const rootfs = makeRootfs(t);
  const { capabilities: _unused, ...withoutCaps } = workspaceOptions(t, rootfs, ['true']).options;
  t.throws(() => native.spawn(withoutCaps as unknown as SpawnOptions), { name: 'TypeError', message: /opts\.capabilities/ });
});

t.test('a minimal /dev, a read-only /sys, masked and read-only /proc paths', async (t) => {
  const rootfs = makeRootfs(t);
  const script = [
    'ls /dev | tr "\\n" " "; echo',
    'head -c 5 /dev/urandom | wc -c',
    'echo gone > /dev/null && echo null-ok',
    'touch /sys/tetrix 2>/dev/null || echo sys-ro',
    'echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo procsys-ro',
    'echo "timer_list=$(wc -c < /proc/timer_list)"',
    'mkdir /dev/shm/x && echo shm-ok',
    'readlink /dev/ptmx',
  ].join('; ');
  const { output, result } = await runScript(t, rootfs, script);
  t.match(output, /^fd full null ptmx pts random shm stderr stdin stdout tty urandom zero $/m);
  t.match(output, /^5$/m);
  t.match(output, /^null-ok$/m);
  t.match(output, /^sys-ro$/m);
  t.match(output, /^procsys-ro$/m);
  t.match(output, /^timer_list=0$/m, '/proc/timer_list is /dev/null');
  t.match(output, /^shm-ok$/m);
  t.match(output, /^pts\/ptmx$/m);
  t.equal(result.sysfs, 'sysfs', 'a sysfs of its own (the kernel allows it in a new netns)');
});

t.test('bind mounts: read-write, read-only, and never through a symlink out of the rootfs', async (t) => {
  const rootfs = makeRootfs(t);
  const rw = makeHostDir(t, 'rw');
  const ro = makeHostDir(t, 'ro');
  fs.writeFileSync(path.join(ro, 'file'), 'host data\n');
  fs.mkdirSync(path.join(rootfs, 'ro'));
  const base = testIdBase();
  fs.chownSync(rw, base, base);
  const { output } = await runScript(t, rootfs, 'echo hello > /workspace/note && echo rw-ok; cat /ro/file; echo x > /ro/file 2>/dev/null || echo ro-refused', {
    uidBase: base,
    gidBase: base,
    mounts: [
      { source: rw, target: '/workspace', readonly: false },
      { source: ro, target: '/ro', readonly: true },
    ],
  });
  t.match(output, /^rw-ok$/m);
  t.equal(fs.readFileSync(path.join(rw, 'note'), 'utf8'), 'hello\n', 'the host sees the write');
  t.match(output, /^host data$/m);
  t.match(output, /^ro-refused$/m);
  t.equal(fs.readFileSync(path.join(ro, 'file'), 'utf8'), 'host data\n');

  // CVE-2021-30465: a target that is a symlink to a host path resolves inside the rootfs instead.
  const victim = makeHostDir(t, 'victim');
  fs.symlinkSync(victim, path.join(rootfs, 'escape'));
  const ws = workspaceOptions(t, rootfs, ['true'], { mounts: [{ source: rw, target: '/escape', readonly: false }] });
  await t.rejects(native.spawn(ws.options), { name: 'NativeError', step: 'open /escape', code: 'ENOENT' });
  t.same(fs.readdirSync(victim), [], 'nothing was mounted on the host path');
});

const V1_PIDS = '/sys/fs/cgroup/pids';
const V2_ROOT = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' '))
  .find((f) => f[2] === 'cgroup2' && f[1].startsWith('/sys/fs/cgroup'))?.[1];

t.test('v1: the workload writes itself into the tasks files it is given, and sees its cgroup as /', { skip: !fs.existsSync(V1_PIDS) && 'no v1 pids hierarchy' }, async (t) => {
  const name = `tetrix-native-test-${process.pid}`;
  const cgroup = path.join(V1_PIDS, name);
  fs.mkdirSync(cgroup);
  t.teardown(() => fs.rmdirSync(cgroup));
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['sh', '-c', 'grep pids /proc/self/cgroup; echo ready; exec sleep 1000'], {
    cgroupTasks: [path.join(cgroup, 'tasks')],
  });
  const running = await run(t, ws);
  await running.waitForOutput('ready');
  t.match(fs.readFileSync(`/proc/${running.result.pid}/cgroup`, 'utf8'), new RegExp(`:pids:/${name}$`, 'm'));
  t.match(running.output(), /:pids:\/\n/, 'a cgroup namespace rooted at its cgroup');
  native.pidfdSendSignal(running.result.pidfd, native.constants.SIGKILL);
  await running.exited;
});

t.test('v2: the workload is cloned into the cgroup directory it is given', { skip: !V2_ROOT && 'no cgroup2 mount' }, async (t) => {
  const name = `tetrix-native-test-v2-${process.pid}`;
  const cgroup = path.join(V2_ROOT!, name);
  fs.mkdirSync(cgroup);
  t.teardown(() => fs.rmdirSync(cgroup));
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['sh', '-c', 'grep ^0:: /proc/self/cgroup; echo ready; exec sleep 1000'], { cgroupDir: cgroup });
  const running = await run(t, ws);
  await running.waitForOutput('ready');
  t.match(fs.readFileSync(`/proc/${running.result.pid}/cgroup`, 'utf8'), new RegExp(`^0::/${name}$`, 'm'));
  t.match(fs.readFileSync(path.join(cgroup, 'cgroup.procs'), 'utf8'), new RegExp(`^${running.result.pid}$`, 'm'));
  t.match(running.output(), /^0::\/\n/m, 'a cgroup namespace rooted at its cgroup');
  native.pidfdSendSignal(running.result.pidfd, native.constants.SIGKILL);
  await running.exited;
});

t.test('a cgroup that cannot be opened fails the spawn naming the file', async (t) => {
  const rootfs = makeRootfs(t);
  const missing = `/sys/fs/cgroup/pids/tetrix-native-missing-${process.pid}/tasks`;
  const ws = workspaceOptions(t, rootfs, ['true'], { cgroupTasks: [missing] });
  await t.rejects(native.spawn(ws.options), { name: 'NativeError', step: `open ${missing}`, code: 'ENOENT' });
});

t.test('a seccomp filter is installed before the workload runs', async (t) => {
  const rootfs = makeRootfs(t);
  const AUDIT_ARCH_X86_64 = 0xc000003e;
  const SECCOMP_RET_ALLOW = 0x7fff0000;
  const SECCOMP_RET_ERRNO = 0x00050000;
  const SECCOMP_RET_KILL_PROCESS = 0x80000000;
  const EPERM = 1;
  // BPF_LD|BPF_W|BPF_ABS = 0x20, BPF_JMP|BPF_JEQ|BPF_K = 0x15, BPF_RET|BPF_K = 0x06
  const insns: [number, number, number, number][] = [
    [0x20, 0, 0, 4],                      // A = arch
    [0x15, 1, 0, AUDIT_ARCH_X86_64],
    [0x06, 0, 0, SECCOMP_RET_KILL_PROCESS],
    [0x20, 0, 0, 0],                      // A = syscall nr
    [0x15, 2, 0, 83],                     // mkdir
    [0x15, 1, 0, 258],                    // mkdirat
    [0x06, 0, 0, SECCOMP_RET_ALLOW],
    [0x06, 0, 0, SECCOMP_RET_ERRNO | EPERM],
  ];
  const filter = Buffer.alloc(insns.length * 8);
  insns.forEach(([code, jt, jf, k], i) => {
    filter.writeUInt16LE(code, i * 8);
    filter.writeUInt8(jt, i * 8 + 2);
    filter.writeUInt8(jf, i * 8 + 3);
    filter.writeUInt32LE(k >>> 0, i * 8 + 4);
  });
  const { output } = await runScript(t, rootfs, 'mkdir /dev/shm/x 2>&1; grep Seccomp: /proc/self/status', { seccomp: filter });
  t.match(output, /Operation not permitted/);
  t.match(output, /^Seccomp:\t2$/m);
});

t.test('failures name the step and errno, and leave nothing behind', async (t) => {
  const before = openFds();
  const noProc = makeRootfs(t, { omit: ['proc'] });
  const ws1 = workspaceOptions(t, noProc, ['true']);
  const err = await native.spawn(ws1.options).then(() => null, (e: unknown) => e);
  t.ok(err instanceof NativeError, 'a NativeError');
  t.match(err, { step: 'mount /proc', code: 'ENOENT', errno: 2, message: 'mount /proc: ENOENT' });

  const rootfs = makeRootfs(t);
  const ws2 = workspaceOptions(t, rootfs, ['/bin/not-there']);
  await t.rejects(native.spawn(ws2.options), { name: 'NativeError', message: 'execve: ENOENT', step: 'execve', code: 'ENOENT' });

  const ws3 = workspaceOptions(t, rootfs, ['true'], { cwd: '/nowhere' });
  await t.rejects(native.spawn(ws3.options), { message: 'chdir /nowhere: ENOENT' });

  const ws4 = workspaceOptions(t, path.join(rootfs, 'missing'), ['true']);
  await t.rejects(native.spawn(ws4.options), { message: 'prepare /.tetrix/init: ENOENT' });

  ws1.close();
  ws2.close();
  ws3.close();
  ws4.close();
  t.same(childPids(), [], 'every failed child was reaped');
  t.same(openFds(), before, 'no fd leaked');
});

t.test('bad options are refused before anything is cloned', async (t) => {
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['true']);
  t.throws(() => native.spawn({ ...ws.options, uidBase: 0 }), TypeError, 'never map onto host root');
  t.throws(() => native.spawn({ ...ws.options, argv: [] }), TypeError);
  t.throws(() => native.spawn({ ...ws.options, rootfs: 'relative' }), TypeError);
  t.throws(() => native.spawn({ ...ws.options, seccomp: Buffer.alloc(3) }), TypeError);
});

t.test('a rootfs and mount sources inside a 0700 root-owned directory (the daemon state dir)', async (t) => {
  const state = makeHostDir(t, 'state');
  fs.chmodSync(state, 0o700);
  const rootfs = makeRootfs(t);
  const inside = path.join(state, 'rootfs');
  fs.renameSync(rootfs, inside);
  t.teardown(() => fs.rmSync(inside, { recursive: true, force: true }));
  const content = path.join(state, 'content');
  fs.mkdirSync(content, { mode: 0o755 });
  fs.writeFileSync(path.join(content, 'hello'), 'from the state dir\n');
  const { output, exit } = await runScript(t, inside, 'cat /workspace/hello', {
    mounts: [{ source: content, target: '/workspace', readonly: true }],
  });
  t.equal(exit.exitCode, 0);
  t.equal(output, 'from the state dir\n');
});

t.test('several workspaces start at once', async (t) => {
  const rootfs = makeRootfs(t);
  const before = openFds();
  const results = await Promise.all([1, 2, 3, 4, 5].map((i) => runScript(t, rootfs, `echo "ws ${i} $(hostname)"; exit ${i}`, { hostname: `tetrix-ws-${i}` })));
  results.forEach((r, i) => {
    t.equal(r.output, `ws ${i + 1} tetrix-ws-${i + 1}\n`);
    t.equal(r.exit.exitCode, i + 1);
  });
  t.same(openFds(), before, 'no fd leaked');
});

t.test('an image cannot trap the init mount point', async (t) => {
  const rootfs = makeRootfs(t);
  fs.mkdirSync(path.join(rootfs, '.tetrix'));
  execFileSync('mkfifo', [path.join(rootfs, '.tetrix', 'init')]);
  const ws = workspaceOptions(t, rootfs, ['true']);
  await t.rejects(native.spawn(ws.options), { message: 'open /.tetrix/init: EINVAL' }, 'a FIFO is refused, not opened');

  const linked = makeRootfs(t);
  const victim = makeHostDir(t, 'victim');
  fs.symlinkSync(victim, path.join(linked, '.tetrix'));
  const ws2 = workspaceOptions(t, linked, ['true']);
  await t.rejects(native.spawn(ws2.options), { message: /^prepare \/\.tetrix\/init: ENOENT$/ }, 'a symlink to a host path resolves inside the rootfs');
  t.same(fs.readdirSync(victim), [], 'nothing created on the host path');
});

// --- issue 13 (December 2026 review): host terminals, the node's identity, shared device inodes, ptys ---

/** Fields 6 (session) and 7 (tty_nr) of /proc/<pid>/stat, as the host sees them. */
function sessionOf(pid: number): { session: number; ttyNr: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { session: Number(fields[3]), ttyNr: Number(fields[4]) };
}

/** A static helper from test/native/fixtures (or the escape battery), built into the rootfs's /bin. */
function buildInto(rootfs: string, name: string, source: string): void {
  execFileSync('gcc', ['-static', '-O2', '-o', path.join(rootfs, 'bin', name), source]);
}

t.test('a workspace leads a session of its own, with no controlling terminal of the host', async (t) => {
  // Item 1: without setsid the workload was in the daemon's session and could reach its terminal.
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['sh', '-c', 'echo ready; exec sleep 1000']);
  const running = await run(t, ws);
  await running.waitForOutput('ready');
  const init = sessionOf(running.result.pid);
  t.equal(init.session, running.result.pid, 'init leads its own session (host view)');
  t.equal(init.ttyNr, 0, 'init has no controlling terminal');
  const workload = Number(fs.readFileSync(`/proc/${running.result.pid}/task/${running.result.pid}/children`, 'utf8').trim());
  t.equal(sessionOf(workload).session, running.result.pid, "the workload is in init's session");
  t.not(sessionOf(workload).session, sessionOf(process.pid).session, "never the test runner's (the daemon's) session");
  native.pidfdSendSignal(running.result.pidfd, native.constants.SIGKILL);
  await running.exited;

  const inside = await runScript(t, rootfs, 'cat /dev/tty 2>&1; echo "sid=$(cut -d" " -f6 /proc/self/stat) tty=$(cut -d" " -f7 /proc/self/stat)"');
  t.match(inside.output, /^sid=1 tty=0$/m, 'inside: the session is init\'s (1), no tty');
  t.match(inside.output, /No such device or address/, '/dev/tty yields ENXIO: there is no controlling terminal');
});

t.test("a workload can still make a pty of its own its controlling terminal, and /dev/tty then opens", async (t) => {
  // /dev/tty is kept (as in runc): without a controlling terminal it is ENXIO, with its own it works.
  const rootfs = makeRootfs(t);
  buildInto(rootfs, 'own-tty', path.join(__dirname, 'fixtures', 'own-tty.c'));
  const { output, exit } = await runScript(t, rootfs, 'own-tty');
  t.equal(exit.exitCode, 0, output);
  t.match(output, /^before: \/dev\/tty ENXIO$/m, 'no controlling terminal at start');
  t.match(output, /^slave \/dev\/pts\/0 ok$/m, "the workspace's own devpts");
  t.match(output, /^after: \/dev\/tty ok$/m);
  t.match(output, /^TIOCSTI own ok$/m, 'its own terminal is its own to drive');
  t.match(output, /^foreground ours$/m);
});

const DEVICES = ['null', 'zero', 'full', 'random', 'urandom', 'tty'];

t.test("a workspace's device nodes are its own inodes, not the host's nor a neighbour's", async (t) => {
  // Item 8: /dev nodes were binds of the host's, so an inotify watch saw everyone's opens and writes.
  const rootfs = makeRootfs(t);
  const script = `stat -c "%n %d:%i %t:%T" ${DEVICES.map((d) => `/dev/${d}`).join(' ')}`;
  const [a, b] = await Promise.all([runScript(t, rootfs, script), runScript(t, rootfs, script)]);
  const parse = (output: string): Map<string, { id: string; rdev: string }> =>
    new Map(output.trim().split('\n').map((l) => l.split(' ')).map(([n, id, rdev]) => [n, { id, rdev }]));
  const [inA, inB] = [parse(a.output), parse(b.output)];
  for (const d of DEVICES) {
    const host = fs.statSync(`/dev/${d}`);
    const mine = inA.get(`/dev/${d}`);
    t.ok(mine, `/dev/${d} exists`);
    t.equal(mine?.rdev, `${(host.rdev >> 8).toString(16)}:${(host.rdev & 0xff).toString(16)}`, `/dev/${d} is the same device`);
    t.not(mine?.id, `${host.dev}:${host.ino}`, `/dev/${d} is not the host's inode`);
    t.not(mine?.id, inB.get(`/dev/${d}`)?.id, `/dev/${d} is not the neighbour's inode`);
  }
});

t.test("inotify on a workspace's /dev nodes sees nothing the host or a neighbour does", async (t) => {
  const rootfs = makeRootfs(t);
  buildInto(rootfs, 'battery', path.join(__dirname, '..', 'security', 'battery.c'));
  // A neighbour and the host keep opening and writing their /dev nodes all along.
  const neighbour = await run(t, workspaceOptions(t, rootfs, ['sh', '-c', 'echo ready; while :; do for d in null zero full random urandom; do echo x > /dev/$d; done 2>/dev/null; sleep 0.1; done']));
  await neighbour.waitForOutput('ready');
  hostDeviceActivity(t);
  const { output } = await runScript(t, rootfs, 'TETRIX_BATTERY_DEV_WATCH_MS=2000 /bin/battery dev_inotify_no_outside_events');
  t.match(output, /^PROBE dev_inotify_no_outside_events blocked /m, output);
});

t.test("what names the node is masked: /proc/cmdline, /proc/config.gz, and boot_id is the workspace's own", async (t) => {
  const rootfs = makeRootfs(t);
  const script = 'echo "cmdline=$(wc -c < /proc/cmdline)"; echo "config=$(cat /proc/config.gz 2>/dev/null | wc -c)"; cat /proc/sys/kernel/random/boot_id /proc/sys/kernel/random/boot_id';
  const [a, b] = await Promise.all([runScript(t, rootfs, script), runScript(t, rootfs, script)]);
  t.match(a.output, /^cmdline=0$/m, '/proc/cmdline reads empty');
  t.match(a.output, /^config=0$/m, '/proc/config.gz gives nothing');
  const ids = (o: string): string[] => o.split('\n').filter((l) => /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(l));
  const [idsA, idsB] = [ids(a.output), ids(b.output)];
  t.equal(idsA.length, 2, `boot_id is a random (version 4) UUID: ${a.output}`);
  t.equal(idsA[0], idsA[1], 'stable within the workspace');
  t.not(idsA[0], fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(), "not the host's");
  t.not(idsA[0], idsB[0], "not the neighbour's");
});

t.test('a workspace cannot open more ptys than its limit, and a neighbour still gets its own', async (t) => {
  // Item 7: devpts without max= let one workspace take the node's whole pty pool (ENOSPC for the next).
  const rootfs = makeRootfs(t);
  buildInto(rootfs, 'pty-hog', path.join(__dirname, 'fixtures', 'pty-hog.c'));
  const hog = await run(t, workspaceOptions(t, rootfs, ['pty-hog', '64', 'hold'], { ptyLimit: 4 }));
  await hog.waitForOutput('holding');
  t.match(hog.output(), /^opened 4 ENOSPC$/m, 'four ptys, then ENOSPC');
  const next = await runScript(t, rootfs, 'pty-hog 2', { ptyLimit: 4 });
  t.match(next.output, /^opened 2 OK$/m, 'a second workspace opens ptys while the first holds all of its own');
  t.throws(() => native.spawn({ ...workspaceOptions(t, rootfs, ['true']).options, ptyLimit: 0 }), TypeError, 'a limit of 0 is refused');
});
