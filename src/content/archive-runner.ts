// The child process that does the file system half of a backup or restore: walking, archiving and zstd one
// way; zstd and extraction the other. It runs outside the daemon so the daemon's event loop never waits on
// file system calls, its memory does not grow with the tree, and the two halves run on separate cores.
// Encryption stays in the daemon: keys never enter this process, and nothing extracted here is moved into
// place before the daemon verified the last segment (backups.ts).
//
// Protocol (see runner-client.ts): the parent sends one RunnerJob over the IPC channel. Backup: the
// compressed archive goes to stdout. Restore: the compressed archive (already decrypted) comes on stdin.
// The child reports {type:'progress'} increments and ends with {type:'done'} or {type:'error'}.
// Nothing else is written to stdout.
import fs from 'node:fs';
import { DomainError } from '../errors';
import { ArchiveRoot, measureTrees, TreeExtraction } from './archive';
import { ZstdFrameReader, ZstdFrameWriter } from './compress';
import { TreeWalk } from './tree-walk';

export interface BackupJob {
  op: 'backup';
  roots: ArchiveRoot[];
  uidBase: number;
  idCount?: number;
  /** What an entry changing during the walk means (tree-walk.ts): 'fail' unless the tree is live. */
  changes?: 'fail' | 'skip';
}

export interface RestoreJob {
  op: 'restore';
  roots: Record<string, string | null>;
  uidBase: number;
  idCount?: number;
  /** The input is the tar itself, not zstd of it (a snapshot's chunks arrive decompressed: repo/). */
  plain?: boolean;
}

export type RunnerJob = BackupJob | RestoreJob;

export type RunnerMessage =
  | { type: 'totals'; bytes: number; files: number }
  | { type: 'progress'; bytes: number; files: number }
  | { type: 'skip'; path: string; why: string }
  | { type: 'done'; bytes: number; files: number }
  | { type: 'error'; code?: string; message: string };

const PROGRESS_EVERY_MS = 100;

type Report = (msg: RunnerMessage) => void;

class ProgressBatch {
  bytes = 0;
  files = 0;
  totalBytes = 0;
  totalFiles = 0;
  readonly #timer = setInterval(() => this.send(), PROGRESS_EVERY_MS);

  constructor(readonly report: Report) {}

  add(bytes: number, files = 1): void {
    this.bytes += bytes;
    this.files += files;
    this.totalBytes += bytes;
    this.totalFiles += files;
  }

  send(): void {
    if (this.files === 0) return;
    this.report({ type: 'progress', bytes: this.bytes, files: this.files });
    this.bytes = 0;
    this.files = 0;
  }

  stop(): { bytes: number; files: number } {
    clearInterval(this.#timer);
    this.send();
    return { bytes: this.totalBytes, files: this.totalFiles };
  }
}

/** Where backupTo puts the compressed archive. `write` must take the bytes before it returns (they are reused). */
export interface ArchiveSink {
  write(bytes: Buffer): void;
  /** Resolves when the consumer can take more; undefined when it can now. */
  ready(): Promise<void> | undefined;
  end(): Promise<void>;
}

const WALK_CHUNK = 1 << 20;
export const TURN_EVERY_MS = 5;   // how often a walk lets the event loop run (turnEvery)

/**
 * Archive -> zstd into `sink`, one reused input buffer at a time: the walk (native/archive.c) fills it, zstd's
 * workers compress it beside the next fill. A metadata-only counting pass goes first so that the first progress
 * carries a total (an operator's bar otherwise sat at 0% until the end); the walk's own count, sent at its
 * end, replaces that estimate with the exact figure.
 */
export async function backupTo(sink: ArchiveSink, job: BackupJob, report: Report): Promise<{ bytes: number; files: number }> {
  // Before the progress timer starts: a bad root name throws here.
  const walk = new TreeWalk(job.roots, {
    uidBase: job.uidBase, idCount: job.idCount, changes: job.changes,
    onProgress: (files, bytes) => progress.add(bytes, files),
    onSkip: (path, why) => report({ type: 'skip', path, why }),
  });
  const progress = new ProgressBatch(report);
  try {
    reportEstimate(job.roots, report);
    const zstd = new ZstdFrameWriter((bytes) => sink.write(bytes));
    const input = Buffer.allocUnsafe(WALK_CHUNK);
    while (!walk.done) {
      zstd.write(input.subarray(0, walk.fill(input)));
      const wait = sink.ready();
      if (wait) await wait;
    }
    zstd.end();
    await sink.end();
    report({ type: 'totals', bytes: progress.totalBytes, files: progress.totalFiles });
  } finally {
    walk.close();
    progress.stop();
  }
  return { bytes: progress.totalBytes, files: progress.totalFiles };
}

/**
 * The trees' size before the walk (readdir and lstat only; it also warms the caches the walk then reads). It
 * is only an estimate, so a tree it cannot measure is backed up without one rather than refused.
 */
function reportEstimate(roots: ArchiveRoot[], report: Report): void {
  let size: { bytes: number; files: number };
  try {
    size = measureTrees(roots.map((r) => r.dir));
  } catch {
    return;
  }
  report({ type: 'totals', bytes: size.bytes, files: size.files });
}

/** A sink over a Writable (in-process runs): bytes are copied, and the stream's backpressure respected. */
export function streamSink(out: NodeJS.WritableStream & { writableNeedDrain?: boolean; destroyed?: boolean }): ArchiveSink {
  const gone = () => new DomainError('ABORTED', 'archive output closed');
  return {
    write: (bytes) => { out.write(Buffer.from(bytes)); },
    ready: async () => {
      if (out.destroyed) throw gone();
      if (out.writableNeedDrain) await new Promise<void>((resolve) => out.once('drain', resolve));
      else await new Promise<void>((resolve) => setImmediate(resolve));
      if (out.destroyed) throw gone();
    },
    end: () => new Promise<void>((resolve) => { out.end(resolve); }),
  };
}

/**
 * A sink over a blocking fd (the runner's stdout, a pipe to the daemon): writes wait for the daemon,
 * while zstd's workers go on compressing what they hold.
 */
export function fdSink(fd: number): ArchiveSink {
  const out = blockingDescription(fd, fs.constants.O_WRONLY);
  return {
    write: (bytes) => writeFully(out, bytes),
    ready: turnEvery(TURN_EVERY_MS),
    end: async () => {
      if (out !== fd) fs.closeSync(out);
      fs.closeSync(fd);
    },
  };
}

/**
 * For a synchronous walk's loop: a turn of the event loop once `ms` have passed since the last, so that
 * timers (progress), the IPC channel (a disconnect means stop) and worker messages run now and then.
 * Undefined otherwise: an incremental's loop stops at every file, and a turn (or an await) per step cost
 * more than the step.
 */
export function turnEvery(ms: number): () => Promise<void> | undefined {
  let last = performance.now();
  return () => {
    const now = performance.now();
    if (now - last < ms) return undefined;
    last = now;
    return new Promise<void>((resolve) => setImmediate(resolve));
  };
}

/**
 * A blocking open file description of the pipe at `fd` (through /proc/self/fd), else `fd` itself: Node may
 * have made the runner's stdio non-blocking, and a read or write that meets EAGAIN then sleeps in 1 ms steps
 * (on a busy node, most of a backup's time: docs/backup-format.md, "Benchmark").
 */
export function blockingDescription(fd: number, flags: number): number {
  try {
    return fs.openSync(`/proc/self/fd/${fd}`, flags); // libuv opens close-on-exec
  } catch {
    return fd; // not a pipe (a socket cannot be reopened): poll as before
  }
}

/**
 * The runner's stdin (a pipe from the daemon, forkRunner) read into one reused buffer: each chunk must be used up
 * before the next is asked for. Fresh 64 KiB buffers per read, as process.stdin makes, cost a page fault
 * per 4 KiB on a gigabyte restore.
 */
export async function* fdSource(stdinFd: number): AsyncGenerator<Buffer> {
  const buf = Buffer.allocUnsafe(1 << 20);
  const fd = blockingDescription(stdinFd, fs.constants.O_RDONLY);
  try {
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, 0, buf.length, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        await new Promise<void>((resolve) => setTimeout(resolve, 1)); // a non-blocking fd after all
        continue;
      }
      if (n === 0) return;
      yield buf.subarray(0, n);
    }
  } finally {
    if (fd !== stdinFd) fs.closeSync(fd);
  }
}

const pause = new Int32Array(new SharedArrayBuffer(4));

export function writeFully(fd: number, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) {
    try {
      off += fs.writeSync(fd, bytes, off, bytes.length - off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      Atomics.wait(pause, 0, 0, 1); // a non-blocking fd after all: wait a millisecond for the reader
    }
  }
}

const EXTRACT_CHUNK = 1 << 20;

/**
 * zstd -> extraction from `input`. Two output buffers take turns: while the extractor (native/extract.c,
 * on a worker thread) writes one into files, this thread decompresses into the other. Resolves after the
 * end-of-archive marker and the end of input.
 */
export async function restoreFrom(input: AsyncIterable<Buffer>, job: RestoreJob, report: Report): Promise<{ bytes: number; files: number }> {
  // Before the progress timer starts: a root that cannot be opened throws here.
  const tree = new TreeExtraction(job.roots, {
    uidBase: job.uidBase, idCount: job.idCount, onProgress: (files, bytes) => progress.add(bytes, files),
  });
  const progress = new ProgressBatch(report);
  const buffers = [Buffer.allocUnsafe(EXTRACT_CHUNK), Buffer.allocUnsafe(EXTRACT_CHUNK)];
  let current = 0;
  let filled = 0;
  let extracting: Promise<void> = Promise.resolve();
  const handOff = async () => {
    await extracting; // frees the other buffer
    extracting = tree.feedAsync(buffers[current].subarray(0, filled));
    extracting.catch(() => undefined); // awaited at the next hand-off or at the end
    current ^= 1;
    filled = 0;
  };
  try {
    if (job.plain) {
      for await (const chunk of input) {
        let rest = chunk as Buffer;
        while (rest.length > 0) {
          const n = Math.min(EXTRACT_CHUNK - filled, rest.length);
          rest.copy(buffers[current], filled, 0, n);
          filled += n;
          rest = rest.subarray(n);
          if (filled === EXTRACT_CHUNK) await handOff();
        }
      }
      if (filled > 0) await handOff();
      await extracting;
      tree.finish();
      return { bytes: progress.totalBytes, files: progress.totalFiles };
    }
    const zstd = new ZstdFrameReader();
    for await (const chunk of input) {
      let rest = chunk as Buffer;
      let full: boolean;
      do {
        ({ filled, rest } = zstd.write(rest, buffers[current], filled));
        full = filled === EXTRACT_CHUNK; // the decoder may hold more output for this input
        if (full) await handOff();
      } while (rest.length > 0 || full);
    }
    zstd.end();
    if (filled > 0) await handOff();
    await extracting;
    tree.finish();
  } finally {
    await extracting.catch(() => undefined);
    tree.close();
    progress.stop();
  }
  return { bytes: progress.totalBytes, files: progress.totalFiles };
}

function send(msg: RunnerMessage): void {
  if (process.connected) process.send!(msg);
}

function run(job: RunnerJob): void {
  const work = job.op === 'backup' ? backupTo(fdSink(1), job, send) : restoreFrom(fdSource(0), job, send);
  work.then(
    (stats) => send({ type: 'done', ...stats }),
    (err: unknown) => send(errorMessage(err)),
  ).finally(() => {
    finished = true;
    if (process.connected) process.disconnect();
  });
}

// A full file system or quota is the node's state, not a fault of ours: the caller may free space and retry.
const OUT_OF_SPACE = /\b(ENOSPC|EDQUOT)\b/;

/** DomainError codes pass through; errno codes are kept in the message, and out of space is RESOURCE_EXHAUSTED. */
export function errorMessage(err: unknown): RunnerMessage {
  const e = err as Error & { code?: string };
  const message = err instanceof DomainError ? e.message : `${e.code ? e.code + ': ' : ''}${e.message}`;
  const domain = err instanceof DomainError ? err.code : undefined;
  const code = domain !== undefined && domain !== 'INTERNAL' ? domain : OUT_OF_SPACE.test(message) ? 'RESOURCE_EXHAUSTED' : domain;
  return { type: 'error', code, message };
}

let finished = false;

if (require.main === module) {
  if (!process.send) {
    process.stderr.write('archive-runner: must be started by the daemon with an IPC channel\n');
    process.exit(2);
  }
  // The parent going away closes the channel: stop at once, whatever we were doing.
  process.on('disconnect', () => process.exit(finished ? 0 : 1));
  process.once('message', (job: RunnerJob) => run(job));
}
