// The file system half of a snapshot backup, in a child process as the full format's archive-runner.ts is:
// the archive walk (native/archive.c), paused before each file's data: headers to the tree stream, data to
// FastCDC chunks (native/chunker.c) -> chunk ids (HMAC-SHA256) -> zstd for chunks the repository does not
// have yet. New chunks go to stdout as frames; the daemon seals them (the child never holds the key that
// encrypts) and packs them. The child holds the two secrets chunking needs, the gear table and the id key:
// with them one can tell where chunks end and whether a guessed chunk is in the repository, never read one.
//
// The frames on stdout: src/content/repo/chunk-frames.ts.
import crypto from 'node:crypto';
import type { ArchiveRoot } from '../archive-roots';
import { measureTrees } from '../archive';
import { DomainError } from '../../errors';
import { errorMessage, type RunnerMessage } from '../archive-runner';
import { TreeWalk } from '../tree-walk';
import { DATA_CHUNKS, StreamChunker, TREE_CHUNKS } from './chunker';
import { workerChunkOutput, type ChunkOutput } from './chunk-frames';
import { ID_BYTES, TreeWriter } from './tree-stream';
import { ParentFeed } from './parent-feed';

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
  /** The workspace's previous snapshot, whose tree follows as ParentMessages (parent-feed.ts). Its size is
   *  the progress estimate: a workspace changes little between backups. */
  parent?: { totals: { bytes: number; files: number } };
}

/** From the daemon to the runner after the job: the parent's tree stream, then its end. */
export type ParentMessage = { type: 'parent-tree'; bytes: Uint8Array } | { type: 'parent-end' };

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

/** The set of ids the repository holds, and the feed of the parent's files checked against it. */
export function jobParent(job: SnapshotJob): { known: Set<string>; parent: ParentFeed } {
  const known = new Set<string>();
  const knownBuf = Buffer.from(job.known);
  for (let off = 0; off + ID_BYTES <= knownBuf.length; off += ID_BYTES) known.add(knownBuf.toString('latin1', off, off + ID_BYTES));
  const parent = new ParentFeed((id) => known.has(id.toString('latin1')));
  if (!job.parent) parent.end();
  return { known, parent };
}

/** Walk, split, chunk and hand the new chunks to `out`. */
export async function snapshotWalk(out: ChunkOutput, job: SnapshotJob, from: { known: Set<string>; parent: ParentFeed }, report: (m: RunnerMessage) => void): Promise<SnapshotWalkResult> {
  const gear = Buffer.from(job.gear);
  const idKey = Buffer.from(job.idKey);
  const { known, parent } = from;
  const result: SnapshotWalkResult = { bytes: 0, files: 0, reusedFiles: 0, tree: Buffer.alloc(0), newChunks: 0, newBytes: 0 };

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
    // Every regular file with data pauses the walk after its header, so what a fill writes is the rest of
    // the file being read (dataLeft bytes, then it ends), then only tar headers and padding.
    let dataLeft = 0;
    while (!walk.done) {
      const n = walk.fill(input);
      const data = Math.min(dataLeft, n);
      if (data > 0) {
        dataChunker.push(input.subarray(0, data));
        dataLeft -= data;
        if (dataLeft === 0) dataChunker.end();
      }
      tree.literal(input.subarray(data, n));
      const file = walk.pendingFile;
      if (file !== undefined) {
        tree.file(file.path);
        tree.identity(file.identity);
        const found = parent.find(file.path);
        const was = found instanceof Promise ? await found : found;
        if (was && was.identity === file.identity && was.size === file.size) {
          for (const c of was.chunks) tree.chunk(c.id, c.length);
          walk.skipFile();
          result.reusedFiles++;
        } else dataLeft = file.size;
      }
      const wait = out.ready();
      if (wait) await wait;
    }
    if (dataLeft !== 0) throw new DomainError('INTERNAL', 'snapshot: the walk ended inside a file');
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
  let parent: ParentFeed | undefined;
  process.on('message', (m: SnapshotJob | ParentMessage) => {
    if ('type' in m) return m.type === 'parent-tree' ? parent?.push(Buffer.from(m.bytes)) : parent?.end();
    if (parent) return;  // one job per runner
    const job = m;
    const from = jobParent(job);
    parent = from.parent;
    snapshotWalk(workerChunkOutput(1), job, from, send).then(
      (result) => send({ type: 'snapshot-done', result }),
      (err: unknown) => send(errorMessage(err)),
    ).finally(() => {
      finished = true;
      if (process.connected) process.disconnect();
    });
  });
}
