// The one place where a failure becomes a gRPC status. Domain errors keep their code and message;
// anything unexpected is logged here and reaches the client as UNKNOWN with no detail (no stack,
// no secret, no path of ours).
import { status, type ServiceError, Metadata } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { DomainError, type ErrorCode } from '../errors';
import { NativeError, isProgramFault } from '../native';

const statusOf: Record<ErrorCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  PERMISSION_DENIED: status.PERMISSION_DENIED,
  UNAUTHENTICATED: status.UNAUTHENTICATED,
  RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  DATA_LOSS: status.DATA_LOSS,
  UNAVAILABLE: status.UNAVAILABLE,
  ABORTED: status.ABORTED,
  INTERNAL: status.INTERNAL,
};

export function toServiceError(err: unknown, log: Logger, method: string): Partial<ServiceError> {
  if (err instanceof DomainError) {
    return { code: statusOf[err.code], details: err.message, metadata: new Metadata() };
  }
  // A kernel call that failed outside the start path (which wraps its own): the step and errno, no stack.
  if (err instanceof NativeError) {
    const where = err.path === undefined ? err.step : `${err.step} ${err.path}`;
    // A program that cannot run is the request's fault (exec's argv): named, and not logged as ours.
    if (isProgramFault(err)) return { code: status.FAILED_PRECONDITION, details: `argv[0]: ${where}: ${err.code}`, metadata: new Metadata() };
    log.error({ method, step: err.step, path: err.path, errno: err.errno }, 'native call failed');
    return { code: status.INTERNAL, details: `${where}: ${err.code} (errno ${err.errno})`, metadata: new Metadata() };
  }
  log.error({ method, err: err instanceof Error ? { message: err.message, stack: err.stack } : String(err) }, 'unexpected error');
  return { code: status.UNKNOWN, details: 'internal error', metadata: new Metadata() };
}
