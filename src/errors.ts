// The one error family of the node agent. Lower layers throw these with a code; src/api/errors.ts turns
// the code into a gRPC status, so a failure means the same thing to tetrixctl and to the control plane.

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'PERMISSION_DENIED'
  | 'UNAUTHENTICATED'
  | 'RESOURCE_EXHAUSTED'
  | 'DATA_LOSS'
  | 'UNAVAILABLE'
  | 'ABORTED'
  | 'INTERNAL';

export class DomainError extends Error {
  constructor(readonly code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DomainError';
  }
}

export const invalidArgument = (field: string, why: string): DomainError =>
  new DomainError('INVALID_ARGUMENT', `${field}: ${why}`);
