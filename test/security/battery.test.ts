// The escape battery (battery.c) inside a real workspace started through the real daemon, as its root,
// with the default seccomp profile and capabilities. Any ESCAPED or UNKNOWN probe fails the run, and so
// does a battery with fewer than 40 probes. It runs again as a prebuild task (init holds the task
// channel), and its terminal probes with the daemon on a pseudo-terminal, as the workload and through
// exec. A last test gives the daemon an image whose /proc, /dev, /sys, /etc, /workspace and /.tetrix are
// symlinks pointing at the host, and checks the host is untouched.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { hostDeviceActivity, mountsUnder, startDaemon, uniqueName, type Daemon } from '../helpers/daemon';
import { exec } from '../exec/fixture';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';

const MIN_PROBES = 40;
const NAMESPACES = ['cgroup', 'ipc', 'mnt', 'net', 'pid', 'user', 'uts'];

function tempDir(t: Test, what: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-${what}-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function buildBattery(t: Test): string {
  const out = path.join(tempDir(t, 'battery-build'), 'battery');
  execFileSync('gcc', ['-static', '-O2', '-o', out, path.join(__dirname, 'battery.c')]);
  return out;
}

/** An operator image: the host's static busybox plus the battery, in a directory of the daemon's images dir. */
function makeImage(imagesDir: string, name: string, battery: string): void {
  const root = path.join(imagesDir, name);
  for (const dir of ['bin', 'dev', 'proc', 'sys', 'tmp', 'etc', 'workspace']) fs.mkdirSync(path.join(root, dir), { recursive: true });
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  for (const applet of ['sh', 'sleep', 'cat', 'echo']) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
  fs.copyFileSync(battery, path.join(root, 'battery'));
  fs.chmodSync(path.join(root, 'battery'), 0o555);
}

function hostNamespaces(): string {
  return NAMESPACES.map((ns) => `${ns}:${/\[(\d+)\]/.exec(fs.readlinkSync(`/proc/self/ns/${ns}`))![1]}`).join(',');
}

/** Host-side things the battery tries to reach: a marker file, a /dev/shm file, a TCP and an abstract socket. */
async function hostBait(t: Test): Promise<{ env: Record<string, string>; token: string }> {
  const token = crypto.randomBytes(16).toString('hex');
  const dir = tempDir(t, 'battery-marker');
  const marker = path.join(dir, 'host-secret');
  fs.writeFileSync(marker, token, { mode: 0o644 });
  fs.chmodSync(dir, 0o755);
  const shmName = uniqueName('tetrix-battery-shm');
  fs.writeFileSync(path.join('/dev/shm', shmName), token, { mode: 0o644 });
  t.teardown(() => fs.rmSync(path.join('/dev/shm', shmName), { force: true }));

  const tcp = net.createServer((s) => s.end());
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const abstractName = uniqueName('tetrix-battery');
  const abstract = net.createServer((s) => s.end());
  await new Promise<void>((resolve) => abstract.listen(`\0${abstractName}`, resolve));
  t.teardown(() => {
    tcp.close();
    abstract.close();
  });
  return {
    token,
    env: {
      TETRIX_BATTERY_HOST_NS: hostNamespaces(),
      TETRIX_BATTERY_MARKER: marker,
      TETRIX_BATTERY_SHM_MARKER: shmName,
      TETRIX_BATTERY_TOKEN: token,
      TETRIX_BATTERY_HOST_PID: String(process.pid),
      TETRIX_BATTERY_HOST_TCP: String((tcp.address() as net.AddressInfo).port),
      TETRIX_BATTERY_HOST_ABSTRACT: abstractName,
    },
  };
}

const DEVICES = ['null', 'zero', 'full', 'random', 'urandom'];
const PTY_LIMIT = 24;

/** What the inside cannot know about the node: its boot id and its own device inodes. */
function nodeFacts(): Record<string, string> {
  return {
    TETRIX_BATTERY_HOST_BOOT_ID: fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
    TETRIX_BATTERY_HOST_DEVNODES: [...DEVICES, 'tty'].map((d) => {
      const st = fs.statSync(`/dev/${d}`);
      return `${d}=${st.dev}:${st.ino}`;
    }).join(','),
    TETRIX_BATTERY_PTY_LIMIT: String(PTY_LIMIT),
  };
}

const contentFile = (d: Daemon, id: string, file: string): string => path.join(d.stateDir, 'workspaces', id, 'content', file);

async function waitForFile(file: string, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(file)) {
    if (Date.now() > end) throw new Error(`${file} never appeared`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

interface ProbeLine {
  name: string;
  outcome: string;
  detail: string;
}

function parseReport(report: string): { probes: ProbeLine[]; total: string | undefined } {
  const probes: ProbeLine[] = [];
  let total: string | undefined;
  for (const line of report.split('\n')) {
    const m = /^PROBE (\S+) (blocked|ESCAPED|UNKNOWN) ?(.*)$/.exec(line);
    if (m) probes.push({ name: m[1], outcome: m[2], detail: m[3] });
    if (line.startsWith('battery: ')) total = line;
  }
  return { probes, total };
}

const finished = (w: Workspace__Output): boolean =>
  ['WORKSPACE_STATE_STOPPED', 'WORKSPACE_STATE_FAILED', 'WORKSPACE_STATE_SUCCEEDED'].includes(w.state);

/** A daemon with the battery image, the host's bait, and the host's /dev kept busy meanwhile. */
async function batteryDaemon(t: Test, what: string): Promise<{ d: Daemon; bait: Awaited<ReturnType<typeof hostBait>> }> {
  const imagesDir = tempDir(t, what);
  makeImage(imagesDir, 'battery', buildBattery(t));
  const d = await startDaemon(t, ['--images-dir', imagesDir, '--pty-limit', String(PTY_LIMIT)]);
  const bait = await hostBait(t);
  hostDeviceActivity(t);
  return { d, bait };
}

t.test('a hostile workspace root cannot get out: the escape battery', async (t) => {
  const hostname = os.hostname();
  const { d, bait } = await batteryDaemon(t, 'battery-images');

  // A neighbour holding a secret in its own /workspace: the battery looks for it through /proc/<pid>/root.
  const neighbour = await d.start({
    id: 'battery-neighbour',
    ownerId: 'mallory-victim',
    image: 'battery',
    // It also keeps opening and writing its /dev nodes: the battery's inotify watch must not see that.
    command: ['/bin/sh', '-c', 'echo "$SECRET" > /workspace/neighbour-secret; while :; do for d in null zero full random urandom; do echo x > /dev/$d; done 2>/dev/null; sleep 1; done'],
    env: { SECRET: bait.token },
    resources: { memoryBytes: 64 << 20, cpuMillis: 200, pids: 16 },
  });
  t.equal(neighbour.state, 'WORKSPACE_STATE_RUNNING', neighbour.message);
  await waitForFile(contentFile(d, 'battery-neighbour', 'neighbour-secret'), 20_000);

  const w = await d.start({
    id: 'battery',
    ownerId: 'mallory',
    image: 'battery',
    command: ['/battery'],
    env: {
      ...bait.env,
      ...nodeFacts(),
      TETRIX_BATTERY_NEIGHBOUR: '/workspace/neighbour-secret',
      TETRIX_BATTERY_DAEMON_SOCKET: d.socketPath,
      TETRIX_BATTERY_STATE_DIR: d.stateDir,
      TETRIX_BATTERY_REPORT: '/workspace/battery.report',
    },
    resources: { memoryBytes: 256 << 20, cpuMillis: 1000, pids: 256 },
  });
  t.not(w.state, 'WORKSPACE_STATE_FAILED', `the battery workspace starts (${w.message})`);
  const done = await d.waitFor('battery', finished, 120_000);

  const report = fs.readFileSync(contentFile(d, 'battery', 'battery.report'), 'utf8');
  t.comment(`escape battery report (workspace exit code ${done.exitCode}):\n${report}`);
  const { probes, total } = parseReport(report);
  t.ok(total, 'the battery ran to its total line');
  t.ok(probes.length >= MIN_PROBES, `${probes.length} probes (at least ${MIN_PROBES})`);
  t.equal(new Set(probes.map((p) => p.name)).size, probes.length, 'every probe has its own name');
  for (const p of probes.filter((x) => x.outcome !== 'blocked')) t.fail(`${p.name} ${p.outcome}: ${p.detail}`);
  t.equal(total, `battery: ${probes.length} probes, 0 escapes, 0 unknown`);

  t.equal(os.hostname(), hostname, "the host's hostname is unchanged");
  t.equal(fs.readFileSync(bait.env.TETRIX_BATTERY_MARKER, 'utf8'), bait.token, "the host's marker is unchanged");
  const n = await d.get('battery-neighbour');
  t.equal(n.state, 'WORKSPACE_STATE_RUNNING', 'the neighbour is still running');
});

t.test('as a prebuild task, next to init holding the task channel, the battery gets nowhere', async (t) => {
  // Issue 13, items 2 and 6: in a prebuild, init holds the daemon's task channel (fd 8), on which the
  // next task's env arrives, and every task runs as the same uid. Who reads another task's env or forges
  // a status is test/prebuild/task-isolation.test.ts; here the battery runs where a task runs.
  const { d, bait } = await batteryDaemon(t, 'battery-task-images');
  const w = await d.start({
    id: 'battery-task',
    ownerId: 'mallory',
    teamId: 'team-m',
    kind: 'WORKSPACE_KIND_PREBUILD',
    image: 'battery',
    source: { repositoryUrl: 'https://git.example.test/acme/app.git', revision: '0123456789abcdef' },
    env: {
      ...bait.env, ...nodeFacts(),
      TETRIX_BATTERY_NEIGHBOUR: '/workspace/no-neighbour-here',
      TETRIX_BATTERY_DAEMON_SOCKET: d.socketPath,
      TETRIX_BATTERY_STATE_DIR: d.stateDir,
    },
    tasks: [
      { name: 'battery', command: ['/battery'], workingDir: '/workspace', env: { TETRIX_BATTERY_REPORT: '/workspace/battery.report' } },
      // A next task, so init asks the daemon for a frame after the battery.
      { name: 'after', command: ['/bin/sh', '-c', 'echo after-ran'], workingDir: '/workspace', env: {} },
    ],
    resources: { memoryBytes: 256 << 20, cpuMillis: 1000, pids: 256 },
  });
  t.not(w.state, 'WORKSPACE_STATE_FAILED', `the prebuild starts (${w.message})`);
  const done = await d.waitFor('battery-task', finished, 180_000);
  const report = fs.readFileSync(contentFile(d, 'battery-task', 'battery.report'), 'utf8');
  t.comment(`battery as a prebuild task (${done.state} ${done.message}):\n${report}`);
  const { probes, total } = parseReport(report);
  t.ok(probes.length >= MIN_PROBES, `${probes.length} probes (at least ${MIN_PROBES})`);
  for (const p of probes.filter((x) => x.outcome !== 'blocked')) t.fail(`${p.name} ${p.outcome}: ${p.detail}`);
  t.equal(total, `battery: ${probes.length} probes, 0 escapes, 0 unknown`);
  t.same(done.tasks.map((x) => [x.name, x.state]), [['battery', 'WORKSPACE_STATE_SUCCEEDED'], ['after', 'WORKSPACE_STATE_SUCCEEDED']], 'both tasks ran, as init saw them');
});

/** Fields 6 (session) and 7 (tty_nr) of /proc/<pid>/stat, as the host sees them. */
function sessionOf(pid: number): { session: number; ttyNr: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { session: Number(fields[3]), ttyNr: Number(fields[4]) };
}

t.test('with the daemon on a pseudo-terminal, a workspace cannot reach that terminal', async (t) => {
  // Issue 13, item 1: tetrixd started from a terminal (`npm start`) shared its session and controlling
  // terminal with every workload, which opened /dev/tty, injected a command with TIOCSTI and took the
  // foreground with tcsetpgrp. dev.tty.legacy_tiocsti is 1 on this machine.
  const battery = buildBattery(t);
  const imagesDir = tempDir(t, 'battery-pty-images');
  makeImage(imagesDir, 'battery', battery);
  const d = await startDaemon(t, ['--images-dir', imagesDir], { pty: true });
  const daemonPid = Number(fs.readFileSync(`/proc/${d.process.pid}/task/${d.process.pid}/children`, 'utf8').trim().split(' ')[0]);
  const daemon = sessionOf(daemonPid);
  t.not(daemon.ttyNr, 0, 'the daemon has a controlling terminal (the pty script made)');
  t.equal(daemon.session, daemonPid, 'the daemon leads the pty\'s session');

  const probes = ['own_session_no_ctty', 'dev_tty_no_terminal', 'tiocsti_any_terminal', 'foreground_any_terminal', 'tiocsti_injection'];
  const w = await d.start({
    id: 'battery-pty',
    ownerId: 'mallory',
    image: 'battery',
    // It stays up after the battery, so the host can look at its session.
    command: ['/bin/sh', '-c', '/battery "$@"; echo done > /workspace/done; exec sleep 600', 'sh', ...probes],
    env: { TETRIX_BATTERY_REPORT: '/workspace/battery.report' },
  });
  t.not(w.state, 'WORKSPACE_STATE_FAILED', `the workspace starts (${w.message})`);
  await waitForFile(contentFile(d, 'battery-pty', 'done'), 60_000);
  const host = sessionOf(w.pid);
  t.equal(host.session, w.pid, 'init leads a session of its own (seen from the host)');
  t.equal(host.ttyNr, 0, 'init has no controlling terminal');
  const report = fs.readFileSync(contentFile(d, 'battery-pty', 'battery.report'), 'utf8');
  t.comment(`report:\n${report}`);
  const { probes: lines } = parseReport(report);
  t.same(lines.map((p) => p.name).sort(), [...probes].sort(), 'every terminal probe ran');
  for (const p of lines) t.equal(p.outcome, 'blocked', `${p.name}: ${p.detail}`);

  // Every exec session too: ExecWorkspace forks from this daemon, so it starts in the daemon's session.
  const viaExec = exec(d, { start: { workspaceId: 'battery-pty', argv: ['/battery', ...probes] } });
  const { exit } = await viaExec.done;
  const execReport = parseReport(viaExec.stdout().toString());
  t.same(execReport.probes.map((p) => p.name).sort(), [...probes].sort(), 'every terminal probe ran through exec');
  for (const p of execReport.probes) t.equal(p.outcome, 'blocked', `exec: ${p.name}: ${p.detail}`);
  t.equal(exit?.exitCode, 0, 'the battery through exec exits 0');
  // With a tty, the exec's controlling terminal is its own pty of the workspace's devpts, in a session
  // it leads (getsid 0 would mean a leader outside the workspace: the daemon).
  const withTty = exec(d, { start: { workspaceId: 'battery-pty', argv: ['/bin/sh', '-c', 'echo "sid=$(cut -d" " -f6 /proc/self/stat) pid=$$"'], tty: true } });
  await withTty.done;
  const m = /sid=(\d+) pid=(\d+)/.exec(withTty.stdout().toString());
  t.ok(m && m[1] === m[2], `a tty exec leads a session of its own in the workspace (${m?.[0]})`);
});

t.test('an image with a symlink pointing at the host cannot make the runtime touch the host', async (t) => {
  // CVE-2019-16884 (/proc replaced), CVE-2021-30465 (mount target swapped for a symlink), CVE-2025-31133
  // (/dev/null replaced): one image per path the runtime mounts on or writes to, that path a symlink to a
  // host directory and everything else ordinary.
  const victim = tempDir(t, 'battery-victim');
  fs.chmodSync(victim, 0o755);
  const targets = ['proc', 'dev', 'sys', 'etc', 'workspace', '.tetrix', 'tmp'];
  for (const dir of targets) {
    fs.mkdirSync(path.join(victim, dir));
    fs.writeFileSync(path.join(victim, dir, 'untouched'), 'host');
  }
  const before = snapshotTree(victim);

  const imagesDir = tempDir(t, 'battery-symlink-images');
  targets.forEach((target, i) => {
    const root = path.join(imagesDir, `symlink-${i}`);
    for (const dir of ['bin', ...targets]) fs.mkdirSync(path.join(root, dir), { recursive: true });
    fs.copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
    fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
    fs.symlinkSync('busybox', path.join(root, 'bin', 'sh'));
    fs.rmdirSync(path.join(root, target));
    fs.symlinkSync(path.join(victim, target), path.join(root, target));
  });

  const d = await startDaemon(t, ['--images-dir', imagesDir]);
  const script = 'ls / /proc /dev /workspace >/dev/null 2>&1; echo pwned > /etc/pwned; echo pwned > /workspace/pwned; echo pwned > /tmp/pwned; true';
  for (const [i, target] of targets.entries()) {
    const id = `symlink-${i}`;
    let outcome: string;
    try {
      const w = await d.start({ id, ownerId: 'mallory', image: id, command: ['/bin/sh', '-c', script] });
      const end = w.state === 'WORKSPACE_STATE_FAILED' ? w : await d.waitFor(id, finished, 30_000);
      outcome = `${end.state} ${end.message}`.trim();
    } catch (err) {
      outcome = `refused: ${(err as Error).message}`;
    }
    t.comment(`/${target} -> host: ${outcome}`);
    t.same(mountsUnder(victim), [], `/${target}: nothing is mounted on the host directory`);
    t.same(snapshotTree(victim), before, `/${target}: the host directory is unchanged (no file created, chowned or chmodded)`);
    await d.teardown(id).catch(() => undefined);
    t.same(snapshotTree(victim), before, `/${target}: teardown did not follow the symlink either`);
  }
});

/** path -> "mode uid gid size" for everything under dir. */
function snapshotTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string): void => {
    const st = fs.lstatSync(p);
    out[path.relative(dir, p) || '.'] = `${st.mode.toString(8)} ${st.uid} ${st.gid} ${st.isDirectory() ? '-' : st.size}`;
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
  };
  walk(dir);
  return out;
}
