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
