// native/exit.c: pidfds, signals through them, and reaping off the event loop.
import type { NativePart } from './part';

/** How a process ended, as waitid reports it. */
export interface ExitStatus {
  exitCode: number | null;
  signal: string | null;     // e.g. SIGKILL
  reaped: boolean;           // false when the process was not our child (adopted): status unknown here
}

export interface ExitNative {
  /** Calls back once when the process behind pidfd exits, without blocking the loop. It watches its own dup
   *  of the pidfd (so the caller may close theirs at any time; the shared description becomes O_NONBLOCK).
   *  Reaps through waitid(P_PIDFD); reaped is false for a process that is not our child (or already reaped).
   *  Throws NativeError(`watchExit`, EBADF/EINVAL) for an fd that is not a pidfd. */
  watchExit(pidfd: number, onExit: (status: ExitStatus) => void): void;
  pidfdOpen(pid: number): number;   // throws NativeError(ESRCH) when it is gone
  pidfdSendSignal(pidfd: number, signal: number): void;
  closeFd(fd: number): void;
}

export const exitPart: NativePart<ExitNative> = {
  file: 'native/exit.c',
  functions: { watchExit: true, pidfdOpen: true, pidfdSendSignal: true, closeFd: true },
};
