// The escape battery (test/security/battery.c) through ExecWorkspace: an exec'd process is in the same
// sandbox as the workload. `battery --facts` run as the workload and through exec must print the same
// capabilities, no_new_privs, seccomp, namespaces, cgroup, id maps, rlimits, root and mount view; and every
// probe run through exec is blocked. nsenter from the host (what people did before) fails both.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { uniqueName } from '../helpers/daemon';
import { eventually, exec, execDaemon } from './fixture';

const PTY_LIMIT = 24;
const NAMESPACES = ['cgroup', 'ipc', 'mnt', 'net', 'pid', 'user', 'uts'];

function tempDir(t: Test, what: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-${what}-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function batteryImage(t: Test): string {
  const imagesDir = tempDir(t, 'exec-battery-images');
  const root = path.join(imagesDir, 'battery');
  for (const dir of ['bin', 'dev', 'proc', 'sys', 'tmp', 'etc', 'workspace']) fs.mkdirSync(path.join(root, dir), { recursive: true });
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  for (const applet of ['sh', 'sleep', 'cat', 'echo']) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
  execFileSync('gcc', ['-static', '-O2', '-o', path.join(root, 'battery'), path.join(__dirname, '..', 'security', 'battery.c')]);
  fs.chmodSync(path.join(root, 'battery'), 0o555);
  return imagesDir;
}

/** What the probes compare against (as test/security/battery.test.ts gives them), minus a neighbour. */
async function bait(t: Test, socketPath: string, stateDir: string): Promise<Record<string, string>> {
  const token = crypto.randomBytes(16).toString('hex');
  const dir = tempDir(t, 'exec-battery-marker');
  const marker = path.join(dir, 'host-secret');
  fs.writeFileSync(marker, token, { mode: 0o644 });
  fs.chmodSync(dir, 0o755);
  const shmName = uniqueName('tetrix-exec-battery-shm');
  fs.writeFileSync(path.join('/dev/shm', shmName), token, { mode: 0o644 });
  t.teardown(() => fs.rmSync(path.join('/dev/shm', shmName), { force: true }));
  const tcp = net.createServer((s) => s.end());
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const abstractName = uniqueName('tetrix-exec-battery');
  const abstract = net.createServer((s) => s.end());
  await new Promise<void>((resolve) => abstract.listen(`\0${abstractName}`, resolve));
  t.teardown(() => {
    tcp.close();
    abstract.close();
  });
  const devices = ['null', 'zero', 'full', 'random', 'urandom', 'tty'];
  return {
    TETRIX_BATTERY_HOST_NS: NAMESPACES.map((ns) => `${ns}:${/\[(\d+)\]/.exec(fs.readlinkSync(`/proc/self/ns/${ns}`))![1]}`).join(','),
    TETRIX_BATTERY_MARKER: marker,
    TETRIX_BATTERY_SHM_MARKER: shmName,
    TETRIX_BATTERY_TOKEN: token,
    TETRIX_BATTERY_NEIGHBOUR: '/workspace/no-neighbour-here',
    TETRIX_BATTERY_HOST_PID: String(process.pid),
    TETRIX_BATTERY_HOST_TCP: String((tcp.address() as net.AddressInfo).port),
    TETRIX_BATTERY_HOST_ABSTRACT: abstractName,
    TETRIX_BATTERY_DAEMON_SOCKET: socketPath,
    TETRIX_BATTERY_STATE_DIR: stateDir,
    TETRIX_BATTERY_HOST_BOOT_ID: fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
    TETRIX_BATTERY_HOST_DEVNODES: devices.map((d) => {
      const st = fs.statSync(`/dev/${d}`);
      return `${d}=${st.dev}:${st.ino}`;
    }).join(','),
    TETRIX_BATTERY_PTY_LIMIT: String(PTY_LIMIT),
    TETRIX_BATTERY_DEV_WATCH_MS: '500',
  };
}

const facts = (text: string): Map<string, string> =>
  new Map(text.split('\n').filter((l) => l.startsWith('FACT ')).map((l) => {
    const rest = l.slice(5);
    const sp = rest.indexOf(' ');
    return [rest.slice(0, sp), rest.slice(sp + 1)];
  }));

t.test('an exec sees exactly the workload\'s sandbox, and every probe of the battery is blocked through it', async (t) => {
  const imagesDir = batteryImage(t);
  const { d } = await execDaemon(t, ['--images-dir', imagesDir, '--pty-limit', String(PTY_LIMIT)]);
  const env = await bait(t, d.socketPath, d.stateDir);
  const w = await d.start({
    id: 'ex-battery', ownerId: 'mallory', image: 'battery', env,
    command: ['/bin/sh', '-c', '/battery --facts > /workspace/workload.facts; exec sleep 3600'],
    resources: { memoryBytes: 256 << 20, cpuMillis: 1000, pids: 256 },
  });
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
  const workloadFacts = path.join(d.stateDir, 'workspaces', 'ex-battery', 'content', 'workload.facts');
  await eventually('the workload\'s facts', () => fs.existsSync(workloadFacts) && fs.readFileSync(workloadFacts, 'utf8').includes('FACT mountinfo'));

  const viaExec = exec(d, { start: { workspaceId: 'ex-battery', argv: ['/battery', '--facts'] } });
  await viaExec.done;
  const workload = facts(fs.readFileSync(workloadFacts, 'utf8'));
  const execd = facts(viaExec.stdout().toString());
  t.ok(workload.size >= 20, `${workload.size} facts`);
  t.same([...execd.keys()], [...workload.keys()], 'the same facts are printed');
  for (const [name, value] of workload) t.equal(execd.get(name), value, `${name}: ${value.slice(0, 80)}`);
  t.equal(execd.get('Seccomp'), '2', 'seccomp is on');
  t.equal(execd.get('NoNewPrivs'), '1');
  t.not(execd.get('CapEff'), '000001ffffffffff', 'not every capability');

  const run = exec(d, { start: { workspaceId: 'ex-battery', argv: ['/battery'] } });
  const { exit } = await run.done;
  const report = run.stdout().toString();
  t.comment(`battery through exec (exit ${exit?.exitCode}):\n${report}`);
  const probes = report.split('\n').map((l) => /^PROBE (\S+) (blocked|ESCAPED|UNKNOWN) ?(.*)$/.exec(l)).filter((m) => m !== null);
  t.ok(probes.length >= 40, `${probes.length} probes ran through exec`);
  for (const [, name, outcome, detail] of probes) if (outcome !== 'blocked') t.fail(`${name} ${outcome}: ${detail}`);
  t.match(report, new RegExp(`battery: ${probes.length} probes, 0 escapes, 0 unknown`));
  t.equal(exit?.exitCode, 0);
});
