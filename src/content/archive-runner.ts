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
import net from 'node:net';
import { pipeline } from 'node:stream/promises';
import { DomainError } from '../errors';
import { ArchiveExtractor, ArchiveRoot, measureTrees, TreeArchiveStream } from './archive';
import { createCompressStream, createDecompressStream } from './compress';

export interface BackupJob {
  op: 'backup';
  roots: ArchiveRoot[];
  uidBase: number;
  idCount?: number;
}

export interface RestoreJob {
  op: 'restore';
  roots: Record<string, string | null>;
  uidBase: number;
  idCount?: number;
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

  add(bytes: number): void {
    this.bytes += bytes;
    this.files++;
    this.totalBytes += bytes;
    this.totalFiles++;
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

/** Archive -> zstd into `output`. Used by the child, and in process when asked. */
export async function backupTo(output: NodeJS.WritableStream, job: BackupJob, report: Report): Promise<{ bytes: number; files: number }> {
  const progress = new ProgressBatch(report);
  try {
    const totals = measureTrees(job.roots.map((r) => r.dir));
    report({ type: 'totals', bytes: totals.bytes, files: totals.files });
    const archive = new TreeArchiveStream(job.roots, {
      uidBase: job.uidBase, idCount: job.idCount,
      onEntry: (bytes) => progress.add(bytes),
      onSkip: (path, why) => report({ type: 'skip', path, why }),
    });
    await pipeline(archive, createCompressStream(), output);
  } finally {
    progress.stop();
  }
  return { bytes: progress.totalBytes, files: progress.totalFiles };
}

/** zstd -> extraction from `input`; resolves after the end-of-archive marker and the end of input. */
export async function restoreFrom(input: NodeJS.ReadableStream, job: RestoreJob, report: Report): Promise<{ bytes: number; files: number }> {
  const progress = new ProgressBatch(report);
  try {
    const extractor = new ArchiveExtractor(job.roots, {
      uidBase: job.uidBase, idCount: job.idCount, onEntry: (bytes) => progress.add(bytes),
    });
    await pipeline(input, createDecompressStream(), extractor);
  } finally {
    progress.stop();
  }
  return { bytes: progress.totalBytes, files: progress.totalFiles };
}

function send(msg: RunnerMessage): void {
  if (process.connected) process.send!(msg);
}

function run(job: RunnerJob): void {
  const work = job.op === 'backup' ? backupTo(dataOut(), job, send) : restoreFrom(process.stdin, job, send);
  work.then(
    (stats) => send({ type: 'done', ...stats }),
    (err: unknown) => send(errorMessage(err)),
  ).finally(() => {
    finished = true;
    if (process.connected) process.disconnect();
  });
}

/**
 * fd 1 as a non-blocking socket. process.stdout on a pipe writes synchronously (Linux), which would stall
 * archiving every time the daemon is a chunk behind; this lets the two overlap, within the stream's
 * high-water mark.
 */
function dataOut(): NodeJS.WritableStream {
  return new net.Socket({ fd: 1, readable: false, writable: true });
}

/** DomainError codes pass through; errno codes (ENOSPC...) are kept in the message. */
export function errorMessage(err: unknown): RunnerMessage {
  const e = err as Error & { code?: string };
  const code = err instanceof DomainError ? err.code : undefined;
  return { type: 'error', code, message: code ? e.message : `${e.code ? e.code + ': ' : ''}${e.message}` };
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
