// Archives back into trees (TreeExtraction over native/extract.c), plus what both directions share.
// Writing is tree-walk.ts (a walk in the addon, native/archive.c).
//
// Both directions work through directory file descriptors (openat with O_NOFOLLOW, one component at a
// time), so neither a workload racing a backup nor an adversarial archive can redirect a path through a
// symlink. Owners are container ids in the archive: host id - uidBase on the way out, + uidBase on the way
// in. The xattr policy (xattrs.ts) stays in TypeScript; the C code stops and asks for each entry with xattrs.
//
// The file system calls are synchronous on purpose: each is a short page-cache operation, and a thread-pool
// round trip per call made restores of many small files several times slower. Backups and restores run them
// in the archive-runner child (archive-runner.ts), so the daemon's event loop does not wait on them.
import fs from 'node:fs';
import { Writable } from 'node:stream';
import { DomainError } from '../errors';
import { checkRootName, DEFAULT_ID_COUNT, IdMapping, openRootDir, OVERLAY_UPPER_ROOT } from './archive-roots';
import { extract, ExtractResult, NativeExtraction } from '../native';
import { OVERLAY_METACOPY, xattrsFromArchive } from './xattrs';

export {
  ArchiveRoot, DEFAULT_ID_COUNT, IdMapping, OVERFLOW_ID, OVERLAY_UPPER_ROOT,
} from './archive-roots';
export { ArchiveWriteOptions, TreeArchiveStream } from './tree-walk';

const C = fs.constants;
const OUT_CHUNK = 1 << 20;

export interface TreeSize {
  files: number;   // entries of every kind
  bytes: number;   // regular file bytes
}

function procPath(dirFd: number, name: string): string {
  return `/proc/self/fd/${dirFd}/${name}`;
}

function openDirAt(dirFd: number, name: string): number {
  return fs.openSync(procPath(dirFd, name), C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
}

/**
 * Symlink policy (the same on both sides; native/archive.c and native/extract.c implement this same rule):
 * the target must be relative and stay inside the archive root when resolved from the link's directory. The issue asks to refuse links out of the content root; note this
 * includes absolute targets such as a venv's `bin/python -> /usr/bin/python3`.
 */
export function symlinkEscapes(linkRelPath: string, target: string): boolean {
  if (target === '' || target.startsWith('/') || target.includes('\0')) return true;
  let depth = linkRelPath.split('/').length - 1; // directories above the link, inside the root
  for (const part of target.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      depth--;
      if (depth < 0) return true;
    } else depth++;
  }
  return false;
}

/**
 * Counts entries and file bytes of the trees (for progress totals). Directories are walked through fds
 * like the archive walk; file sizes come from plain-path lstat, which is cheaper and only feeds an estimate.
 */
export function measureTrees(dirs: string[]): TreeSize {
  const size: TreeSize = { files: 0, bytes: 0 };
  for (const dir of dirs) {
    const fd = openRootDir(dir);
    size.files++;
    measureDir(fd, dir, size, new Set());
  }
  return size;
}

// Hard-linked files carry their bytes once, as in the archive.
function measureDir(fd: number, dirPath: string, size: TreeSize, linked: Set<string>): void {
  try {
    for (const entry of fs.readdirSync(`/proc/self/fd/${fd}`, { withFileTypes: true })) {
      if (entry.isDirectory()) {
        size.files++;
        let child: number;
        try {
          child = openDirAt(fd, entry.name);
        } catch {
          continue; // vanished or replaced: the archive walk reports it
        }
        measureDir(child, `${dirPath}/${entry.name}`, size, linked);
      } else if (entry.isSymbolicLink()) {
        size.files++;
      } else if (entry.isFile()) {
        size.files++;
        const st = fs.lstatSync(`${dirPath}/${entry.name}`, { throwIfNoEntry: false });
        if (!st?.isFile()) continue;
        if (st.nlink > 1) {
          const key = `${st.dev}:${st.ino}`;
          if (linked.has(key)) continue;
          linked.add(key);
        }
        size.bytes += st.size;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------------
// Reading

export interface ExtractOptions extends IdMapping {
  /** Entries and file bytes extracted since the last call. */
  onProgress?(files: number, bytes: number): void;
}

function refuse(entry: string, why: string): DomainError {
  return new DomainError('DATA_LOSS', `archive entry ${JSON.stringify(entry)} refused: ${why}`);
}

/**
 * Unpacks a tar stream into staging directories (one per archive root name; a root mapped to null is read
 * and checked but not written), through the addon's extractor (native/extract.c), which holds every rule
 * of docs/backup-format.md except the xattr policy: that stays in xattrs.ts and is asked per entry. Nothing
 * is created outside the staging directories, whatever the archive says. Synchronous.
 */
export class TreeExtraction {
  readonly #ex: NativeExtraction;
  readonly #opts: ExtractOptions;
  readonly #idCount: number;
  readonly stats: TreeSize = { files: 0, bytes: 0 };
  #ended = false;

  constructor(roots: Record<string, string | null>, opts: ExtractOptions) {
    this.#opts = opts;
    this.#idCount = opts.idCount ?? DEFAULT_ID_COUNT;
    const names = Object.keys(roots);
    const fds: number[] = [];
    try {
      for (const name of names) {
        checkRootName(name);
        const dir = roots[name];
        fds.push(dir === null ? -1 : openRootDir(dir));
      }
      this.#ex = extract.extractStart(names, fds, opts.uidBase, this.#idCount);
    } finally {
      for (const fd of fds) if (fd >= 0) fs.closeSync(fd);
    }
  }

  /** Extracts the entries in chunk; DATA_LOSS when the archive is refused. */
  feed(chunk: Buffer): void {
    let off = 0;
    do {
      const r = extract.extractFeed(this.#ex, chunk, off);
      off += r.consumed;
      this.#check(r);
      if (r.status !== 'xattrs') return;
      this.#check(this.#resolveXattrs());
    } while (off < chunk.length);
  }

  /** feed() with the file system work on a worker thread; chunk must stay unchanged until this settles. */
  async feedAsync(chunk: Buffer): Promise<void> {
    let off = 0;
    do {
      const r = await extract.extractFeedAsync(this.#ex, chunk, off);
      off += r.consumed;
      this.#check(r);
      if (r.status !== 'xattrs') return;
      this.#check(this.#resolveXattrs());
    } while (off < chunk.length);
  }

  /** After the last chunk: directory metadata, deepest first; DATA_LOSS without an end-of-archive marker. */
  finish(): void {
    this.#check(extract.extractFinish(this.#ex));
    this.#ended = true;
  }

  close(): void {
    extract.extractClose(this.#ex);
  }

  get ended(): boolean {
    return this.#ended;
  }

  #check(r: ExtractResult): void {
    if (r.files !== this.stats.files || r.bytes !== this.stats.bytes) {
      this.#opts.onProgress?.(r.files - this.stats.files, r.bytes - this.stats.bytes);
      this.stats.files = r.files;
      this.stats.bytes = r.bytes;
    }
    if (r.status === 'refused') throw new DomainError('DATA_LOSS', r.message ?? 'archive refused');
  }

  /** The entry's archived xattrs, checked and translated to the host by xattrs.ts. */
  #resolveXattrs(): ExtractResult {
    const p = extract.extractPending(this.#ex);
    const ctx = { upper: p.root === OVERLAY_UPPER_ROOT, uidBase: this.#opts.uidBase, idCount: this.#idCount };
    const xattrs = xattrsFromArchive(new Map(p.xattrs), p.kind, ctx, (why) => refuse(p.path, why));
    if (p.kind === 'file' && p.metacopySize >= 0 && (p.size !== 0 || !xattrs.has(OVERLAY_METACOPY))) {
      throw refuse(p.path, `a metadata-only size needs ${OVERLAY_METACOPY} and no data`);
    }
    return extract.extractResume(this.#ex, [...xattrs]);
  }
}

/** TreeExtraction as a Writable: finishes only after the end-of-archive marker. */
export class ArchiveExtractor extends Writable {
  readonly #tree: TreeExtraction;

  constructor(roots: Record<string, string | null>, opts: ExtractOptions) {
    super({ highWaterMark: OUT_CHUNK });
    this.#tree = new TreeExtraction(roots, opts);
  }

  get stats(): TreeSize {
    return this.#tree.stats;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    try {
      this.#tree.feed(chunk);
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _final(done: (err?: Error | null) => void): void {
    try {
      this.#tree.finish();
      done();
    } catch (err) {
      done(err as Error);
    } finally {
      this.#tree.close();
    }
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.#tree.close();
    cb(err);
  }
}
