// native/output.c: a workload's stdout and stderr pipes.
import type { NativePart } from './part';

export interface OutputNative {
  /** An anonymous pipe for a workload's stdout or stderr (native/output.c), capacity set with F_SETPIPE_SZ
   *  (0 = the kernel's default). keepFd is a second read end, for spawn's outputReadFds. All close-on-exec.
   *  Throws NativeError (`output pipe: F_SETPIPE_SZ`, EPERM/EINVAL...). */
  outputPipe(capacity: number): { readFd: number; writeFd: number; keepFd: number };
  /** pidfd_getfd(2) of init's fd (constants.STDOUT_READ_FD...): the output pipe a running workspace
   *  writes to, after a daemon restart. Throws NativeError `take output pipe: pidfd_getfd fd 6` (ESRCH, EBADF)
   *  or `take output pipe: fd 6 is not a pipe` (EBADF): nothing but an anonymous pipe is ever read. */
  takeOutputPipe(pidfd: number, fd: number): number;
}

export const outputPart: NativePart<OutputNative> = {
  file: 'native/output.c',
  functions: { outputPipe: true, takeOutputPipe: true },
  constants: ['STDOUT_READ_FD', 'STDERR_READ_FD'],
};
