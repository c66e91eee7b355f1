// Seccomp profiles: the shipped ones load and compile, malformed ones are refused with the file and the
// JSON path, a request picks a profile by name, and the compiled filter does what the profile says to a
// real process (installed exactly as the workspace child installs it: no_new_privs, then seccomp(2)).
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { Test } from 'tap';
import { capabilityNumbers, DEFAULT_CAPABILITIES } from '../../src/sandbox/capabilities';
import { initBinaryPath, native } from '../../src/sandbox/native';
import { compileProfile, readProfile, SeccompProfiles } from '../../src/sandbox/seccomp';

const repoRoot = path.resolve(__dirname, '..', '..');
const profilesDir = path.join(repoRoot, 'profiles', 'seccomp');

function tempDir(t: Test, what: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-seccomp-${what}-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// The probe runs in its own process: the filter must never land on the test runner.
let probeBinary: string | undefined;
function probe(t: Test): string {
  if (probeBinary) return probeBinary;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-seccomp-probe-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'seccomp-probe');
  execFileSync('gcc', ['-O2', '-Wall', '-o', out, path.join(__dirname, 'fixtures', 'seccomp-probe.c')]);
  probeBinary = out;
  t.teardown(() => (probeBinary = undefined));
  return out;
}

/** Runs named probes under a filter; returns probe -> "ok" | errno name | "killed by SIGSYS". */
function underFilter(t: Test, filter: Buffer, probes: string[]): Record<string, string> {
  const file = path.join(tempDir(t, 'bpf'), 'filter.bpf');
  fs.writeFileSync(file, filter);
  const results: Record<string, string> = {};
  for (const name of probes) {
    // One process a probe, so a probe the filter kills does not hide the others.
    const r = spawnSync(probe(t), [file, 'probe', name], { encoding: 'utf8' });
    if (r.signal) results[name] = `killed by ${r.signal}`;
    else results[name] = r.stdout.trim().split(' ')[1] ?? `exit ${r.status}: ${r.stderr}`;
  }
  return results;
}

function writeProfile(dir: string, name: string, profile: unknown): string {
  const file = path.join(dir, `${name}.json`);
  fs.writeFileSync(file, typeof profile === 'string' ? profile : JSON.stringify(profile, null, 2));
  return file;
}

const minimal = () => ({
  defaultAction: 'SCMP_ACT_ERRNO',
  architectures: ['SCMP_ARCH_X86_64'],
  syscalls: [{ names: ['read', 'write', 'exit_group'], action: 'SCMP_ACT_ALLOW' }],
});

t.test('the shipped profiles load, compile and are chosen by name', async (t) => {
  const profiles = await SeccompProfiles.load(profilesDir);
  t.same(profiles.names(), ['debug', 'default', 'strict']);
  const def = profiles.filterFor('');
  t.ok(def.length > 0 && def.length % 8 === 0, 'a struct sock_filter[] program');
  t.equal(profiles.filterFor('default'), def, 'the empty name is the default, compiled once and cached');
  t.not(profiles.filterFor('strict').equals(def), 'strict is another program');
  t.not(profiles.filterFor('debug').equals(def), 'debug is another program');
});

t.test('an unknown profile name is INVALID_ARGUMENT', async (t) => {
  const profiles = await SeccompProfiles.load(profilesDir);
  t.throws(() => profiles.filterFor('nope'), { code: 'INVALID_ARGUMENT', message: 'seccomp_profile: unknown profile "nope"' });
  t.throws(() => profiles.filterFor('../default'), { code: 'INVALID_ARGUMENT' });
});

t.test('malformed profiles are refused, naming the file and the JSON path', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['bad JSON', '{\n  "defaultAction": "SCMP_ACT_ERRNO",,\n}', /: invalid JSON at line 2 column 37: /],
    ['not an object', '[]', /: \(top level\): must be an object, got an array$/],
    ['unknown action', { ...minimal(), syscalls: [minimal().syscalls[0], { names: ['getpid'], action: 'SCMP_ACT_FOO' }] },
      /: syscalls\[1\]\.action: unknown action "SCMP_ACT_FOO"$/],
    ['unknown default action', { ...minimal(), defaultAction: 'SCMP_ACT_DENY' }, /: defaultAction: unknown action "SCMP_ACT_DENY"$/],
    ['notify', { ...minimal(), defaultAction: 'SCMP_ACT_NOTIFY' }, /: defaultAction: SCMP_ACT_NOTIFY is not supported/],
    ['unknown syscall', { ...minimal(), syscalls: [{ names: ['read', 'write', 'kexec_lod'], action: 'SCMP_ACT_ALLOW' }] },
      /: syscalls\[0\]\.names\[2\]: unknown syscall "kexec_lod"$/],
    ['syscall of another arch', { ...minimal(), syscalls: [{ names: ['arm_fadvise64_64'], action: 'SCMP_ACT_ALLOW' }] },
      /: syscalls\[0\]\.names\[0\]: syscall "arm_fadvise64_64" does not exist on x86_64$/],
    ['names is a string', { ...minimal(), syscalls: [{ names: 'read', action: 'SCMP_ACT_ALLOW' }] },
      /: syscalls\[0\]\.names: must be an array, got string "read"$/],
    ['empty names', { ...minimal(), syscalls: [{ names: [], action: 'SCMP_ACT_ALLOW' }] },
      /: syscalls\[0\]\.names: must name at least one syscall$/],
    ['index as a string', { ...minimal(), syscalls: [{ names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: '0', value: 1, op: 'SCMP_CMP_EQ' }] }] },
      /: syscalls\[0\]\.args\[0\]\.index: must be a non-negative integer, got string "0"$/],
    ['index out of range', { ...minimal(), syscalls: [{ names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 6, value: 1, op: 'SCMP_CMP_EQ' }] }] },
      /: syscalls\[0\]\.args\[0\]\.index: must be at most 5, got 6$/],
    ['fractional value', { ...minimal(), syscalls: [{ names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1.5, op: 'SCMP_CMP_EQ' }] }] },
      /: syscalls\[0\]\.args\[0\]\.value: must be a non-negative integer, got number 1.5$/],
    ['value beyond 2^53', '{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["socket"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":18446744073709551615,"op":"SCMP_CMP_EQ"}]}]}',
      /: syscalls\[0\]\.args\[0\]\.value: .* is above 2\^53/],
    ['unknown comparison', { ...minimal(), syscalls: [{ names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1, op: 'SCMP_CMP_LIKE' }] }] },
      /: syscalls\[0\]\.args\[0\]\.op: unknown comparison "SCMP_CMP_LIKE"$/],
    ['errnoRet on allow', { ...minimal(), syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', errnoRet: 1 }] },
      /: syscalls\[0\]\.errnoRet: only applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE/],
    ['negative defaultErrnoRet', { ...minimal(), defaultErrnoRet: -1 }, /: defaultErrnoRet: must be a non-negative integer, got number -1$/],
    ['misspelt field', { ...minimal(), defaultaction: 'SCMP_ACT_ALLOW' }, /: defaultaction: unknown field$/],
    ['unknown capability', { ...minimal(), syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_GOD_MODE'] } }] },
      /: syscalls\[0\]\.includes\.caps\[0\]: unknown capability "CAP_GOD_MODE"$/],
    ['unknown include arch', { ...minimal(), syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', excludes: { arches: ['vax'] } }] },
      /: syscalls\[0\]\.excludes\.arches\[0\]: unknown arch "vax"$/],
    ['bad minKernel', { ...minimal(), syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: 'four' } }] },
      /: syscalls\[0\]\.includes\.minKernel: must be a kernel version like "5.8", got "four"$/],
    ['unknown architecture', { ...minimal(), architectures: ['SCMP_ARCH_PDP11'] }, /: architectures\[0\]: unknown architecture "SCMP_ARCH_PDP11"$/],
    ['both arch forms', { ...minimal(), archMap: [] }, /: has both "architectures" and "archMap"; use one$/],
    ['name and names', { ...minimal(), syscalls: [{ name: 'read', names: ['read'], action: 'SCMP_ACT_ALLOW' }] },
      /: syscalls\[0\]: has both "name" and "names"; use one$/],
    // libseccomp would silently keep the first and drop the second.
    ['conflicting rules', { ...minimal(), syscalls: [minimal().syscalls[0], { names: ['getpid', 'read'], action: 'SCMP_ACT_KILL_PROCESS' }] },
      /: syscalls\[1\]\.names\[1\]: "read" is SCMP_ACT_KILL_PROCESS here but SCMP_ACT_ALLOW at syscalls\[0\]\.names\[0\], and one of them has no conditions$/],
  ];
  for (const [what, content, message] of cases) {
    const dir = tempDir(t, 'bad');
    fs.copyFileSync(path.join(profilesDir, 'default.json'), path.join(dir, 'default.json'));
    const file = writeProfile(dir, 'bad', content);
    // The whole directory is refused: the daemon never runs with some profiles missing.
    await t.rejects(SeccompProfiles.load(dir), { code: 'FAILED_PRECONDITION', message }, what);
    await t.rejects(readProfile(file).then((p) => compileProfile(p)), { message: new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `) }, `${what}: names the file`);
  }
});

t.test('a directory without default.json, or an unreadable one, is refused', async (t) => {
  const dir = tempDir(t, 'nodefault');
  writeProfile(dir, 'other', minimal());
  await t.rejects(SeccompProfiles.load(dir), { code: 'FAILED_PRECONDITION', message: `${dir}: no default.json seccomp profile` });
  await t.rejects(SeccompProfiles.load(path.join(dir, 'missing')), { code: 'FAILED_PRECONDITION', message: /cannot read seccomp profiles: ENOENT/ });
  writeProfile(dir, 'default', minimal());
  writeProfile(dir, 'Bad Name', minimal());
  await t.rejects(SeccompProfiles.load(dir), { code: 'FAILED_PRECONDITION', message: /Bad Name\.json: profile names are/ });
});

/** Whether this machine's libseccomp can name a syscall (the addon resolves names through it). */
function libseccompKnows(name: string): boolean {
  const addon = native as unknown as { seccompResolveSyscall(n: string, arch: string): number; seccompNativeArch(): string };
  return addon.seccompResolveSyscall(name, addon.seccompNativeArch()) >= 0;
}

t.test('the default profile: dangerous calls fail with EPERM, clone3 with ENOSYS, ordinary work succeeds', async (t) => {
  const filter = (await SeccompProfiles.load(profilesDir)).filterFor('');
  const got = underFilter(t, filter, [
    'getpid', 'fork', 'socket_unix', 'unshare_files', 'personality_query',
    'keyctl', 'add_key', 'bpf', 'perf_event_open', 'unshare_user', 'clone_newuser', 'mount', 'ptrace',
    'personality_read_implies_exec', 'socket_vsock', 'io_uring_setup', 'kexec_load', 'clone3', 'listmount',
  ]);
  t.same(got, {
    getpid: 'ok',
    fork: 'ok',
    socket_unix: 'ok',
    unshare_files: 'ok',
    personality_query: 'ok',
    keyctl: 'EPERM',
    add_key: 'EPERM',
    bpf: 'EPERM',
    perf_event_open: 'EPERM',
    unshare_user: 'EPERM',
    clone_newuser: 'EPERM',
    mount: 'EPERM',
    ptrace: 'EPERM',
    personality_read_implies_exec: 'EPERM',
    socket_vsock: 'EPERM',
    io_uring_setup: 'EPERM',
    kexec_load: 'EPERM',
    clone3: 'ENOSYS',     // libc falls back to clone, whose flags seccomp can see
    // Newer than libseccomp 2.5 (Debian 12): ENOSYS, so libc falls back as on an older kernel. libseccomp
    // 2.6 (Debian 13) can name it, and the profile's default refusal applies.
    listmount: libseccompKnows('listmount') ? 'EPERM' : 'ENOSYS',
  });
});

t.test('a shell, fork and exec, threads and a compiler all work under the default profile', async (t) => {
  const filter = (await SeccompProfiles.load(profilesDir)).filterFor('');
  const dir = tempDir(t, 'work');
  const file = path.join(dir, 'filter.bpf');
  fs.writeFileSync(file, filter);
  const script = [
    'set -e',
    'cd "$1"',
    'printf "#include <pthread.h>\\n#include <stdio.h>\\nstatic void *f(void *a) { return a; }\\nint main(void) { pthread_t t; pthread_create(&t, 0, f, 0); pthread_join(t, 0); puts(\\"threads\\"); return 0; }\\n" > t.c',
    'gcc -pthread -o t t.c',
    './t',
    'echo piped | cat',
    `${process.execPath} -e "require('child_process').execFileSync('true'); console.log('node')"`,
  ].join('\n');
  const r = spawnSync(probe(t), [file, 'exec', '/bin/sh', '-c', script, 'sh', dir], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.same(r.stdout.trim().split('\n'), ['threads', 'piped', 'node']);
});

t.test('per-request selection: strict kills on kexec and allows only four socket families', async (t) => {
  const profiles = await SeccompProfiles.load(profilesDir);
  const strict = underFilter(t, profiles.filterFor('strict'), ['kexec_load', 'socket_packet', 'socket_unix', 'keyctl']);
  t.same(strict, { kexec_load: 'killed by SIGSYS', socket_packet: 'EPERM', socket_unix: 'ok', keyctl: 'EPERM' });
  // As host root the kernel lets a packet socket through; only the filter differs.
  const def = underFilter(t, profiles.filterFor('default'), ['kexec_load', 'socket_packet']);
  t.same(def, { kexec_load: 'EPERM', socket_packet: 'ok' });
});

t.test('includes and excludes follow the capabilities and the arch', async (t) => {
  const profile = await readProfile(path.join(profilesDir, 'default.json'));
  const withAdmin = await compileProfile(profile, { capabilities: [...DEFAULT_CAPABILITIES, 'CAP_SYS_ADMIN'] });
  // With CAP_SYS_ADMIN the profile allows unshare and mount (as moby's does); we are host root, so the
  // kernel then lets them through.
  t.same(underFilter(t, withAdmin, ['unshare_user', 'clone3']), { unshare_user: 'ok', clone3: 'EINVAL' });

  const dir = tempDir(t, 'arch');
  const file = writeProfile(dir, 'arch', {
    defaultAction: 'SCMP_ACT_ALLOW',
    syscalls: [
      { names: ['getpid'], action: 'SCMP_ACT_ERRNO', errnoRet: 13, includes: { arches: ['arm64'] } },
      { names: ['keyctl'], action: 'SCMP_ACT_ERRNO', errnoRet: 13, includes: { arches: ['amd64'] } },
      { names: ['bpf'], action: 'SCMP_ACT_ERRNO', errnoRet: 13, excludes: { minKernel: '4.0' } },
      { names: ['add_key'], action: 'SCMP_ACT_ERRNO', errnoRet: 13, includes: { minKernel: '4.0' } },
    ],
  });
  const filter = await compileProfile(await readProfile(file));
  const got = underFilter(t, filter, ['getpid', 'keyctl', 'bpf', 'add_key', 'listmount']);
  t.equal(got.getpid, 'ok', 'an arm64-only rule does not apply here');
  t.equal(got.keyctl, 'EACCES', 'an amd64 rule does');
  t.not(got.bpf, 'EACCES', 'excluded from kernel 4.0 on');
  t.equal(got.add_key, 'EACCES', 'included from kernel 4.0 on');
  t.not(got.listmount, 'ENOSYS', 'an allow-by-default profile lets newer syscalls through');
});

t.test('repeated conditions on one argument are alternatives, as in runc', async (t) => {
  const dir = tempDir(t, 'args');
  const file = writeProfile(dir, 'args', {
    defaultAction: 'SCMP_ACT_ALLOW',
    syscalls: [{
      names: ['personality'],
      action: 'SCMP_ACT_ERRNO',
      errnoRet: 22,
      args: [
        { index: 0, value: 0x0400000, op: 'SCMP_CMP_EQ' },
        { index: 0, value: 0xffffffff, op: 'SCMP_CMP_EQ' },
      ],
    }],
  });
  const got = underFilter(t, await compileProfile(await readProfile(file)), ['personality_read_implies_exec', 'personality_query']);
  t.same(got, { personality_read_implies_exec: 'EINVAL', personality_query: 'EINVAL' });
});

// A uid range of our own, far above what the daemon's allocator hands out, distinct per test process.
const WORKSPACE_ID_BASE = 3_900_000_000 + (process.pid % 500) * 65536;

/** Runs argv as the workload of a real workspace (native.spawn, busybox rootfs); returns its output. */
async function inWorkspace(t: Test, filter: Buffer, argv: string[]): Promise<{ output: string; exitCode: number | null }> {
  const dir = tempDir(t, 'ws');
  fs.chmodSync(dir, 0o755);
  const root = path.join(dir, 'rootfs');
  for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  for (const applet of ['sh', 'echo', 'cat', 'true']) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
  execFileSync('gcc', ['-static', '-O2', '-o', path.join(root, 'bin', 'seccomp-probe'), path.join(__dirname, 'fixtures', 'seccomp-probe.c')]);
  fs.chownSync(path.join(root, 'tmp'), WORKSPACE_ID_BASE, WORKSPACE_ID_BASE);
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  const outFile = path.join(dir, 'output');
  const out = fs.openSync(outFile, 'w');
  const status = fs.openSync(path.join(dir, 'status'), 'w', 0o600);
  try {
    const r = await native.spawn({
      rootfs: root,
      initPath: initBinaryPath,
      argv,
      env: ['PATH=/bin'],
      cwd: '/',
      hostname: `tetrix-seccomp-${process.pid}`,
      uidBase: WORKSPACE_ID_BASE,
      gidBase: WORKSPACE_ID_BASE,
      idCount: 65536,
      cgroupTasks: [],
      cgroupDir: '',
      stdoutFd: out,
      stderrFd: out,
      statusFd: status,
      mounts: [],
      ptyLimit: 64,
      capabilities: capabilityNumbers(DEFAULT_CAPABILITIES),
      seccomp: filter,
    });
    const exit = await new Promise<{ exitCode: number | null }>((resolve) => native.watchExit(r.pidfd, resolve));
    native.closeFd(r.pidfd);
    return { output: fs.readFileSync(outFile, 'utf8'), exitCode: exit.exitCode };
  } finally {
    fs.closeSync(out);
    fs.closeSync(status);
  }
}

t.test('in a real workspace, the default profile refuses what it should and the shell works', async (t) => {
  const filter = (await SeccompProfiles.load(profilesDir)).filterFor('');
  const probes = ['keyctl', 'bpf', 'unshare_user', 'clone_newuser', 'mount', 'ptrace', 'clone3', 'fork', 'getpid', 'socket_unix'];
  const script = `/bin/seccomp-probe - probe ${probes.join(' ')} && echo hello | cat && /bin/true && echo done`;
  const { output, exitCode } = await inWorkspace(t, filter, ['/bin/sh', '-c', script]);
  t.equal(exitCode, 0, output);
  const results = Object.fromEntries(output.trim().split('\n').filter((l) => l.includes(' ')).map((l) => l.split(' ')));
  t.same(results, {
    keyctl: 'EPERM',
    bpf: 'EPERM',
    unshare_user: 'EPERM',
    clone_newuser: 'EPERM',
    mount: 'EPERM',
    ptrace: 'EPERM',
    clone3: 'ENOSYS',
    fork: 'ok',
    getpid: 'ok',
    socket_unix: 'ok',
  });
  t.match(output, /^hello$/m, 'a pipeline runs');
  t.match(output, /^done$/m, 'fork and exec work');
});
