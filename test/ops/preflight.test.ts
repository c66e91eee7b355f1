// The daemon refuses, with a message an operator can act on, to run where it cannot work: without
// root, without cgroup controllers, or beside another tetrixd on the same state directory.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { daemonMain, removeCgroupParent, startDaemon, uniqueName } from '../helpers/daemon';

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  served: boolean;
}

/** Runs the compiled daemon and waits for it to give up; one that serves instead is stopped and reported. */
function runDaemon(argv: string[], opts: { prefix?: string[] } = {}): Promise<Outcome> {
  const [cmd, ...pre] = opts.prefix ?? [process.execPath];
  // --network off: should a case serve after all, it must not build a bridge in the host's namespace.
  const args = [...pre, ...(opts.prefix ? [process.execPath] : []), daemonMain, '--network', 'off', ...argv];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let served = false;
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      if (c.includes('tetrixd serving')) {
        served = true;
        child.kill('SIGTERM');
      }
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr, served });
    });
  });
}

function scratch(t: Test): { dir: string; args: string[] } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-preflight-'));
  const cgroupParent = uniqueName('tetrix-preflight');
  t.teardown(() => {
    removeCgroupParent(cgroupParent);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, args: ['--state-dir', path.join(dir, 'state'), '--socket', path.join(dir, 's.sock'), '--cgroup-parent', cgroupParent] };
}

t.test('a second tetrixd on the same state directory is refused, naming the holder', async (t) => {
  const first = await startDaemon(t);
  const { dir } = scratch(t);
  const second = await runDaemon(['--state-dir', first.stateDir, '--socket', path.join(dir, 'other.sock'), '--cgroup-parent', uniqueName('tetrix-preflight')]);
  t.notOk(second.served, 'the second daemon never serves');
  t.not(second.code, 0, 'it exits with an error');
  t.match(second.stderr, new RegExp(`held by another tetrixd \\(pid ${first.process.pid}\\)`), `the message names the holder: ${second.stderr.trim()}`);
  t.equal(first.process.exitCode, null, 'the first daemon keeps running');
  t.same(await first.list(), [], 'and keeps answering');
});

t.test('a daemon started as an unprivileged user is refused with "must run as root"', async (t) => {
  const { args } = scratch(t);
  // env -u: tap's NODE_OPTIONS hooks would make the unprivileged process write into tap's records (EACCES).
  const out = await runDaemon(args, { prefix: ['env', '-u', 'NODE_OPTIONS', 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] });
  t.notOk(out.served, 'it never serves');
  t.not(out.code, 0, 'it exits with an error');
  t.match(out.stderr, /must run as root \(running as uid 65534\)/, `clear message: ${out.stderr.trim()}`);
});

t.test('a cgroup root without cgroups is refused, naming every missing controller', async (t) => {
  const { dir, args } = scratch(t);
  const bogus = path.join(dir, 'not-cgroups');
  fs.mkdirSync(bogus);
  const out = await runDaemon([...args, '--cgroup-root', bogus]);
  t.notOk(out.served, 'it never serves');
  t.not(out.code, 0, 'it exits with an error');
  t.match(out.stderr, /cgroup controllers missing: cpu, memory, pids/, `names the controllers: ${out.stderr.trim()}`);
  t.match(out.stderr, bogus, 'and where it looked');
});

const CGROUP2_SUPER_MAGIC = 0x63677270;
const hostIsV2 = fs.statfsSync('/sys/fs/cgroup').type === CGROUP2_SUPER_MAGIC;

t.test('a cgroup root that lacks one controller is refused, naming that controller', async (t) => {
  const { dir, args } = scratch(t);
  if (hostIsV2) {
    // A group of our own with nothing in its subtree_control: its children get no controllers.
    const root = path.join('/sys/fs/cgroup', uniqueName('tetrix-preflight-root'));
    const parent = 'parent';
    fs.mkdirSync(path.join(root, parent), { recursive: true });
    t.teardown(() => {
      fs.rmdirSync(path.join(root, parent));
      fs.rmdirSync(root);
    });
    const out = await runDaemon([...args, '--cgroup-root', root, '--cgroup-parent', parent]);
    t.notOk(out.served, 'it never serves');
    t.match(out.stderr, /cgroup controllers missing: cpu, memory, pids/, `names the controllers: ${out.stderr.trim()}`);
    return;
  }
  // cgroup v1: a root that offers the cpu and memory hierarchies (links to the host's) but no pids.
  const root = path.join(dir, 'v1-without-pids');
  fs.mkdirSync(root);
  for (const c of ['cpu', 'memory']) fs.symlinkSync(path.join('/sys/fs/cgroup', c), path.join(root, c));
  const out = await runDaemon([...args, '--cgroup-root', root]);
  t.notOk(out.served, 'it never serves');
  t.not(out.code, 0, 'it exits with an error');
  t.match(out.stderr, /cgroup controllers missing: pids \(/, `names only pids: ${out.stderr.trim()}`);
  t.match(out.stderr, path.join(root, 'pids'), 'and where it looked');
});

// On this project's CI hosts (hybrid v1), unified/ is a cgroup2 mount without cpu, memory or pids
// (they are bound to v1): the v2 path of the check runs there too, without creating anything.
const unifiedControllers = (() => {
  try {
    return fs.readFileSync('/sys/fs/cgroup/unified/cgroup.controllers', 'utf8').trim().split(/\s+/).filter(Boolean);
  } catch {
    return undefined;
  }
})();
const unifiedLacksAll = unifiedControllers !== undefined && !['cpu', 'memory', 'pids'].some((c) => unifiedControllers.includes(c));

t.test("a cgroup2 mount without the controllers (a hybrid host's unified/) is refused", {
  skip: unifiedLacksAll ? false : 'needs a hybrid host whose unified/ lacks cpu, memory and pids',
}, async (t) => {
  const { args } = scratch(t);
  const out = await runDaemon([...args, '--cgroup-root', '/sys/fs/cgroup/unified']);
  t.notOk(out.served, 'it never serves');
  t.not(out.code, 0, 'it exits with an error');
  t.match(out.stderr, /cgroup controllers missing: cpu, memory, pids \(cgroup v2 at \/sys\/fs\/cgroup\/unified offers "/, `clear message: ${out.stderr.trim()}`);
});
