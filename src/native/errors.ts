// The one error class the addon throws (native/addon.c tx_native_error_at): the step, the errno and, where
// the call was about one, the path.

/** A failure in the addon or in the child before exec: the step, the errno and the path (when there is one;
 *  spawn's child steps carry theirs in the step, "mount /proc"). The message stays "step: CODE". */
export class NativeError extends Error {
  constructor(readonly step: string, readonly errno: number, readonly code: string, readonly path?: string) {
    super(`${step}: ${code}`);
    this.name = 'NativeError';
  }
}

/** The program itself could not be run (missing, not executable, not a program): the caller's to fix, not ours. */
const PROGRAM_FAULTS = new Set(['ENOENT', 'EACCES', 'ENOEXEC', 'ENOTDIR', 'ELOOP', 'ENAMETOOLONG']);

export const isProgramFault = (err: unknown): boolean =>
  err instanceof NativeError && /^execve( |$)/.test(err.step) && PROGRAM_FAULTS.has(err.code);
