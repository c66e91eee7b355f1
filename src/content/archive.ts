// Workspace trees to and from pax tar streams. Writing is tree-walk.ts (a walk in the addon); this file
// reads archives back into trees.
//
// Both directions walk the file system through directory file descriptors and /proc/self/fd/<fd>/<name>
// (openat-style): a name is always looked up inside a directory we hold open and checked with lstat or
// O_NOFOLLOW, so neither a workload racing a backup nor an adversarial archive can redirect a path through
// a symlink. Owners are container ids in the archive: host id - uidBase on the way out, + uidBase on the way in.
// xattrs (xattrs.ts decides which) and, in the overlay upper layer only, whiteouts go through the addon
// (fsops-native.ts), since Node has neither xattr calls nor mknod.
//
// The file system calls are synchronous on purpose: each is a short page-cache operation, and a thread-pool
// round trip per call made restores of many small files several times slower. Backups and restores run them
// in the archive-runner child (archive-runner.ts), so the daemon's event loop does not wait on them.
import fs from 'node:fs';
import { Writable } from 'node:stream';
import { DomainError } from '../errors';
import { checkRootName, DEFAULT_ID_COUNT, IdMapping, openRootDir, OVERFLOW_ID, OVERLAY_UPPER_ROOT } from './archive-roots';
import { fsops } from './fsops-native';
import {
  applyPax, BLOCK, decodePax, decodeUstar, EntryHeader, isZeroBlock, padding,
} from './tar-format';
import { OVERLAY_METACOPY, XattrEntryKind, xattrsFromArchive } from './xattrs';

export {
  ArchiveRoot, DEFAULT_ID_COUNT, IdMapping, OVERFLOW_ID, OVERLAY_UPPER_ROOT,
} from './archive-roots';
export { ArchiveWriteOptions, TreeArchiveStream } from './tree-walk';

const C = fs.constants;
const OUT_CHUNK = 1 << 20;
const MAX_PAX_BYTES = 1 << 20;
export interface TreeSize {
  files: number;   // entries of every kind
  bytes: number;   // regular file bytes
}

function procPath(dirFd: number, name: string): string {
  return `/proc/self/fd/${dirFd}/${name}`;
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException)?.code;
}

function openDirAt(dirFd: number, name: string): number {
  return fs.openSync(procPath(dirFd, name), C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
}

/**
 * Symlink policy (the same on both sides): the target must be relative and stay inside the archive root
 * when resolved from the link's directory. The issue asks to refuse links out of the content root; note this
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
  onEntry?(bytes: number): void;
}

interface PendingDir {
  rootName: string;
  rel: string;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  xattrs: Map<string, Buffer>;
}

interface DataSink {
  fd: number;          // -1 when the data is verified but not written (a root nobody asked for)
  remaining: number;
  pad: number;
  header: EntryHeader;
  xattrs: Map<string, Buffer>;  // checked, as set on the host
}

type ParseState = 'header' | 'extended' | 'data' | 'end';

function refuse(entry: string, why: string): DomainError {
  return new DomainError('DATA_LOSS', `archive entry ${JSON.stringify(entry)} refused: ${why}`);
}

/**
 * A Writable that unpacks a tar stream into staging directories (one per archive root name; a root
 * mapped to null is read and checked but not written). Nothing is created outside them, whatever the
 * archive says. The stream finishes only after the end-of-archive marker; then directory modes, owners and
 * mtimes are applied (last, so that adding children did not change them).
 */
export class ArchiveExtractor extends Writable {
  readonly #roots: Map<string, string | null>;
  readonly #rootFds = new Map<string, number>();
  readonly #opts: ExtractOptions;
  readonly #idCount: number;
  #state: ParseState = 'header';
  #block = Buffer.alloc(BLOCK);
  #blockFilled = 0;
  #extended: Buffer | undefined;
  #extendedKind: 'pax' | 'gnu-longname' | 'gnu-longlink' | undefined;
  #extendedFilled = 0;
  #extendedPad = 0;
  #pax: Map<string, Buffer> | undefined;
  #longName: string | undefined;
  #longLink: string | undefined;
  #sink: DataSink | undefined;
  #chain: { name: string; fd: number }[] = [];
  #chainRoot = '';
  #dirs: PendingDir[] = [];
  #zeroBlocks = 0;
  readonly stats: TreeSize = { files: 0, bytes: 0 };

  constructor(roots: Record<string, string | null>, opts: ExtractOptions) {
    super({ highWaterMark: OUT_CHUNK });
    this.#roots = new Map(Object.entries(roots));
    this.#opts = opts;
    this.#idCount = opts.idCount ?? DEFAULT_ID_COUNT;
    for (const [name, dir] of this.#roots) {
      checkRootName(name);
      if (dir !== null) this.#rootFds.set(name, openRootDir(dir));
    }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    try {
      this.#consume(chunk);
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _final(done: (err?: Error | null) => void): void {
    try {
      if (this.#state !== 'end') throw new DomainError('DATA_LOSS', 'archive: ends before its end-of-archive marker');
      this.#closeChain();
      this.#applyDirMetadata();
      done();
    } catch (err) {
      done(err as Error);
    } finally {
      this.#closeAll();
    }
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.#closeAll();
    cb(err);
  }

  #consume(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      switch (this.#state) {
        case 'data': off += this.#consumeData(chunk, off); break;
        case 'extended': off += this.#consumeExtended(chunk, off); break;
        case 'header': off += this.#consumeBlock(chunk, off); break;
        case 'end':
          // Trailing bytes after the marker (tar pads to a record size) are allowed only if zero.
          for (let i = off; i < chunk.length; i++) {
            if (chunk[i] !== 0) throw new DomainError('DATA_LOSS', 'archive: data after the end-of-archive marker');
          }
          return;
      }
    }
  }

  #consumeBlock(chunk: Buffer, off: number): number {
    const n = Math.min(BLOCK - this.#blockFilled, chunk.length - off);
    chunk.copy(this.#block, this.#blockFilled, off, off + n);
    this.#blockFilled += n;
    if (this.#blockFilled === BLOCK) {
      this.#blockFilled = 0;
      this.#onHeaderBlock(this.#block);
    }
    return n;
  }

  #onHeaderBlock(block: Buffer): void {
    if (isZeroBlock(block)) {
      if (++this.#zeroBlocks === 2) this.#state = 'end';
      return;
    }
    if (this.#zeroBlocks) throw new DomainError('DATA_LOSS', 'archive: a lone zero block inside the archive');
    const h = decodeUstar(block);
    if (h.type === 'pax' || h.type === 'gnu-longname' || h.type === 'gnu-longlink') {
      if (h.size > MAX_PAX_BYTES) throw new DomainError('DATA_LOSS', 'archive: extended header too large');
      this.#extended = Buffer.alloc(h.size);
      this.#extendedKind = h.type;
      this.#extendedFilled = 0;
      this.#extendedPad = padding(h.size);
      this.#state = 'extended';
      if (h.size === 0) this.#endExtended();
      return;
    }
    if (h.type === 'pax-global') throw new DomainError('DATA_LOSS', 'archive: pax global headers are not used by Tetrix');
    if (this.#pax) applyPax(h, this.#pax);
    if (this.#longName !== undefined) h.path = this.#longName;
    if (this.#longLink !== undefined) h.linkpath = this.#longLink;
    this.#pax = undefined;
    this.#longName = undefined;
    this.#longLink = undefined;
    this.#onEntry(h);
  }

  #consumeExtended(chunk: Buffer, off: number): number {
    const ext = this.#extended!;
    if (this.#extendedFilled < ext.length) {
      const n = Math.min(ext.length - this.#extendedFilled, chunk.length - off);
      chunk.copy(ext, this.#extendedFilled, off, off + n);
      this.#extendedFilled += n;
      if (this.#extendedFilled === ext.length && this.#extendedPad === 0) this.#endExtended();
      return n;
    }
    const n = Math.min(this.#extendedPad, chunk.length - off);
    this.#extendedPad -= n;
    if (this.#extendedPad === 0) this.#endExtended();
    return n;
  }

  #endExtended(): void {
    const body = this.#extended!;
    if (this.#extendedKind === 'pax') this.#pax = decodePax(body);
    else {
      const text = body.toString('utf8').replace(/\0.*$/s, '');
      if (this.#extendedKind === 'gnu-longname') this.#longName = text;
      else this.#longLink = text;
    }
    this.#extended = undefined;
    this.#state = 'header';
  }

  #consumeData(chunk: Buffer, off: number): number {
    const s = this.#sink!;
    if (s.remaining > 0) {
      const n = Math.min(s.remaining, chunk.length - off);
      if (s.fd >= 0) writeAll(s.fd, chunk, off, n);
      s.remaining -= n;
      if (s.remaining === 0 && s.pad === 0) this.#endData(s);
      return n;
    }
    const n = Math.min(s.pad, chunk.length - off);
    s.pad -= n;
    if (s.pad === 0) this.#endData(s);
    return n;
  }

  #endData(s: DataSink): void {
    if (s.fd >= 0) {
      if (s.header.metacopySize !== undefined) fs.ftruncateSync(s.fd, s.header.metacopySize);
      this.#setFdMetadata(s.fd, s.header, s.xattrs);
      fs.closeSync(s.fd);
    }
    this.#sink = undefined;
    this.#state = 'header';
    this.stats.bytes += s.header.size;
    this.#opts.onEntry?.(s.header.size);
  }

  #onEntry(h: EntryHeader): void {
    this.stats.files++;
    const { rootName, rel } = splitEntryPath(h.path);
    if (!this.#roots.has(rootName)) throw refuse(h.path, `unknown archive root "${rootName}"`);
    const write = this.#rootFds.has(rootName);
    switch (h.type) {
      case 'file': return this.#onFile(h, rootName, rel, write);
      case 'directory': return this.#onDirectory(h, rootName, rel, write);
      case 'symlink': return this.#onSymlink(h, rootName, rel, write);
      case 'hardlink': return this.#onHardlink(h, rootName, rel, write);
      case 'char-device': return this.#onWhiteout(h, rootName, rel, write);
      case 'block-device': throw refuse(h.path, 'device nodes are not restored');
      case 'fifo': throw refuse(h.path, 'FIFOs are not restored');
      default: throw refuse(h.path, 'unsupported entry type');
    }
  }

  #onFile(h: EntryHeader, rootName: string, rel: string, write: boolean): void {
    if (rel === '') throw refuse(h.path, 'the root must be a directory');
    const xattrs = this.#checkXattrs(h, rootName, 'file');
    if (h.metacopySize !== undefined && (h.size !== 0 || !xattrs.has(OVERLAY_METACOPY))) {
      throw refuse(h.path, `a metadata-only size needs ${OVERLAY_METACOPY} and no data`);
    }
    let fd = -1;
    if (write) {
      const { dirFd, name } = this.#parentOf(rootName, rel, h.path);
      fd = this.#createAt(dirFd, name, h.path, (p) =>
        fs.openSync(p, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600));
    }
    this.#sink = { fd, remaining: h.size, pad: padding(h.size), header: h, xattrs };
    this.#state = 'data';
    if (h.size === 0) this.#endData(this.#sink);
  }

  #onDirectory(h: EntryHeader, rootName: string, rel: string, write: boolean): void {
    this.#noData(h);
    const xattrs = this.#checkXattrs(h, rootName, 'directory');
    this.#opts.onEntry?.(0);
    if (!write) return;
    if (rel !== '') {
      const { dirFd, name } = this.#parentOf(rootName, rel, h.path);
      try {
        fs.mkdirSync(procPath(dirFd, name), 0o700);
      } catch (err) {
        if (errno(err) !== 'EEXIST') throw err;
        const st = fs.lstatSync(procPath(dirFd, name));
        if (!st.isDirectory()) {
          fs.unlinkSync(procPath(dirFd, name));
          fs.mkdirSync(procPath(dirFd, name), 0o700);
        }
      }
    }
    this.#dirs.push({ rootName, rel, mode: h.mode, uid: h.uid, gid: h.gid, mtimeNs: h.mtimeNs, xattrs });
  }

  #onSymlink(h: EntryHeader, rootName: string, rel: string, write: boolean): void {
    this.#noData(h);
    if (rel === '') throw refuse(h.path, 'the root must be a directory');
    if (symlinkEscapes(rel, h.linkpath)) throw refuse(h.path, `symlink target ${JSON.stringify(h.linkpath)} leaves the root`);
    this.#noXattrs(h);
    this.#opts.onEntry?.(0);
    if (!write) return;
    const { dirFd, name } = this.#parentOf(rootName, rel, h.path);
    const p = procPath(dirFd, name);
    this.#createAt(dirFd, name, h.path, () => fs.symlinkSync(h.linkpath, p));
    fs.lchownSync(p, this.#toHostId(h.uid), this.#toHostId(h.gid));
    const t = nsToSeconds(h.mtimeNs);
    fs.lutimesSync(p, t, t);
  }

  #onHardlink(h: EntryHeader, rootName: string, rel: string, write: boolean): void {
    this.#noData(h);
    if (rel === '') throw refuse(h.path, 'the root must be a directory');
    const source = splitEntryPath(h.linkpath);
    if (source.rootName !== rootName || source.rel === '') throw refuse(h.path, 'hard link source outside its root');
    this.#noXattrs(h);
    this.#opts.onEntry?.(0);
    if (!write) return;
    // The source is resolved with the same walk (no symlinked directories), then must be a regular file.
    const src = this.#resolveDetached(rootName, source.rel, h.path);
    try {
      const st = fs.lstatSync(procPath(src.dirFd, src.name));
      if (!st.isFile()) throw refuse(h.path, 'hard link source is not a regular file');
      const { dirFd, name } = this.#parentOf(rootName, rel, h.path);
      this.#createAt(dirFd, name, h.path, (p) => fs.linkSync(procPath(src.dirFd, src.name), p));
    } catch (err) {
      if (errno(err) === 'ENOENT') throw refuse(h.path, 'hard link source does not exist (yet)');
      throw err;
    } finally {
      fs.closeSync(src.dirFd);
    }
  }

  /**
   * An overlayfs whiteout (character device 0/0): only in the upper layer; every other device node is
   * refused. Made with mknodat in the fd-walked parent, so never through a symlink.
   */
  #onWhiteout(h: EntryHeader, rootName: string, rel: string, write: boolean): void {
    this.#noData(h);
    if (h.devMajor !== 0 || h.devMinor !== 0) throw refuse(h.path, 'device nodes are not restored');
    if (rootName !== OVERLAY_UPPER_ROOT) throw refuse(h.path, `a whiteout (0/0 device) outside the ${OVERLAY_UPPER_ROOT} root`);
    if (rel === '') throw refuse(h.path, 'the root must be a directory');
    this.#noXattrs(h);
    this.#opts.onEntry?.(0);
    if (!write) return;
    const { dirFd, name } = this.#parentOf(rootName, rel, h.path);
    this.#createAt(dirFd, name, h.path, () => fsops.mkwhiteoutat(dirFd, name));
    const p = procPath(dirFd, name);
    fs.lchownSync(p, this.#toHostId(h.uid), this.#toHostId(h.gid));
    const t = nsToSeconds(h.mtimeNs);
    fs.lutimesSync(p, t, t);
  }

  #noData(h: EntryHeader): void {
    if (h.size !== 0) throw refuse(h.path, 'non-file entry carries data');
  }

  /** The entry's xattrs, checked against what a backup keeps and translated to the host (xattrs.ts). */
  #checkXattrs(h: EntryHeader, rootName: string, kind: XattrEntryKind): Map<string, Buffer> {
    if (!h.xattrs) return new Map();
    const ctx = { upper: rootName === OVERLAY_UPPER_ROOT, uidBase: this.#opts.uidBase, idCount: this.#idCount };
    return xattrsFromArchive(h.xattrs, kind, ctx, (why) => refuse(h.path, why));
  }

  #noXattrs(h: EntryHeader): void {
    if (h.xattrs?.size) throw refuse(h.path, 'xattrs on an entry that is not a file or directory');
    if (h.metacopySize !== undefined) throw refuse(h.path, 'a metadata-only size on an entry that is not a file');
  }

  /** Creates `name` in dirFd with `create`; an existing non-directory there is replaced (tar semantics). */
  #createAt<T>(dirFd: number, name: string, entry: string, create: (p: string) => T): T {
    const p = procPath(dirFd, name);
    try {
      return create(p);
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
    }
    const st = fs.lstatSync(p);
    if (st.isDirectory()) throw refuse(entry, 'would replace a directory');
    fs.unlinkSync(p);
    return create(p);
  }

  /**
   * The parent directory fd of rel inside a root, walking component by component with O_NOFOLLOW.
   * The open chain is kept between entries (archives list siblings together).
   */
  #parentOf(rootName: string, rel: string, entry: string): { dirFd: number; name: string } {
    const parts = rel.split('/');
    const name = parts.pop()!;
    if (this.#chainRoot !== rootName) {
      this.#closeChain();
      this.#chainRoot = rootName;
    }
    let keep = 0;
    while (keep < this.#chain.length && keep < parts.length && this.#chain[keep].name === parts[keep]) keep++;
    while (this.#chain.length > keep) fs.closeSync(this.#chain.pop()!.fd);
    let fd = this.#chain.length ? this.#chain[this.#chain.length - 1].fd : this.#rootFds.get(rootName)!;
    for (let i = keep; i < parts.length; i++) {
      fd = this.#openComponent(fd, parts[i], entry);
      this.#chain.push({ name: parts[i], fd });
    }
    return { dirFd: fd, name };
  }

  /** Like #parentOf but with its own fds (the caller closes dirFd); used for hard link sources. */
  #resolveDetached(rootName: string, rel: string, entry: string): { dirFd: number; name: string } {
    return resolveParent(this.#rootFds.get(rootName)!, rel, entry);
  }

  #openComponent(dirFd: number, part: string, entry: string): number {
    try {
      return openDirAt(dirFd, part);
    } catch (err) {
      if (errno(err) !== 'ENOENT') return rethrowComponent(err, entry, part);
    }
    // Missing parents are created, as tar does; their metadata comes from their own entry if one follows.
    fs.mkdirSync(procPath(dirFd, part), 0o755);
    return openDirAt(dirFd, part);
  }

  #setFdMetadata(fd: number, h: EntryHeader, xattrs: Map<string, Buffer>): void {
    fs.fchownSync(fd, this.#toHostId(h.uid), this.#toHostId(h.gid));
    fs.fchmodSync(fd, h.mode & 0o7777); // after chown, which clears setuid/setgid
    // After chown and the data, both of which drop security.capability (capabilities(7)).
    for (const [name, value] of xattrs) fsops.setXattr(fd, name, value);
    const t = nsToSeconds(h.mtimeNs);
    fs.futimesSync(fd, t, t);
  }

  // Deepest first, so a parent's mtime is set after its children were touched.
  #applyDirMetadata(): void {
    this.#dirs.sort((a, b) => (a.rel < b.rel ? 1 : a.rel > b.rel ? -1 : 0));
    for (const d of this.#dirs) {
      const rootFd = this.#rootFds.get(d.rootName)!;
      const fd = d.rel === ''
        ? fs.openSync(`/proc/self/fd/${rootFd}`, C.O_RDONLY | C.O_DIRECTORY)
        : this.#resolveDir(rootFd, d.rel);
      try {
        this.#setFdMetadata(fd, { ...emptyHeader(), mode: d.mode, uid: d.uid, gid: d.gid, mtimeNs: d.mtimeNs }, d.xattrs);
      } finally {
        fs.closeSync(fd);
      }
    }
  }

  #resolveDir(rootFd: number, rel: string): number {
    const { dirFd, name } = resolveParent(rootFd, rel, rel);
    try {
      return openExisting(dirFd, name, rel);
    } finally {
      fs.closeSync(dirFd);
    }
  }

  #toHostId(id: number): number {
    return (id >= 0 && id < this.#idCount ? id : OVERFLOW_ID) + this.#opts.uidBase;
  }

  #closeChain(): void {
    while (this.#chain.length) fs.closeSync(this.#chain.pop()!.fd);
  }

  #closeAll(): void {
    if (this.#sink && this.#sink.fd >= 0) fs.closeSync(this.#sink.fd);
    this.#sink = undefined;
    this.#closeChain();
    for (const fd of this.#rootFds.values()) fs.closeSync(fd);
    this.#rootFds.clear();
  }
}

function resolveParent(rootFd: number, rel: string, entry: string): { dirFd: number; name: string } {
  const parts = rel.split('/');
  const name = parts.pop()!;
  let fd = fs.openSync(`/proc/self/fd/${rootFd}`, C.O_RDONLY | C.O_DIRECTORY);
  try {
    for (const part of parts) {
      const next = openExisting(fd, part, entry);
      fs.closeSync(fd);
      fd = next;
    }
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return { dirFd: fd, name };
}

function openExisting(dirFd: number, part: string, entry: string): number {
  try {
    return openDirAt(dirFd, part);
  } catch (err) {
    return rethrowComponent(err, entry, part);
  }
}

function rethrowComponent(err: unknown, entry: string, part: string): never {
  const code = errno(err);
  if (code === 'ENOTDIR' || code === 'ELOOP') throw refuse(entry, `path goes through "${part}", which is not a directory (a symlink?)`);
  if (code === 'ENOENT') throw refuse(entry, `"${part}" does not exist`);
  throw err;
}

function emptyHeader(): EntryHeader {
  return { path: '', type: 'directory', mode: 0, uid: 0, gid: 0, size: 0, mtimeNs: 0n, linkpath: '' };
}

// libuv truncates utimes' double seconds to whole microseconds, and a double near 1.8e9 s is off by up to
// 0.12 us: half a microsecond more keeps the truncation on the intended microsecond.
function nsToSeconds(ns: bigint): number {
  return (Number(ns / 1000n) + 0.5) / 1e6;
}

function writeAll(fd: number, buf: Buffer, off: number, len: number): void {
  while (len > 0) {
    const n = fs.writeSync(fd, buf, off, len);
    off += n;
    len -= n;
  }
}

/**
 * Splits an entry path into its root name and the relative path below it, refusing anything that could
 * name a place outside: absolute paths, `..`, NUL. Empty and `.` components are dropped.
 */
export function splitEntryPath(p: string): { rootName: string; rel: string } {
  if (p.startsWith('/')) throw refuse(p, 'absolute path');
  if (p.includes('\0')) throw refuse(p, 'NUL in path');
  const parts = p.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.includes('..')) throw refuse(p, '".." in path');
  if (parts.length === 0) throw refuse(p, 'empty path');
  return { rootName: parts[0], rel: parts.slice(1).join('/') };
}
