// The one error class the addon throws (native/addon.c tx_native_error): the step and the errno.

/** A failure in the addon or in the child before exec: the step and the errno. */
export class NativeError extends Error {
  constructor(readonly step: string, readonly errno: number, readonly code: string) {
    super(`${step}: ${code}`);
    this.name = 'NativeError';
  }
}
