// The daemon's side of archive-runner.ts: start the child, hand it the job, stream the object out of (backup)
// or into (restore) it, and turn its last message into a result or a DomainError. `inProcess` runs the
// same pipeline in this process instead (tools and tests that do many small restores).
import { ChildProcess, fork } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { addAbortSignal, PassThrough, Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DomainError, ErrorCode } from '../errors';
import { native } from '../native';
import {
  backupTo, BackupJob, errorMessage, restoreFrom, RestoreJob, RunnerJob, RunnerMessage, streamSink,
} from './archive-runner';

// dist/src/content/archive-runner.js when compiled, the .ts beside this file under a TypeScript loader.
const RUNNER = path.join(__dirname, 'archive-runner' + path.extname(__filename));

/** Compressed bytes the daemon takes from the runner ahead of encryption and storage, so that a slow write
 *  or fsync does not stop the walk at once. */
const BACKUP_READ_AHEAD = 4 << 20;

/**
 * Decrypted bytes the daemon may hold ahead of the runner. Extraction speed swings between small files
 * (the kernel's file creation is the limit) and large ones (decryption and hashing here are): without slack
 * between the two, each waited for the other in turn.
 */
const RESTORE_READ_AHEAD = 4 << 20;

export interface RunnerHooks {
  onTotals?(bytes: number, files: number): void;
  onProgress?(bytes: number, files: number): void;
  onSkip?(path: string, why: string): void;
  signal?: AbortSignal;
  inProcess?: boolean;
}

export interface RunnerStats {
  bytes: number;
  files: number;
}

export interface BackupRun {
  /** The compressed archive. It ends only after the archiver reported success and errors otherwise, so an
   * upload never commits what a failing archiver left half written. */
  object: Readable;
  done: Promise<RunnerStats>;
  kill(): void;
}


function dispatch(hooks: RunnerHooks, msg: RunnerMessage): void {
  if (msg.type === 'progress') hooks.onProgress?.(msg.bytes, msg.files);
  else if (msg.type === 'totals') hooks.onTotals?.(msg.bytes, msg.files);
  else if (msg.type === 'skip') hooks.onSkip?.(msg.path, msg.why);
}

function toError(msg: RunnerMessage | undefined, exit: string): DomainError {
  if (msg?.type === 'error') {
    return msg.code ? new DomainError(msg.code as ErrorCode, msg.message) : new DomainError('INTERNAL', msg.message);
  }
  return new DomainError('INTERNAL', `archive runner ended without a result (${exit})`);
}

// A runner's stdin or stdout pipe holds about one 1 MiB chunk (F_SETPIPE_SZ; 1 MiB is pipe-max-size by default).
const RUNNER_PIPE_BYTES = 1 << 20;

/**
 * A runner child (archive-runner.ts, snapshot-runner.ts) forked with a pipe of RUNNER_PIPE_BYTES as its
 * stdin (`in`) or stdout (`out`), and the daemon's end of it as a stream. Not the socket pair Node would
 * make: the runner reopens a pipe as a blocking description (blockingDescription), so neither side polls
 * on EAGAIN, and a whole chunk fits without a wake-up per 64 KiB.
 */
export function forkRunner(runner: string, io: 'in' | 'out'): { child: ChildProcess; stream: net.Socket } {
  const pipe = native.outputPipe(RUNNER_PIPE_BYTES);
  fs.closeSync(pipe.keepFd);
  const [childEnd, ourEnd] = io === 'in' ? [pipe.readFd, pipe.writeFd] : [pipe.writeFd, pipe.readFd];
  let child: ChildProcess;
  try {
    child = fork(runner, [], {
      stdio: io === 'in' ? [childEnd, 'ignore', 'inherit', 'ipc'] : ['ignore', childEnd, 'inherit', 'ipc'],
      serialization: 'advanced',
      execArgv: process.execArgv.filter((a) => !a.startsWith('--inspect')),
    });
  } catch (err) {
    fs.closeSync(ourEnd);
    throw err;
  } finally {
    fs.closeSync(childEnd);
  }
  return { child, stream: new net.Socket({ fd: ourEnd, readable: io === 'out', writable: io === 'in' }) };
}

function startChild(job: RunnerJob, hooks: RunnerHooks): { child: ChildProcess; stream: net.Socket; result: Promise<RunnerStats> } {
  const { child, stream } = forkRunner(RUNNER, job.op === 'backup' ? 'out' : 'in');
  const result = new Promise<RunnerStats>((resolve, reject) => {
    let last: RunnerMessage | undefined;
    child.on('message', (msg: RunnerMessage) => {
      if (msg.type === 'done' || msg.type === 'error') last = msg;
      else dispatch(hooks, msg);
    });
    // A child that dies early makes writes to it fail (EPIPE); its exit says more, so only a failed spawn
    // rejects here.
    child.on('error', (err) => { if (child.pid === undefined) reject(err); });
    child.on('exit', (code, signal) => {
      if (last?.type === 'done') return resolve({ bytes: last.bytes, files: last.files });
      if (hooks.signal?.aborted) return reject(new DomainError('ABORTED', 'cancelled'));
      reject(toError(last, `code ${code}, signal ${signal}`));
    });
  });
  result.catch(() => undefined); // observed by the caller; avoid an unhandled rejection meanwhile
  const onAbort = () => child.kill('SIGKILL');
  hooks.signal?.addEventListener('abort', onAbort, { once: true });
  child.once('exit', () => hooks.signal?.removeEventListener('abort', onAbort));
  if (hooks.signal?.aborted) onAbort();
  child.send(job);
  return { child, stream, result };
}

function gate(source: Readable, result: Promise<RunnerStats>): Readable {
  const object = new Transform({
    highWaterMark: BACKUP_READ_AHEAD,
    transform: (chunk, _enc, cb) => cb(null, chunk),
    flush: (cb) => { result.then(() => cb(), (err) => cb(err)); },
  });
  source.on('error', (err) => object.destroy(err));
  source.pipe(object);
  result.catch((err) => object.destroy(err));
  return object;
}

export function runBackup(job: BackupJob, hooks: RunnerHooks): BackupRun {
  if (hooks.inProcess) {
    const out = new PassThrough();
    if (hooks.signal) addAbortSignal(hooks.signal, out);
    const result = backupTo(streamSink(out), job, (m) => dispatch(hooks, m)).catch((err) => { throw toError(errorMessage(err), ''); });
    result.catch(() => undefined);
    const object = gate(out, result);
    return { object, done: result, kill: () => out.destroy(new DomainError('ABORTED', 'cancelled')) };
  }
  const { child, stream, result } = startChild(job, hooks);
  return { object: gate(stream, result), done: result, kill: () => child.kill('SIGKILL') };
}

/**
 * Streams `object` (the decrypted, still compressed archive) into the extractor. Resolves once every entry
 * was extracted and `object` ended without error; an error of `object` (e.g. DATA_LOSS from decryption)
 * wins over whatever the extractor said.
 */
export async function runRestore(job: RestoreJob, object: Readable, hooks: RunnerHooks): Promise<RunnerStats> {
  if (hooks.inProcess) {
    if (hooks.signal) addAbortSignal(hooks.signal, object);
    return restoreFrom(object, job, (m) => dispatch(hooks, m)).catch((err) => { throw toError(errorMessage(err), ''); });
  }
  const { child, stream: stdin, result } = startChild(job, hooks);
  // An error of `object` itself (DATA_LOSS from decryption) wins. One that pipeline() passes back after the
  // child's stdin broke or closed (EPIPE, premature close: the child ended early) does not: the child's own
  // report says why.
  let inputError: Error | undefined;
  let stdinGone = false;
  const gone = () => { stdinGone = true; };
  stdin.once('error', gone).once('close', gone);
  child.once('exit', gone);
  object.once('error', (err) => { if (!stdinGone) inputError = err; });
  const feeding = pipeline(object, new PassThrough({ highWaterMark: RESTORE_READ_AHEAD }), stdin).catch((err: NodeJS.ErrnoException) => {
    if (inputError) child.kill('SIGKILL');
    return err;
  });
  const [, stats] = await Promise.allSettled([feeding, result]);
  if (inputError) throw inputError;
  if (stats.status === 'rejected') throw stats.reason;
  return stats.value;
}
