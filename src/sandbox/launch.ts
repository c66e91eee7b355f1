// The sandbox's one launch surface: a workspace's init is spawned (optionally held at its gate),
// signalled, released, killed and reaped, or adopted after a daemon restart, all behind `Launched`.
// The lifecycle drives this and never holds a pidfd; exec sessions use the same surface (exec, and the
// parked terminal masters), so an exec gets the workload's capabilities, seccomp filter and cgroup from here.
import fs from 'node:fs';
import type { CgroupPlacement } from './cgroups';
import type { BindMount, ExecResult, HeldWorkload, NativeAddon, ParkedSession } from '../native';
import { NativeError } from '../native';
import { readPidStartTime, signalName } from './proc';
import { resolveUser } from './user';
import { workspaceLayout } from '../layout';

export interface LaunchSpec {
  workspaceId: string;        // also the hostname, and the cgroup the child is placed in
  wsDir: string;              // init's exit-status file goes here (native/init.c)
  rootfs: string;
  argv: string[];             // empty for a prebuild: init then serves the task channel
  env: Record<string, string>;
  cwd: string;
  uidBase: number;
  seccompProfile: string;
  mounts: BindMount[];
  output: { stdoutFd: number; stderrFd: number; outputReadFds?: [number, number]; tasksFd?: number };
  /** NAME[:GROUP] or UID[:GID], resolved in the rootfs (src/sandbox/user.ts); '' = root. */
  user?: string;
  /** Hold the workload at init's gate until release(): nothing of it runs before (an ISOLATED veth). */
  holdAtGate: boolean;
  /** The bounding set, when not the workspace default: a helper such as the source fetch keeps none. */
  capabilities?: number[];
}

/** How a process ended, as waitid reports it; reaped is false for one that is not our child (adopted). */
export interface ProcessExit {
  exitCode: number | null;
  signal: string | null;
  reaped: boolean;
}

export type WorkloadSignal = 'SIGTERM' | 'SIGKILL';

/** A process to run inside the running workspace, in its workload's sandbox (native/exec.c). */
export interface ExecSpec {
  workspaceId: string;        // its cgroup
  seccompProfile: string;     // the workspace's profile: the workload's filter
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  uid: number;
  gid: number;
  tty?: { rows: number; cols: number };
  /** Ends with the daemon (PR_SET_PDEATHSIG): what no one could re-attach to after a restart. */
  dieWithDaemon: boolean;
}

export interface Launched {
  readonly pid: number;
  /** /proc/<pid>/stat field 22: with pid it names this process for the life of the boot. */
  readonly startTime: string;
  /** Resolves once, when the process ended (and was reaped, if it was our child). */
  readonly exited: Promise<ProcessExit>;
  /** A no-op once the process ended; ESRCH is not an error. */
  signal(sig: WorkloadSignal): void;
  /** Opens the gate of a held launch; resolves once the workload exec'd. A no-op when not held. */
  release(): Promise<void>;
  /** Gives up on it: the gate is closed unopened (init exits 125), it is SIGKILLed and reaped. */
  kill(): Promise<void>;
  /** After a restart: init's second read ends of the output pipes (pidfd_getfd), the caller's to close. */
  takeOutputPipes(): [number, number];
  /** A process in this workspace's namespaces, cgroup and confinement; the caller owns every fd of it. */
  exec(spec: ExecSpec): Promise<ExecResult>;
  /** Terminal masters init holds for the next daemon (native/exec.c): replaced by these. */
  parkSessions(sessions: ParkedSession[]): void;
  /** After a restart: the masters init held; it holds none afterwards. */
  takeParkedSessions(): ParkedSession[];
}

/** What init (native/init.c) left in the exit-status file: one line, "exited N" or "signaled N". */
export interface InitExitRecord {
  exitCode?: number;
  signal?: string;
}

export interface LauncherOptions {
  native: NativeAddon;
  initPath: string;
  capabilities: number[];
  ptyLimit: number;
  seccompFilter(profile: string): Buffer | undefined;
  placementOf(workspaceId: string): CgroupPlacement;
}

const SIGNALS: Record<WorkloadSignal, number> = { SIGTERM: 15, SIGKILL: 9 };
const ID_COUNT = 65536;

/**
 * A workload that runs as a user other than root gets /workspace's top directory, as Gitpod's images expect
 * (their user owns /workspace): only while it still belongs to the workspace's root, so a restored tree
 * keeps the owner it had. lchown: the daemon made this directory; it is not followed if it were a link.
 */
function giveWorkspaceDir(spec: LaunchSpec, user: { uid: number; gid: number }): void {
  const content = spec.mounts.find((m) => m.target === '/workspace');
  if (!content || (user.uid === 0 && user.gid === 0)) return;
  const st = fs.lstatSync(content.source);
  if (st.isDirectory() && st.uid === spec.uidBase && st.gid === spec.uidBase) fs.lchownSync(content.source, spec.uidBase + user.uid, spec.uidBase + user.gid);
}

export class Launcher {
  constructor(private readonly o: LauncherOptions) {}

  async launch(spec: LaunchSpec): Promise<Launched> {
    const seccomp = this.o.seccompFilter(spec.seccompProfile);
    const user = spec.user ? await resolveUser(spec.rootfs, spec.user, ID_COUNT) : undefined;
    const env = user?.home && spec.env.HOME === undefined ? { ...spec.env, HOME: user.home } : spec.env;
    if (user) giveWorkspaceDir(spec, user);
    const statusFd = fs.openSync(workspaceLayout(spec.wsDir).exitStatus, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
    const parkFds = this.o.native.sessionParkPair();
    try {
      const { output } = spec;
      const result = await this.o.native.spawn({
        rootfs: spec.rootfs,
        initPath: this.o.initPath,
        argv: spec.argv,
        env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
        ...(user ? { workloadUser: { uid: user.uid, gid: user.gid, groups: user.groups } } : {}),
        cwd: spec.cwd,
        hostname: spec.workspaceId,
        uidBase: spec.uidBase,
        gidBase: spec.uidBase,
        idCount: ID_COUNT,
        ...this.o.placementOf(spec.workspaceId),
        stdoutFd: output.stdoutFd,
        stderrFd: output.stderrFd,
        ...(output.outputReadFds ? { outputReadFds: output.outputReadFds } : {}),
        sessionParkFds: parkFds,
        statusFd,
        ...(output.tasksFd !== undefined ? { tasksFd: output.tasksFd } : {}),
        mounts: spec.mounts,
        ptyLimit: this.o.ptyLimit,
        capabilities: spec.capabilities ?? this.o.capabilities,
        ...(seccomp ? { seccomp } : {}),
        holdWorkload: spec.holdAtGate,
      });
      return this.track(result.pidfd, result.pid, readPidStartTime(result.pid), result.held);
    } finally {
      fs.closeSync(statusFd);
      for (const fd of parkFds) this.o.native.closeFd(fd);
    }
  }

  /** The process still running as pid, if it is the one started at startTime (not a recycled pid). */
  adopt(pid: number, startTime: string): Launched | undefined {
    let pidfd: number;
    try {
      pidfd = this.o.native.pidfdOpen(pid);
    } catch {
      return undefined;
    }
    if (startTime !== '' && readPidStartTime(pid) === startTime) return this.track(pidfd, pid, startTime, undefined);
    this.o.native.closeFd(pidfd);
    return undefined;
  }

  private track(pidfd: number, pid: number, startTime: string, held: HeldWorkload | undefined): Launched {
    const { native } = this.o;
    let open = true;
    let gate = held;
    const exited = new Promise<ProcessExit>((resolve) => {
      // watchExit watches its own dup: ours is closed as soon as the exit is seen.
      native.watchExit(pidfd, (status) => {
        open = false;
        native.closeFd(pidfd);
        resolve(status);
      });
    });
    const signal = (sig: WorkloadSignal): void => {
      if (!open) return;
      try {
        native.pidfdSendSignal(pidfd, SIGNALS[sig]);
      } catch (err) {
        if (!(err instanceof NativeError && err.code === 'ESRCH')) throw err;
      }
    };
    return {
      pid,
      startTime,
      exited,
      signal,
      release: async () => {
        if (!gate) return;
        const fds = gate;
        gate = undefined; // releaseWorkload takes both fds, whatever its outcome
        await native.releaseWorkload(fds);
      },
      kill: async () => {
        // Closed without a byte, the gate makes init exit (125) before any workload ran.
        if (gate) for (const fd of [gate.gateFd, gate.reportFd]) native.closeFd(fd);
        gate = undefined;
        signal('SIGKILL');
        await exited;
      },
      exec: async (spec) => {
        if (!open) throw new NativeError('exec: workspace init', 3, 'ESRCH');
        const seccomp = this.o.seccompFilter(spec.seccompProfile);
        return native.execProcess({
          initPidfd: pidfd,
          initPid: pid,
          argv: spec.argv,
          env: Object.entries(spec.env).map(([k, v]) => `${k}=${v}`),
          cwd: spec.cwd,
          uid: spec.uid,
          gid: spec.gid,
          ...this.o.placementOf(spec.workspaceId),
          capabilities: this.o.capabilities,
          ...(seccomp ? { seccomp } : {}),
          tty: spec.tty !== undefined,
          ...(spec.tty ?? {}),
          dieWithDaemon: spec.dieWithDaemon,
        });
      },
      parkSessions: (sessions) => {
        if (open) native.parkSessions(pidfd, sessions);
      },
      takeParkedSessions: () => (open ? native.takeParkedSessions(pidfd) : []),
      takeOutputPipes: () => {
        const { STDOUT_READ_FD, STDERR_READ_FD } = native.constants;
        const stdout = native.takeOutputPipe(pidfd, STDOUT_READ_FD);
        try {
          return [stdout, native.takeOutputPipe(pidfd, STDERR_READ_FD)];
        } catch (err) {
          native.closeFd(stdout);
          throw err;
        }
      },
    };
  }
}

/** What init recorded of the workload's end; {} when it wrote nothing (it died first) or garbage. */
export function readInitExitRecord(wsDir: string): InitExitRecord {
  let text: string;
  try {
    text = fs.readFileSync(workspaceLayout(wsDir).exitStatus, 'utf8');
  } catch {
    return {};
  }
  const m = /^(exited|signaled) (\d{1,3})\n?$/.exec(text);
  if (!m) return {};
  return m[1] === 'exited' ? { exitCode: Number(m[2]) } : { signal: signalName(Number(m[2])) };
}
