// native/exec.c: a process inside a running workspace, in its workload's sandbox; the terminal sessions'
// pty masters parked in the workspace's init across daemon restarts.
import type { NativePart } from './part';

export interface ExecOptions {
  initPidfd: number;         // the workspace's init: its namespaces are joined through this pidfd
  initPid: number;           // its host pid (its rlimits and root are read through /proc, checked by the pidfd)
  argv: string[];            // argv[0] is searched in the session env's PATH
  env: string[];             // KEY=VALUE
  cwd: string;               // resolved inside the workspace root (openat2 RESOLVE_IN_ROOT)
  uid: number;               // inside the workspace's user namespace
  gid: number;
  /** v1: the `tasks` file of each hierarchy; the intermediate writes itself in before setns. */
  cgroupTasks: string[];
  /** v2: the group's directory (CLONE_INTO_CGROUP); '' for none. */
  cgroupDir: string;
  capabilities: number[];    // the workload's bounding set (and root's permitted/effective)
  seccomp?: Buffer;          // the workload's compiled filter
  tty: boolean;              // a pty of the workspace's own devpts: masterFd instead of the pipes
  rows?: number;
  cols?: number;
  /** PR_SET_PDEATHSIG(SIGKILL): the process ends with the daemon (non-terminal exec). */
  dieWithDaemon: boolean;
}

/** The caller owns every fd (close-on-exec). pid is the host pid; the process is the caller's child. */
export interface ExecResult {
  pid: number;
  pidfd: number;
  masterFd?: number;         // tty
  stdinFd?: number;          // not tty: write end
  stdoutFd?: number;         // not tty: read ends
  stderrFd?: number;
}

export interface ParkedSession {
  meta: string;              // what the daemon wrote with it (a JSON record of the session)
  fd: number;                // the pty master, a close-on-exec fd of the caller's
}

export interface ExecNative {
  /** Rejects with a NativeError naming the step (`exec: setns: EPERM`, `execve nosuch: ENOENT`); nothing is
   *  left running then. Off the JS thread. */
  execProcess(opts: ExecOptions): Promise<ExecResult>;
  /** Every master init holds (pidfd_getfd of init's TX_SESSION_PARK_PEER_FD); init holds none afterwards. */
  takeParkedSessions(initPidfd: number): ParkedSession[];
  /** Replaces what init holds with these (sent as references: the caller keeps its fds). */
  parkSessions(initPidfd: number, sessions: ParkedSession[]): void;
  /** A close-on-exec SOCK_SEQPACKET pair for spawn's opts.sessionParkFds. */
  sessionParkPair(): [number, number];
  ptyResize(masterFd: number, rows: number, cols: number): void;
  /** The signal to the session's process group and its leader, while the pidfd says the leader is ours. */
  signalSession(pidfd: number, pid: number, signal: number): void;
  /** Reads a pty master (a dup of it) on the event loop: onData(Buffer) per chunk, onData(null) once at the
   *  end (EIO: no slave left and nothing buffered). libuv's own stream reader loses a master's last output. */
  ptyReadStart(masterFd: number, onData: (chunk: Buffer | null) => void): PtyReader;
  ptyReadPause(reader: PtyReader): void;
  ptyReadResume(reader: PtyReader): void;
  /** Stops reading and closes the dup; no callback after it. */
  ptyReadClose(reader: PtyReader): void;
}

/** An opaque handle of native/exec.c's pty reader. */
export type PtyReader = { readonly __ptyReader: unique symbol };

export const execPart: NativePart<ExecNative> = {
  file: 'native/exec.c',
  functions: { execProcess: true, takeParkedSessions: true, parkSessions: true, sessionParkPair: true, ptyResize: true, signalSession: true,
    ptyReadStart: true, ptyReadPause: true, ptyReadResume: true, ptyReadClose: true },
  constants: ['SESSION_PARK_FD'],
};
