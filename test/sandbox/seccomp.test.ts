// Seccomp profiles: the shipped ones load and compile, malformed ones are refused with the file and the
// JSON path, a request picks a profile by name, and the compiled filter does what the profile says to a
// real process (installed exactly as the workspace child installs it: no_new_privs, then seccomp(2)).
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { Test } from 'tap';
import { capabilityNumbers, DEFAULT_CAPABILITIES } from '../../src/sandbox/capabilities';
import { initBinaryPath, native } from '../../src/native';
import { compileProfile, readProfile, SeccompProfiles } from '../../src/sandbox/seccomp';
import { argWidths, maskedTerms } from '../../src/sandbox/seccomp-args';
import { kernelArgWidths } from './fixtures/syscall-signatures';

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

t.test('per-request selection: strict kills on kexec where the default refuses', async (t) => {
  const profiles = await SeccompProfiles.load(profilesDir);
  const strict = underFilter(t, profiles.filterFor('strict'), ['kexec_load', 'socket_packet', 'socket_unix', 'keyctl']);
  t.same(strict, { kexec_load: 'killed by SIGSYS', socket_packet: 'EPERM', socket_unix: 'ok', keyctl: 'EPERM' });
  // The default refuses the same families (as host root the kernel would let a packet socket through).
  const def = underFilter(t, profiles.filterFor('default'), ['kexec_load', 'socket_packet']);
  t.same(def, { kexec_load: 'EPERM', socket_packet: 'EPERM' });
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

interface RunningWorkspace {
  pidfd: number;
  outFile: string;
  exited: Promise<{ exitCode: number | null }>;
}

/** Starts argv as the workload of a real workspace (native.spawn, busybox rootfs). */
async function startWorkspace(t: Test, filter: Buffer, argv: string[]): Promise<RunningWorkspace> {
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
    const exited = new Promise<{ exitCode: number | null }>((resolve) => native.watchExit(r.pidfd, resolve));
    return { pidfd: r.pidfd, outFile, exited };
  } finally {
    fs.closeSync(out);
    fs.closeSync(status);
  }
}

/** Runs argv as the workload of a real workspace; returns its output. */
async function inWorkspace(t: Test, filter: Buffer, argv: string[]): Promise<{ output: string; exitCode: number | null }> {
  const w = await startWorkspace(t, filter, argv);
  const exit = await w.exited;
  native.closeFd(w.pidfd);
  return { output: fs.readFileSync(w.outFile, 'utf8'), exitCode: exit.exitCode };
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

// ---- comparisons see the bits the kernel reads (review of December 2026, item 3) ------------------------
// An int argument is the low 32 bits of its register to the kernel; libseccomp compares all 64. Before the
// fix socket(0x100000028, ...) passed "family != AF_VSOCK" and the kernel made an AF_VSOCK socket.

const nativeArch = (native as unknown as { seccompNativeArch(): string }).seccompNativeArch();
const syscallNumber = (name: string): number =>
  (native as unknown as { seccompResolveSyscall(n: string, arch: string): number }).seccompResolveSyscall(name, nativeArch);

/** One raw syscall under a filter file, in its own process: "ok" or the errno name. */
function rawCall(t: Test, filterFile: string, name: string, args: Array<bigint | 'buf'>): string {
  const argv = args.map((a) => (a === 'buf' ? 'buf' : `0x${a.toString(16)}`));
  const r = spawnSync(probe(t), [filterFile, 'raw', String(syscallNumber(name)), ...argv], { encoding: 'utf8' });
  if (r.signal) return `killed by ${r.signal}`;
  return r.stdout.trim().split(' ')[1] ?? `exit ${r.status}: ${r.stderr}`;
}

function filterFile(t: Test, filter: Buffer): string {
  const file = path.join(tempDir(t, 'bpf'), 'filter.bpf');
  fs.writeFileSync(file, filter);
  return file;
}

/** What each variant of an argument ORs in: every bit above its width, and the lowest of them alone. */
function highBitVariants(width: number): bigint[] {
  const all = (1n << 64n) - 1n;
  const low = (1n << BigInt(width)) - 1n;
  return [...new Set([1n << BigInt(width), 1n << 32n, all ^ low])].filter((v) => v < 1n << 64n && v > low);
}

/** Values on either side of a comparison's boundary, within the argument's width. */
function boundarySamples(a: ProfileArg, width: number): bigint[] {
  const v = BigInt(a.op === 'SCMP_CMP_MASKED_EQ' ? (a.valueTwo ?? 0) : a.value);
  const mask = BigInt(a.value);
  const list = [v - 1n, v, v + 1n, v ^ 1n];
  if (a.op === 'SCMP_CMP_MASKED_EQ' && mask > 0n) list.push(v ^ (mask & -mask));
  const max = (1n << BigInt(width)) - 1n;
  return [...new Set(list)].filter((x) => x >= 0n && x <= max);
}

interface ProfileArg { index: number; value: number; valueTwo?: number; op: string }
interface ProfileRule { names?: string[]; name?: string; action: string; args?: ProfileArg[] }

/** Registers for the arguments a rule does not compare: enough for the call to reach the kernel's checks. */
const OTHER_ARGS: Record<string, Array<bigint | 'buf'>> = {
  socket: [0n, 2n /* SOCK_DGRAM */, 0n],
  socketpair: [0n, 2n, 0n, 'buf'],
  ioctl: [0xffffffffn /* fd -1 */, 0n, 0n],
  fchmod: [0xffffffffn, 0n],
};

/**
 * For every comparison of a rule: the syscall with the compared argument on either side of the boundary,
 * with and without high bits set, must get the same answer when the kernel reads only the low bits. On a
 * 64-bit argument the kernel reads the high bits too (unshare refuses unknown flags): there, high bits must
 * never turn a refusal into success.
 */
function checkHighBits(t: Test, file: string, rule: ProfileRule, label: string): void {
  for (const name of rule.names ?? [rule.name!]) {
    const widths: readonly number[] | undefined = argWidths(name);
    if (!widths) {
      t.fail(`${label}: ${name} is not in the argument width table`);
      continue;
    }
    const base: Array<bigint | 'buf'> = [...(OTHER_ARGS[name] ?? [])];
    while (base.length < widths.length) base.push(0n);
    for (const a of rule.args ?? []) base[a.index] = BigInt(a.op === 'SCMP_CMP_MASKED_EQ' ? (a.valueTwo ?? 0) : a.value);
    for (const a of rule.args ?? []) {
      const width: number = widths[a.index];
      for (const sample of boundarySamples(a, Math.min(width, 32))) {
        const args = [...base];
        args[a.index] = sample;
        const plain = rawCall(t, file, name, args);
        for (const high of highBitVariants(Math.min(width, 32))) {
          args[a.index] = sample | high;
          const got = rawCall(t, file, name, args);
          const what: string = `${label}: ${name} arg ${a.index} = 0x${(sample | high).toString(16)} (${width}-bit) gets ${got}, 0x${sample.toString(16)} gets ${plain}`;
          if (width < 64) t.equal(got, plain, what);
          else if (plain !== 'ok') t.not(got, 'ok', what);
        }
      }
    }
  }
}

t.test('every argument rule of every shipped profile holds with the high bits of its arguments set', async (t) => {
  const profiles = await SeccompProfiles.load(profilesDir);
  for (const name of profiles.names()) {
    const file = filterFile(t, profiles.filterFor(name));
    const json = JSON.parse(fs.readFileSync(path.join(profilesDir, `${name}.json`), 'utf8')) as { syscalls: ProfileRule[] };
    json.syscalls.forEach((rule, i) => {
      if (rule.args?.length) checkHighBits(t, file, rule, `${name}.json syscalls[${i}]`);
    });
  }
});

t.test('every comparison on a 32-bit and a 16-bit argument holds with high bits set (ioctl cmd, fchmod mode)', async (t) => {
  // ioctl's cmd is an unsigned int: flatpak's TIOCSTI filter fell to this (CVE-2017-5226). fchmod's mode is
  // an umode_t: 16 bits. The kernel answers EBADF for fd -1 whenever the filter lets the call through.
  const dir = tempDir(t, 'narrow');
  const cases: Array<[string, number, number, number]> = [
    ['ioctl', 1, 0x5412 /* TIOCSTI */, 0xffffffff],
    ['fchmod', 1, 0o4755, 0o7777],
  ];
  for (const [syscall, index, value, mask] of cases) {
    for (const op of ['SCMP_CMP_EQ', 'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_GT', 'SCMP_CMP_GE', 'SCMP_CMP_MASKED_EQ']) {
      const arg = op === 'SCMP_CMP_MASKED_EQ' ? { index, value: mask, valueTwo: value, op } : { index, value, op };
      const rule = { names: [syscall], action: 'SCMP_ACT_ERRNO', errnoRet: 13, args: [arg] };
      const file = writeProfile(dir, `${syscall}-${op.toLowerCase()}`, { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [rule] });
      const bpf = filterFile(t, await compileProfile(await readProfile(file)));
      checkHighBits(t, bpf, rule, `${syscall} ${op}`);
    }
  }
});

t.test('a profile with Docker\'s argument rules loads, and its socket rule cannot be bypassed', async (t) => {
  // The shapes of moby's default profile: socket != AF_VSOCK, personality values, clone with a flag mask
  // unless CAP_SYS_ADMIN, and s390's clone with the flags in arg 1.
  const dir = tempDir(t, 'docker');
  const file = writeProfile(dir, 'docker-shape', {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: 1,
    archMap: [{ architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] }],
    syscalls: [
      { names: ['read', 'write', 'exit_group', 'close', 'wait4', 'exit'], action: 'SCMP_ACT_ALLOW' },
      { names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 40, valueTwo: 0, op: 'SCMP_CMP_NE' }] },
      ...[0, 8, 131072, 131080, 4294967295].map((value) => ({
        names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value, valueTwo: 0, op: 'SCMP_CMP_EQ' }],
      })),
      { names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 2114060288, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }],
        excludes: { caps: ['CAP_SYS_ADMIN'], arches: ['s390', 's390x'] } },
      { names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, value: 2114060288, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }],
        includes: { arches: ['s390', 's390x'] }, excludes: { caps: ['CAP_SYS_ADMIN'] } },
    ],
  });
  const bpf = filterFile(t, await compileProfile(await readProfile(file)));
  t.equal(rawCall(t, bpf, 'socket', [40n, 1n, 0n]), 'EPERM', 'AF_VSOCK is refused');
  t.equal(rawCall(t, bpf, 'socket', [0x100000028n, 1n, 0n]), 'EPERM', 'and so is AF_VSOCK with the high bits set');
  t.equal(rawCall(t, bpf, 'socket', [0x100000001n, 1n, 0n]), 'ok', 'AF_UNIX with high bits is still AF_UNIX');
  t.equal(rawCall(t, bpf, 'personality', [0xffffffffffffffffn]), 'ok', 'a sign-extended query is the query');
  t.equal(rawCall(t, bpf, 'clone', [0x100000000n | BigInt(0x10000000 /* CLONE_NEWUSER */)]), 'EPERM', 'clone reads the low 32 bits of its flags');
});

t.test('comparisons that cannot be compiled as the kernel reads them are refused, naming the rule', async (t) => {
  const rule = (args: unknown[], names = ['socket']) => ({ ...minimal(), syscalls: [...minimal().syscalls, { names, action: 'SCMP_ACT_ALLOW', args }] });
  const cases: Array<[string, unknown, RegExp]> = [
    ['value wider than the argument', rule([{ index: 0, value: 0x100000028, op: 'SCMP_CMP_NE' }]),
      /: syscalls\[1\]\.args\[0\]\.value: argument 0 of socket is 32 bits wide to the kernel, 4294967336 does not fit$/],
    ['masked datum wider than a umode_t', rule([{ index: 1, value: 0xffffffff, valueTwo: 0x10000, op: 'SCMP_CMP_MASKED_EQ' }], ['fchmod']),
      /: syscalls\[1\]\.args\[0\]\.valueTwo: argument 1 of fchmod is 16 bits wide to the kernel, 65536 does not fit$/],
    ['argument the syscall does not have', rule([{ index: 1, value: 0, op: 'SCMP_CMP_EQ' }], ['personality']),
      /: syscalls\[1\]\.args\[0\]\.index: personality takes 1 argument, there is no argument 1$/],
    ['syscall of unknown signature', rule([{ index: 0, value: 0, op: 'SCMP_CMP_EQ' }], ['tuxcall']),
      /: syscalls\[1\]\.args: the argument types of "tuxcall" are not known, so comparisons on them cannot be compiled$/],
    ['too many alternatives', rule([0, 1, 2].map((index) => ({ index, value: 7, op: 'SCMP_CMP_NE' }))),
      /: syscalls\[1\]\.args: these comparisons need 1024 rules on narrow arguments \(at most 256\)$/],
  ];
  for (const [what, content, message] of cases) {
    const dir = tempDir(t, 'narrow-bad');
    const file = writeProfile(dir, 'bad', content);
    await t.rejects(readProfile(file).then((p) => compileProfile(p)), { code: 'FAILED_PRECONDITION', message }, what);
  }
});

t.test('masked equalities say exactly what each comparison says, on every value of an 8-bit argument', async (t) => {
  const holds: Record<string, (a: number, v: number, v2: number) => boolean> = {
    SCMP_CMP_EQ: (a, v) => a === v,
    SCMP_CMP_NE: (a, v) => a !== v,
    SCMP_CMP_LT: (a, v) => a < v,
    SCMP_CMP_LE: (a, v) => a <= v,
    SCMP_CMP_GT: (a, v) => a > v,
    SCMP_CMP_GE: (a, v) => a >= v,
    SCMP_CMP_MASKED_EQ: (a, m, d) => (a & m) === d,
  };
  let wrong = 0;
  for (const [op, expected] of Object.entries(holds)) {
    for (let v = 0; v < 256; v++) {
      const datum = op === 'SCMP_CMP_MASKED_EQ' ? v & 0x5a : 0;
      const terms = maskedTerms(op, v, datum, 8);
      for (let a = 0; a < 256; a++) {
        const got = terms.some((term) => (a & term.mask) === term.value);
        if (got !== expected(a, v, datum) && wrong++ < 5) t.fail(`${op} ${v}: a=${a} gives ${got}`);
      }
    }
  }
  t.equal(wrong, 0, 'no disagreement in 7 x 256 x 256 cases');
  t.same(maskedTerms('SCMP_CMP_NE', 40, 0, 32).length, 32, 'NE on 32 bits: one alternative a bit');
  t.same(maskedTerms('SCMP_CMP_LT', 0, 0, 32), [], 'nothing is below 0');
  t.same(maskedTerms('SCMP_CMP_LE', 0xffffffff, 0, 32), [{ mask: 0, value: 0 }], 'everything is at most 0xffffffff');
});

t.test("the argument width table matches the running kernel's syscall signatures", async (t) => {
  const dir = tempDir(t, 'tracefs');
  execFileSync('mount', ['-t', 'tracefs', 'tetrix-seccomp-test', dir]);
  t.teardown(() => execFileSync('umount', [dir]));
  const kernel = kernelArgWidths(dir);
  t.ok(kernel.size > 300, `${kernel.size} syscalls in tracefs`);
  const differ: string[] = [];
  for (const [name, widths] of kernel) {
    // clone's flags are declared unsigned long, but kernel/fork.c reads lower_32_bits(clone_flags).
    const expected = name === 'clone' ? [32, ...widths.slice(1)] : widths;
    if (JSON.stringify(argWidths(name)) !== JSON.stringify(expected)) differ.push(`${name}: kernel ${JSON.stringify(expected)}, table ${JSON.stringify(argWidths(name))}`);
  }
  t.same(differ, [], 'every syscall the kernel traces has the same widths in the table');
  // Why clone is narrowed: with CLONE_INTO_CGROUP's bit (1 << 33) set and no cgroup fd it still forks,
  // while unshare, whose flags are all 64 bits to the kernel, refuses a high bit.
  const noFilter = '-';
  t.equal(rawCall(t, noFilter, 'clone', [(1n << 33n) | 17n /* SIGCHLD */, 0n, 0n, 0n, 0n]), 'ok', 'clone ignores the upper half of its flags');
  t.equal(rawCall(t, noFilter, 'unshare', [1n << 32n]), 'EINVAL', 'unshare reads all 64 bits');
});

t.test('the shipped profiles create sockets of four families only, and netlink only for routes and socket diagnostics', async (t) => {
  const profiles = await SeccompProfiles.load(profilesDir);
  const allowed = new Set([1 /* AF_UNIX */, 2 /* AF_INET */, 10 /* AF_INET6 */, 16 /* AF_NETLINK */]);
  for (const name of profiles.names()) {
    const file = filterFile(t, profiles.filterFor(name));
    const refusedFamilies: number[] = [];
    const refusedPairs: number[] = [];
    for (let family = 0; family < 46; family++) {
      const got = rawCall(t, file, 'socket', [BigInt(family), 2n /* SOCK_DGRAM */, 0n]);
      if (allowed.has(family)) t.equal(got, 'ok', `${name}: socket(${family}, SOCK_DGRAM)`);
      else if (got === 'EPERM') refusedFamilies.push(family);
      else t.fail(`${name}: socket(${family}) is answered by the kernel (${got}), not refused by the filter`);
      const pair = rawCall(t, file, 'socketpair', [BigInt(family), 2n, 0n, 'buf']);
      if (family === 1) t.equal(pair, 'ok', `${name}: socketpair(AF_UNIX)`);
      else if (pair === 'EPERM') refusedPairs.push(family);
      else t.fail(`${name}: socketpair(${family}) is answered by the kernel (${pair})`);
    }
    t.equal(refusedFamilies.length, 42, `${name}: the other 42 families are refused with EPERM (AF_VSOCK among them)`);
    t.equal(refusedPairs.length, 45, `${name}: socketpair only for AF_UNIX`);
    const netlink: Record<string, string> = {};
    for (let protocol = 0; protocol < 32; protocol++) netlink[protocol] = rawCall(t, file, 'socket', [16n, 3n /* SOCK_RAW */, BigInt(protocol)]);
    const expected: Record<string, string> = {};
    for (let protocol = 0; protocol < 32; protocol++) expected[protocol] = 'EPERM';
    expected[0] = 'ok';               // NETLINK_ROUTE: ip, getifaddrs
    expected[4] = 'ok';               // NETLINK_SOCK_DIAG: ss
    expected[9] = 'EPROTONOSUPPORT';  // NETLINK_AUDIT: what a kernel without audit says; sudo carries on
    t.same(netlink, expected, `${name}: netlink protocols`);
  }
});

t.test('Linux AIO answers ENOSYS under every shipped profile (aio-max-nr is one count for the whole host)', async (t) => {
  const profiles = await SeccompProfiles.load(profilesDir);
  for (const name of profiles.names()) {
    t.same(underFilter(t, profiles.filterFor(name), ['io_setup']), { io_setup: 'ENOSYS' }, name);
  }
});

t.test("a workspace that takes all the Linux AIO it can leaves the node's capacity to host root", async (t) => {
  const filter = (await SeccompProfiles.load(profilesDir)).filterFor('');
  const w = await startWorkspace(t, filter, ['/bin/seccomp-probe', '-', 'aio-hog']);
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    native.pidfdSendSignal(w.pidfd, native.constants.SIGKILL);
    await w.exited;
    native.closeFd(w.pidfd);
  };
  t.teardown(stop);
  const end = Date.now() + 60_000;
  let output = '';
  while (!/^aio \d+ \S+$/m.test(output) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
    output = fs.readFileSync(w.outFile, 'utf8');
  }
  t.match(output, /^aio \d+ \S+$/m, 'the workspace tried its hardest and holds what it got');
  // While the workspace still holds whatever it took, host root must be able to set up a context.
  const host = spawnSync(probe(t), ['-', 'probe', 'io_setup'], { encoding: 'utf8' });
  t.equal(host.stdout.trim(), 'io_setup ok', `host root's io_setup (aio-nr ${fs.readFileSync('/proc/sys/fs/aio-nr', 'utf8').trim()} of ${fs.readFileSync('/proc/sys/fs/aio-max-nr', 'utf8').trim()})`);
  t.match(output, /^aio 0 ENOSYS$/m, 'the workspace got no context at all');
  await stop();
});
