// native/spawn.c: clone the workspace into its namespaces and exec tetrix-init as its PID 1.
import type { NativePart } from './part';

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
  /** Both ends of the session park pair (exec's sessionParkPair): init holds them at constants.SESSION_PARK_FD
   *  and the next fd, never reads them, and the workload never sees them (native/exec.c parkSessions). */
  sessionParkFds?: [number, number];
  mounts: BindMount[];       // targets must exist in the rootfs
  /** Most ptys the workspace may hold at once: max= of its own devpts instance (1..1048576). */
  ptyLimit: number;
  /** Capability numbers kept in the bounding set (see linux/capability.h). Required: the one default set is
   *  src/sandbox/capabilities.ts's DEFAULT_CAPABILITIES; the addon has none of its own. */
  capabilities: number[];
  /** A compiled seccomp filter: raw `struct sock_filter[]` (8 bytes each), installed right before execve. */
  seccomp?: Buffer;
  /** Hold the workload at a gate: spawn resolves once init runs and waits before forking it, with
   *  `held` set, so the caller can set up the network (or anything per pid) before the workload's first
   *  instruction. Then either `releaseWorkload(held)`, or abandon: SIGKILL the pidfd (or not), `closeFd`
   *  both held fds, and reap with `watchExit`. Init exits `constants.INIT_EXIT_ABANDONED` (125) with an
   *  empty status fd when the gate closes without release. Default false: resolve after the workload's exec. */
  holdWorkload?: boolean;
  /** Ids inside the namespace the workload (and each task) runs as; init switches in the child
   *  (native/init.c --user). Absent: the namespace's root. */
  workloadUser?: { uid: number; gid: number; groups?: number[] };
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

export interface SpawnNative {
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
}

export const spawnPart: NativePart<SpawnNative> = {
  file: 'native/spawn.c',
  functions: { spawn: true, releaseWorkload: true },
  constants: ['INIT_EXIT_ABANDONED'],
};
