// The addon's file system calls for backup and restore (native/fsops.c): overlayfs whiteouts and xattrs,
// which Node has no calls for; and the archive walk of a backup (native/archive.c). Loaded through the one
// typed door, src/sandbox/native.ts.
import { native, NativeAddon } from '../sandbox/native';

/** An fd (f*xattr) or a path whose last component is never followed (l*xattr). */
export type XattrTarget = number | string;

export interface FsOpsAddon {
  /** Names of the extended attributes; [] on a file system without xattrs. NativeError(`flistxattr`...). */
  listXattrs(target: XattrTarget): string[];
  /** The attribute's value, or null when it is not set. NativeError(`lgetxattr <name>`...). */
  getXattr(target: XattrTarget, name: string): Buffer | null;
  /** Creates or replaces the attribute. NativeError(`fsetxattr <name>`: EPERM...). */
  setXattr(target: XattrTarget, name: string, value: Buffer): void;
  /** Creates an overlayfs whiteout (character device 0/0, mode 0) named `name` (one component) in dirFd.
   *  NativeError(`mknodat whiteout`: EEXIST...). */
  mkwhiteoutat(dirFd: number, name: string): void;
}

/** The addon seen as one of its parts; an addon built without that part fails here, naming it. */
function addonPart<T>(what: string, probes: ReadonlyArray<keyof T & string>): T {
  const addon = native as NativeAddon & Partial<T>;
  if (probes.some((name) => typeof addon[name] !== 'function')) {
    throw new Error(`native addon has no ${what}: rebuild it with "node-gyp rebuild -C native"`);
  }
  return addon as T;
}

export const fsops = addonPart<FsOpsAddon>('fsops (native/fsops.c)', ['listXattrs', 'mkwhiteoutat']);

/** A tree walk in progress (native/archive.c); opaque. */
export type NativeArchiveWalk = { readonly __brand: 'NativeArchiveWalk' };

export interface ArchiveWalkFill {
  length: number;   // bytes written at the offset
  /** full: the buffer is full; done: the tree is archived; xattrs: an entry waits for archiveWalkResume;
   *  refused: a symlink leaves the root (message says which). */
  status: 'full' | 'done' | 'xattrs' | 'refused';
  files: number;    // entries archived so far (cumulative)
  bytes: number;    // file bytes archived so far (cumulative)
  skips?: [rel: string, why: string][];
  message?: string;
}

export interface ArchiveWalkAddon {
  /** Starts walking the directory rootFd (duplicated; the caller keeps its own) as archive root `rootName`.
   *  quietXattrs: names the xattr policy drops without a report, so entries with only those never stop. */
  archiveWalkStart(rootFd: number, rootName: string, uidBase: number, idCount: number, upper: boolean,
    quietXattrs: readonly string[]): NativeArchiveWalk;
  /** Writes tar bytes into buf[offset..]. NativeError(`archive walk: open <rel>`...) on an unexpected errno. */
  archiveWalkFill(walk: NativeArchiveWalk, buf: Buffer, offset: number): ArchiveWalkFill;
  /** The entry waiting after status 'xattrs': its fd (the walk's; valid until resume), kind and path. */
  archiveWalkPending(walk: NativeArchiveWalk): { fd: number; kind: 'file' | 'directory'; rel: string };
  /** Emits the waiting entry with the xattr records kept (null: none); metacopy stores an upper-layer file
   *  as metadata only. */
  archiveWalkResume(walk: NativeArchiveWalk, xattrs: [string, Buffer][] | null, metacopy: boolean): void;
  /** Closes every fd the walk holds. */
  archiveWalkClose(walk: NativeArchiveWalk): void;
}

export const archiveWalk = addonPart<ArchiveWalkAddon>('archive walk (native/archive.c)', ['archiveWalkFill']);

/** An extraction in progress (native/extract.c); opaque. */
export type NativeExtraction = { readonly __brand: 'NativeExtraction' };

export interface ExtractResult {
  consumed: number;  // bytes of the chunk used, from the offset
  /** more: feed the next chunk; end: the end-of-archive marker was seen; xattrs: an entry waits for
   *  extractResume; refused: the archive is refused (message, DATA_LOSS). */
  status: 'more' | 'end' | 'xattrs' | 'refused';
  files: number;     // entries extracted so far (cumulative)
  bytes: number;     // file bytes so far (cumulative)
  message?: string;
}

export interface ExtractPending {
  path: string;
  root: string;
  kind: 'file' | 'directory';
  xattrs: [string, Buffer][];
  metacopySize: number;  // -1: none
  size: number;
}

export interface ExtractAddon {
  /** Starts extracting into the root fds (duplicated; -1: check the root's entries but write nothing). */
  extractStart(rootNames: string[], rootFds: number[], uidBase: number, idCount: number): NativeExtraction;
  /** Parses and extracts chunk[offset..]. NativeError(`extract <step> <path>`...) on an unexpected errno. */
  extractFeed(ex: NativeExtraction, chunk: Buffer, offset: number): ExtractResult;
  /** extractFeed on a libuv worker thread. The chunk must stay unchanged, and the extraction otherwise
   *  unused, until the promise settles. */
  extractFeedAsync(ex: NativeExtraction, chunk: Buffer, offset: number): Promise<ExtractResult>;
  /** The entry waiting after status 'xattrs'. */
  extractPending(ex: NativeExtraction): ExtractPending;
  /** Extracts the waiting entry with the host xattr values the policy produced. */
  extractResume(ex: NativeExtraction, xattrs: [string, Buffer][]): ExtractResult;
  /** After the last chunk: directory metadata, deepest first. 'refused' if the end marker is missing. */
  extractFinish(ex: NativeExtraction): ExtractResult;
  /** Closes every fd the extraction holds (after a running feed completes). */
  extractClose(ex: NativeExtraction): void;
}

export const extract = addonPart<ExtractAddon>('extractor (native/extract.c)', ['extractFeed']);
