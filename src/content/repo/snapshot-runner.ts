// The file system half of a snapshot backup, in a child process as the full format's archive-runner.ts is:
// the archive walk (native/archive.c) -> the tar split into headers and file data -> FastCDC chunks
// (native/chunker.c) -> chunk ids (HMAC-SHA256) -> zstd for chunks the repository does not have yet. New
// chunks go to stdout as frames; the daemon seals them (the child never holds the key that encrypts) and
// packs them. The child holds the two secrets chunking needs, the gear table and the id key: with them one
// can tell where chunks end and whether a guessed chunk is in the repository, never read one.
//
// The frames on stdout: src/content/repo/chunk-frames.ts.
import crypto from 'node:crypto';
import type { ArchiveRoot } from '../archive-roots';
import { measureTrees } from '../archive';
import { errorMessage, type RunnerMessage } from '../archive-runner';
import { TreeWalk } from '../tree-walk';
import { DATA_CHUNKS, StreamChunker, TREE_CHUNKS } from './chunker';
import { workerChunkOutput, type ChunkOutput } from './chunk-frames';
import { ID_BYTES, TarSplitter, TreeWriter } from './tree-stream';

export interface SnapshotJob {
  op: 'snapshot';
  roots: ArchiveRoot[];
  uidBase: number;
  idCount?: number;
  changes?: 'fail' | 'skip';
  gear: Uint8Array;
  idKey: Uint8Array;
  /** Ids the repository holds, concatenated. */
  known: Uint8Array;
  /** The workspace's previous snapshot's files, for reuse of unchanged ones. */
  parent?: ParentFiles;
}

/** Files of a previous snapshot: file i has identities[i] and counts[i] chunks, taken in order from ids/lengths. */
export interface ParentFiles {
  paths: string[];
  identities: string[];
  counts: number[];
  ids: Uint8Array;     // 32 bytes each, concatenated
  lengths: number[];
  /** The parent's whole size: the progress estimate, since a workspace changes little between backups. */
  totals: { bytes: number; files: number };
}

export interface SnapshotWalkResult {
  bytes: number;
  files: number;
  reusedFiles: number;  // unchanged since the parent snapshot: not read
  /** The tree stream's chunk ids, concatenated, in order. */
  tree: Buffer;
  newChunks: number;
  newBytes: number;   // plaintext bytes of new chunks
}

export type SnapshotMessage = RunnerMessage | { type: 'snapshot-done'; result: SnapshotWalkResult };

const WALK_CHUNK = 1 << 20;
const PROGRESS_EVERY_MS = 100;

/** Walk, split, chunk and hand the new chunks to `out`. */
export async function snapshotWalk(out: ChunkOutput, job: SnapshotJob, report: (m: RunnerMessage) => void): Promise<SnapshotWalkResult> {
  const gear = Buffer.from(job.gear);
  const idKey = Buffer.from(job.idKey);
  const known = new Set<string>();
  const knownBuf = Buffer.from(job.known);
  for (let off = 0; off + ID_BYTES <= knownBuf.length; off += ID_BYTES) known.add(knownBuf.toString('latin1', off, off + ID_BYTES));
  const result: SnapshotWalkResult = { bytes: 0, files: 0, reusedFiles: 0, tree: Buffer.alloc(0), newChunks: 0, newBytes: 0 };
  const parent = parentIndex(job.parent);

  const emitChunk = (plain: Buffer): Buffer => {
    const id = crypto.createHmac('sha256', idKey).update(plain).digest();
    const key = id.toString('latin1');
    if (known.has(key)) return id;
    known.add(key);
    out.put(id, plain);
    result.newChunks++;
    result.newBytes += plain.length;
    return id;
  };

  const treeIds: Buffer[] = [];
  const treeChunker = new StreamChunker(gear, TREE_CHUNKS, (c) => void treeIds.push(emitChunk(c)));
  const tree = new TreeWriter((b) => treeChunker.push(b));
  const dataChunker = new StreamChunker(gear, DATA_CHUNKS, (c) => tree.chunk(emitChunk(c), c.length));
  const splitter = new TarSplitter({
    literal: (b) => tree.literal(b), fileStart: (p) => tree.file(p), fileData: (b) => dataChunker.push(b), fileEnd: () => dataChunker.end(),
  });
  let pendingBytes = 0;
  let pendingFiles = 0;
  const walk = new TreeWalk(job.roots, {
    uidBase: job.uidBase, idCount: job.idCount, changes: job.changes, pauseFiles: true,
    onProgress: (files, bytes) => { pendingFiles += files; pendingBytes += bytes; result.files += files; result.bytes += bytes; },
    onSkip: (path, why) => report({ type: 'skip', path, why }),
  });
  const timer = setInterval(() => {
    if (pendingFiles === 0) return;
    report({ type: 'progress', bytes: pendingBytes, files: pendingFiles });
    pendingBytes = pendingFiles = 0;
  }, PROGRESS_EVERY_MS);
  try {
    if (job.parent) report({ type: 'totals', ...job.parent.totals });
    else reportEstimate(job.roots, report);
    const input = Buffer.allocUnsafe(WALK_CHUNK);
    while (!walk.done) {
      splitter.push(input.subarray(0, walk.fill(input)));
      const identity = walk.pendingFile;
      if (identity !== undefined) {
        // The walk stopped between a file's header and its data (read after this fstat identity).
        tree.identity(identity);
        const known = parent.get(splitter.currentPath);
        if (known && known.identity === identity && known.size === splitter.pendingDataSize) {
          for (const c of known.chunks) tree.chunk(c.id, c.length);
          splitter.skipData();
          walk.skipFile();
          result.reusedFiles++;
        }
      }
      await out.ready();
    }
    splitter.end();
    tree.flush();
    treeChunker.end();
    await out.end();
    report({ type: 'totals', bytes: result.bytes, files: result.files });
  } finally {
    clearInterval(timer);
    walk.close();
    if (pendingFiles) report({ type: 'progress', bytes: pendingBytes, files: pendingFiles });
  }
  result.tree = Buffer.concat(treeIds);
  return result;
}

interface ParentFile {
  identity: string;
  size: number;
  chunks: { id: Buffer; length: number }[];
}

function parentIndex(p: ParentFiles | undefined): Map<string, ParentFile> {
  const out = new Map<string, ParentFile>();
  if (!p) return out;
  const ids = Buffer.from(p.ids.buffer, p.ids.byteOffset, p.ids.byteLength);
  let k = 0;
  p.paths.forEach((path, i) => {
    const chunks: { id: Buffer; length: number }[] = [];
    for (let j = 0; j < p.counts[i]; j++, k++) chunks.push({ id: ids.subarray(k * ID_BYTES, (k + 1) * ID_BYTES), length: p.lengths[k] });
    out.set(path, { identity: p.identities[i], size: chunks.reduce((n, c) => n + c.length, 0), chunks });
  });
  return out;
}

/** The trees' size before the walk, for progress (it also warms the caches the walk reads); only an estimate. */
function reportEstimate(roots: ArchiveRoot[], report: (m: RunnerMessage) => void): void {
  try {
    const size = measureTrees(roots.map((r) => r.dir));
    report({ type: 'totals', bytes: size.bytes, files: size.files });
  } catch { /* backed up without an estimate */ }
}

function send(msg: SnapshotMessage): void {
  if (process.connected) process.send!(msg);
}

let finished = false;

if (require.main === module) {
  if (!process.send) {
    process.stderr.write('snapshot-runner: must be started by the daemon with an IPC channel\n');
    process.exit(2);
  }
  process.on('disconnect', () => process.exit(finished ? 0 : 1));
  process.once('message', (job: SnapshotJob) => {
    snapshotWalk(workerChunkOutput(1), job, send).then(
      (result) => send({ type: 'snapshot-done', result }),
      (err: unknown) => send(errorMessage(err)),
    ).finally(() => {
      finished = true;
      if (process.connected) process.disconnect();
    });
  });
}
