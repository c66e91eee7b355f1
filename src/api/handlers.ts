// A thin nice-grpc-style adapter over @grpc/grpc-js: handlers are plain async functions that get the
// request and an AbortSignal; the adapter turns their result or error into the call's outcome.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { callerOf, type Principal } from './auth';
import { DomainError } from '../errors';
import { toServiceError } from './errors';

export interface CallContext {
  signal: AbortSignal;
  metadata: grpc.Metadata;
  peer: string;
  principal: Principal | undefined;   // resolved by the port's auth interceptor (auth.ts)
}

function contextOf(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): CallContext {
  // Made on first use: most unary handlers never look, and a burst of calls arrives in one turn.
  let controller: AbortController | undefined;
  call.on('cancelled', () => controller?.abort());
  return {
    get signal(): AbortSignal {
      if (!controller) {
        controller = new AbortController();
        if (call.cancelled) controller.abort();
      }
      return controller.signal;
    },
    metadata: call.metadata,
    peer: call.getPeer(),
    principal: callerOf(call),
  };
}

/**
 * What a method's request decoder hands over for bytes protobuf rejects (server.ts wraps the decoders):
 * grpc-js itself would answer INTERNAL, but bad bytes from a client are its INVALID_ARGUMENT.
 */
export class UndecodableRequest {
  constructor(private readonly reason: string) {}

  error(method: string): DomainError {
    return new DomainError('INVALID_ARGUMENT', `request: not a valid ${method} request (${this.reason})`);
  }
}

function run<Req, Ctx, R>(method: string, request: Req, ctx: Ctx, handler: (req: Req, ctx: Ctx) => Promise<R>): Promise<R> {
  return request instanceof UndecodableRequest ? Promise.reject(request.error(method)) : handler(request, ctx);
}

export function unary<Req, Res>(log: Logger, method: string, handler: (req: Req, ctx: CallContext) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    run(method, call.request, contextOf(call), handler).then(
      (res) => callback(null, res),
      (err: unknown) => callback(toServiceError(err, log, method)),
    );
  };
}

export function serverStream<Req, Res>(
  log: Logger,
  method: string,
  handler: (req: Req, ctx: CallContext, send: (res: Res) => Promise<void>) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    const ctx = contextOf(call);
    // Respect flow control: a slow client slows the producer instead of growing our memory.
    const send = (res: Res): Promise<void> =>
      new Promise((resolve) => {
        if (ctx.signal.aborted || call.write(res)) return resolve();
        const settle = (): void => {
          call.off('drain', settle);
          ctx.signal.removeEventListener('abort', settle);
          resolve();
        };
        call.once('drain', settle);
        ctx.signal.addEventListener('abort', settle);
      });
    run(method, call.request, ctx, (req: Req, c: CallContext) => handler(req, c, send)).then(
      () => call.end(),
      (err: unknown) => {
        if (!ctx.signal.aborted) call.emit('error', toServiceError(err, log, method));
      },
    );
  };
}
