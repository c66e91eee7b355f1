// The one typed door to the C addon (native/). Everything the kernel does for us through C is
// declared here; nothing else in src/ loads the .node file.
import path from 'node:path';

/** A mount the child performs inside its own mount namespace, before pivot_root. */
export interface BindMount {
  source: string;   // host path
  target: string;   // path inside the rootfs, resolved within it (never outside)
  readonly: boolean;
}

export interface SpawnOptions {
  /** Host path of the root filesystem the child pivots into. It must hold directories /proc, /dev and /sys,
   *  and be traversable by the mapped uid (mode 0755 on the path). /.tetrix/init is created if missing. */
  rootfs: string;
  initPath: string;          // host path of the static tetrix-init, bound read-only at /.tetrix/init, exec'd as PID 1
  argv: string[];            // the workload, run by init
  env: string[];             // KEY=VALUE
  cwd: string;               // inside the rootfs
  hostname: string;
  uidBase: number;           // container 0..idCount-1 -> host uidBase..
  gidBase: number;
  idCount: number;
  /** v1: the `tasks` file of each hierarchy; the child writes itself in (see native/spawn.c join_cgroups). */
  cgroupTasks: string[];
  /** v2: the group's directory, which the child is cloned into (CLONE_INTO_CGROUP); '' for none. */
  cgroupDir: string;
  stdoutFd: number;          // host fds dup'ed onto the workload's 1 and 2; stdin is /dev/null
  stderrFd: number;
  statusFd: number;          // host fd init keeps to record the workload's exit status (see native/init.c)
  /** Second read ends of the stdout and stderr pipes (outputPipe's keepFd): init holds them at
   *  constants.STDOUT_READ_FD / STDERR_READ_FD, never reads them, and the workload never sees them. */
  outputReadFds?: [number, number];
  mounts: BindMount[];       // targets must exist in the rootfs
  /** Most ptys the workspace may hold at once: max= of its own devpts instance (1..1048576). */
  ptyLimit: number;
  /** Capability numbers kept in the bounding set (see linux/capability.h). Default: Docker's default set. */
  capabilities?: number[];
  /** A compiled seccomp filter: raw `struct sock_filter[]` (8 bytes each), installed right before execve. */
  seccomp?: Buffer;
  /** Hold the workload at a gate: spawn resolves once init runs and waits before forking it, with
   *  `held` set, so the caller can set up the network (or anything per pid) before the workload's first
   *  instruction. Then either `releaseWorkload(held)`, or abandon: SIGKILL the pidfd (or not), `closeFd`
   *  both held fds, and reap with `watchExit`. Init exits `constants.INIT_EXIT_ABANDONED` (125) with an
   *  empty status fd when the gate closes without release. Default false: resolve after the workload's exec. */
  holdWorkload?: boolean;
  /** A prebuild: init's end of the task channel (a unix socket). init then runs `--tasks` with it as fd 6
   *  and runs the tasks the daemon hands it (native/init.c run_tasks); argv must be empty. */
  tasksFd?: number;
}

/** The caller's ends of a held workspace's pipes (native/spawn-protocol.h). Both close-on-exec and owned
 *  by the caller until handed to releaseWorkload. */
export interface HeldWorkload {
  gateFd: number;            // write end of init's gate: one byte releases the workload, EOF abandons it
  reportFd: number;          // read end of the spawn report pipe: EOF once the workload exec'd
}

export interface SpawnResult {
  pid: number;               // host pid of init
  pidfd: number;             // a pidfd for it, owned by the caller (close with closeFd)
  /** How /sys was mounted: its own read-only sysfs, or (if the kernel refused) the host's bound read-only. */
  sysfs: 'sysfs' | 'bind';
  /** Only with holdWorkload: the workload has not been forked yet. */
  held?: HeldWorkload;
}

export type HeldSpawnResult = SpawnResult & { held: HeldWorkload };

/** How a process ended, as waitid reports it. */
export interface ExitStatus {
  exitCode: number | null;
  signal: string | null;     // e.g. SIGKILL
  reaped: boolean;           // false when the process was not our child (adopted): status unknown here
}

export interface NativeAddon {
  /** Clones the workspace and resolves once init has exec'd the workload. Rejects with a NativeError naming
   *  the step (`pivot_root: EINVAL`, `mount /proc: ENOENT`, `execve: ENOENT`); the child is then reaped.
   *  With holdWorkload it resolves once init waits at the gate, with `held`; nothing of the workload ran. */
  spawn(opts: SpawnOptions & { holdWorkload: true }): Promise<HeldSpawnResult>;
  spawn(opts: SpawnOptions): Promise<SpawnResult>;
  /** Opens the gate of a held spawn and resolves once the workload exec'd, or rejects as spawn would
   *  (`execve: ENOENT`; `release workload: EPIPE` when init is already gone). Off the JS thread. Takes both
   *  fds and closes them either way (a TypeError for a bad argument leaves them to the caller). On a
   *  rejection init is ending or gone but not reaped: the caller still owns the pidfd and reaps it with
   *  watchExit, as for any exit. */
  releaseWorkload(held: HeldWorkload): Promise<void>;
  /** Calls back once when the process behind pidfd exits, without blocking the loop. It watches its own dup
   *  of the pidfd (so the caller may close theirs at any time; the shared description becomes O_NONBLOCK).
   *  Reaps through waitid(P_PIDFD); reaped is false for a process that is not our child (or already reaped).
   *  Throws NativeError(`watchExit`, EBADF/EINVAL) for an fd that is not a pidfd. */
  watchExit(pidfd: number, onExit: (status: ExitStatus) => void): void;
  pidfdOpen(pid: number): number;   // throws NativeError(ESRCH) when it is gone
  pidfdSendSignal(pidfd: number, signal: number): void;
  closeFd(fd: number): void;
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  umount(target: string, flags: number): void;
  /** mkdir (existing is fine), chown, chmod for each, in order, on a worker thread. NativeError names the
   *  call and the path ("mkdir /x/y"). */
  makeDirs(dirs: Array<{ path: string; mode: number; uid: number; gid: number }>): Promise<void>;
  /** mount(2) on a worker thread, so a slow mount (an overlay on a busy node) never stalls the event loop. */
  mountAsync(source: string, target: string, fstype: string, flags: number, data: string): Promise<void>;
  /** umount2 on a worker thread: a detach waits for an RCU grace period in the kernel. */
  umountAsync(target: string, flags: number): Promise<void>;
  /** statx's STATX_ATTR_MOUNT_ROOT; a symlink is not followed. NativeError ENOENT, or ENOTSUP before Linux 5.8. */
  isMountPoint(path: string): boolean;
  /** Attaches at target (an existing directory) a read-only, nodev, nosuid, recursive bind of source in which
   *  on-disk ids 0..count-1 read as uidBase.. / gidBase.. (MOUNT_ATTR_IDMAP; others read as 65534), on a
   *  worker thread. Rejects with NativeError naming the step: `idmap open_tree: ENOENT`,
   *  `idmap mount_setattr: EINVAL` (a filesystem without idmapped mounts), `idmap clone`, `idmap uid_map`,
   *  `idmap move_mount`...; nothing stays attached or open then. Bad arguments throw TypeError at once. */
  idmapMount(source: string, target: string, uidBase: number, gidBase: number, count: number): Promise<void>;
  mkfifo(path: string, mode: number): void;
  /** A connected pair of AF_UNIX stream sockets, both close-on-exec. */
  socketPair(): [number, number];
  /** pipe2(O_CLOEXEC): [read end, write end]. */
  pipe(): [number, number];
  /** All of data on a stream socket, fds attached to its first byte (SCM_RIGHTS); the fds stay the caller's.
   *  NativeError `sendmsg` (EPIPE: the peer is gone; ETIMEDOUT: it stopped reading). */
  sendWithFds(socketFd: number, data: Buffer, fds: number[]): void;
  /** An anonymous pipe for a workload's stdout or stderr (native/output.c), capacity set with F_SETPIPE_SZ
   *  (0 = the kernel's default). keepFd is a second read end, for spawn's outputReadFds. All close-on-exec.
   *  Throws NativeError (`output pipe: F_SETPIPE_SZ`, EPERM/EINVAL...). */
  outputPipe(capacity: number): { readFd: number; writeFd: number; keepFd: number };
  /** pidfd_getfd(2) of init's fd (constants.STDOUT_READ_FD...): the output pipe a running workspace
   *  writes to, after a daemon restart. Throws NativeError `take output pipe: pidfd_getfd fd 6` (ESRCH, EBADF)
   *  or `take output pipe: fd 6 is not a pipe` (EBADF): nothing but an anonymous pipe is ever read. */
  takeOutputPipe(pidfd: number, fd: number): number;
  /** sd_notify(3): false when NOTIFY_SOCKET is unset. */
  sdNotify(state: string): boolean;
  /** The pid serving the unix stream socket at path (SO_PEERCRED), 0 when nothing answers (ENOENT, ECONNREFUSED). */
  unixSocketPeerPid(path: string): number;
  constants: Record<string, number>;   // MS_*, MNT_*, signals
}

/** A failure in the addon or in the child before exec: the step and the errno. */
export class NativeError extends Error {
  constructor(readonly step: string, readonly errno: number, readonly code: string) {
    super(`${step}: ${code}`);
    this.name = 'NativeError';
  }
}

// Built beside the sources: dist/src/sandbox -> ../../../native (compiled), src/sandbox -> ../../native (tests).
function builtFile(name: string): string {
  const fs = require('node:fs') as typeof import('node:fs');
  const compiled = path.join(__dirname, '..', '..', '..', 'native', 'build', 'Release', name);
  return fs.existsSync(compiled) ? compiled : path.join(__dirname, '..', '..', 'native', 'build', 'Release', name);
}

function loadAddon(): NativeAddon {
  // No catch-and-retry: a dlopen failure (say, an undefined symbol) must surface as itself.
  const mod = require(builtFile('tetrix.node')) as { init(errorClass: typeof NativeError): NativeAddon };
  return mod.init(NativeError);
}

export const native: NativeAddon = loadAddon();

/** Host path of the static init built beside the addon. */
export const initBinaryPath: string = builtFile('tetrix-init');
