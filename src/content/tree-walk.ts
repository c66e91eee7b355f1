// Trees to a pax tar stream through the addon's walk (native/archive.c), which does the file system half in
// C: getdents64, openat(O_NOFOLLOW) relative to held directory fds, fstat, and file data read straight into
// the caller's buffer. This side adds what is policy: which xattrs the archive keeps (xattrs.ts), reports of
// entries left out, and the end-of-archive marker after the last root.
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { DomainError } from '../errors';
import { ArchiveRoot, checkRootName, DEFAULT_ID_COUNT, IdMapping, openRootDir, OVERLAY_UPPER_ROOT } from './archive-roots';
import { archiveWalk, fsops, NativeArchiveWalk, TAR_BLOCK } from '../native';
import { OVERLAY_METACOPY, xattrsToArchive, XATTRS_LEFT_OUT_QUIETLY } from './xattrs';

const OUT_CHUNK = 1 << 20;

export interface ArchiveWriteOptions extends IdMapping {
  /** Entries and file bytes archived since the last call. */
  onProgress?(files: number, bytes: number): void;
  /** An entry left out (socket, device, FIFO, vanished while walking, an xattr not kept). */
  onSkip?(rel: string, why: string): void;
  /**
   * An entry that vanished, changed type or shrank while the walk read it. 'fail' (the default) fails the
   * walk with ABORTED: the tree was meant to be still (a stopped workspace), so something else is changing
   * it. 'skip' leaves it out and reports it: a running workspace's own writes race any walk of it.
   */
  changes?: 'fail' | 'skip';
  /** Stop fill() before each regular file's data (pendingFile says which), so a snapshot can reuse an
   *  unchanged file's chunks (skipFile) instead of reading it. The next fill starts with that data. */
  pauseFiles?: boolean;
}

/** A regular file paused before its data: its name in the archive ("content/src/a.c"), its identity
 *  (dev:ino:size:mtime:ctime, from the fstat its data is read after) and its data's length. */
export interface PendingFile {
  path: string;
  identity: string;
  size: number;
}

// What native/archive.c reports for an entry that changed under the walk (see skip() there).
const CHANGED_DURING_WALK = / during backup/;

/** Fills caller buffers with the archive of `roots`, one after the other. Synchronous. */
export class TreeWalk {
  readonly #roots: ArchiveRoot[];
  readonly #opts: ArchiveWriteOptions;
  readonly #idCount: number;
  #rootIndex = -1;
  #walk: NativeArchiveWalk | undefined;
  #rootFd = -1;       // held to the end of the root, to tell a root removed during the walk
  #upper = false;
  #files = 0;
  #bytes = 0;
  #pendingFile: PendingFile | undefined;
  #trailer = TAR_BLOCK * 2; // end-of-archive marker bytes still to write
  #done = false;

  constructor(roots: ArchiveRoot[], opts: ArchiveWriteOptions) {
    for (const r of roots) checkRootName(r.name);
    this.#roots = roots;
    this.#opts = opts;
    this.#idCount = opts.idCount ?? DEFAULT_ID_COUNT;
  }

  get done(): boolean {
    return this.#done;
  }

  /** With pauseFiles: the file whose header the last fill ended with and whose data is next, until the next
   *  fill or skipFile. */
  get pendingFile(): PendingFile | undefined {
    return this.#pendingFile;
  }

  /** Ends the pending file without reading its data. */
  skipFile(): void {
    if (this.#pendingFile === undefined) throw new DomainError('INTERNAL', 'tree walk: no file waits');
    this.#pendingFile = undefined;
    archiveWalk.archiveWalkSkipFile(this.#walk!);
  }

  /** Writes archive bytes into buf[offset..]; returns how many. Less than the space left only when done, or
   *  (pauseFiles) when a file's data is next. */
  fill(buf: Buffer, offset = 0): number {
    let pos = offset;
    this.#pendingFile = undefined;
    while (pos < buf.length && !this.#done) {
      if (!this.#walk && !this.#nextRoot()) {
        const n = Math.min(this.#trailer, buf.length - pos);
        buf.fill(0, pos, pos + n);
        pos += n;
        this.#trailer -= n;
        this.#done = this.#trailer === 0;
        continue;
      }
      const r = archiveWalk.archiveWalkFill(this.#walk!, buf, pos);
      pos += r.length;
      for (const [rel, why] of r.skips ?? []) this.#skipped(rel, why);
      this.#progress(r.files, r.bytes);
      if (r.status === 'file') {
        this.#pendingFile = { path: r.path!, identity: r.identity!, size: r.size! };
        return pos - offset;
      }
      if (r.status === 'xattrs') this.#resolveXattrs();
      else if (r.status === 'refused') throw new DomainError('FAILED_PRECONDITION', r.message ?? 'symlink leaves the root');
      else if (r.status === 'done') this.#endRoot();
    }
    return pos - offset;
  }

  close(): void {
    if (this.#walk) archiveWalk.archiveWalkClose(this.#walk);
    this.#walk = undefined;
    this.#closeRootFd();
    this.#done = true;
  }

  #skipped(rel: string, why: string): void {
    if (CHANGED_DURING_WALK.test(why) && (this.#opts.changes ?? 'fail') === 'fail') {
      const root = this.#roots[this.#rootIndex];
      throw new DomainError('ABORTED', `backup: ${root.name}/${rel} ${why}: the tree changed under a backup that needs it still`);
    }
    this.#opts.onSkip?.(rel, why);
  }

  #nextRoot(): boolean {
    if (++this.#rootIndex >= this.#roots.length) return false;
    const root = this.#roots[this.#rootIndex];
    this.#rootFd = openRootDir(root.dir);
    this.#upper = root.name === OVERLAY_UPPER_ROOT;
    this.#walk = archiveWalk.archiveWalkStart(this.#rootFd, root.name, this.#opts.uidBase, this.#idCount, this.#upper,
      XATTRS_LEFT_OUT_QUIETLY);
    if (this.#opts.pauseFiles) archiveWalk.archiveWalkPauseFiles(this.#walk);
    this.#files = 0;
    this.#bytes = 0;
    return true;
  }

  #endRoot(): void {
    archiveWalk.archiveWalkClose(this.#walk!);
    this.#walk = undefined;
    this.#checkRootStillThere();
    this.#closeRootFd();
  }

  // A removed directory still reads, as empty, through a held fd: without this check a root deleted during
  // the walk (a teardown) would end the walk early and look like a complete, smaller tree.
  #checkRootStillThere(): void {
    const root = this.#roots[this.#rootIndex];
    const held = fs.fstatSync(this.#rootFd);
    const now = fs.lstatSync(root.dir, { throwIfNoEntry: false });
    if (held.nlink === 0 || !now || now.ino !== held.ino || now.dev !== held.dev) {
      throw new DomainError('ABORTED', `backup: the ${root.name} root was removed during the backup`);
    }
  }

  #closeRootFd(): void {
    if (this.#rootFd >= 0) fs.closeSync(this.#rootFd);
    this.#rootFd = -1;
  }

  #progress(files: number, bytes: number): void {
    if (files === this.#files && bytes === this.#bytes) return;
    this.#opts.onProgress?.(files - this.#files, bytes - this.#bytes);
    this.#files = files;
    this.#bytes = bytes;
  }

  // The xattr policy (xattrs.ts) decides what an entry keeps; the walk waits with the entry's fd open.
  #resolveXattrs(): void {
    const walk = this.#walk!;
    const { fd, kind, rel } = archiveWalk.archiveWalkPending(walk);
    const ctx = { upper: this.#upper, uidBase: this.#opts.uidBase, idCount: this.#idCount };
    const kept = xattrsToArchive(fsops.listXattrs(fd), (name) => fsops.getXattr(fd, name), kind, ctx,
      (why) => this.#opts.onSkip?.(rel, why));
    const metacopy = kind === 'file' && this.#upper && (kept?.has(OVERLAY_METACOPY) ?? false);
    archiveWalk.archiveWalkResume(walk, kept ? [...kept] : null, metacopy);
  }
}

/** A Readable of the tar stream of `roots`, produced lazily one output chunk at a time. */
export class TreeArchiveStream extends Readable {
  readonly #walk: TreeWalk;

  constructor(roots: ArchiveRoot[], opts: ArchiveWriteOptions) {
    super({ highWaterMark: OUT_CHUNK });
    this.#walk = new TreeWalk(roots, opts);
  }

  override _read(): void {
    try {
      const buf = Buffer.allocUnsafe(OUT_CHUNK);
      const n = this.#walk.fill(buf);
      if (n > 0) this.push(buf.subarray(0, n));
      if (this.#walk.done) this.push(null);
    } catch (err) {
      this.destroy(err as Error);
    }
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.#walk.close();
    cb(err);
  }
}
