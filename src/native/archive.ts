// native/archive.c: the tree walk that writes a backup's tar stream.
import type { NativePart } from './part';

/** A tree walk in progress; opaque. */
export type NativeArchiveWalk = { readonly __brand: 'NativeArchiveWalk' };

export interface ArchiveWalkFill {
  length: number;   // bytes written at the offset
  /** full: the buffer is full; done: the tree is archived; xattrs: an entry waits for archiveWalkResume;
   *  refused: a symlink leaves the root (message says which); file (after archiveWalkPauseFiles): a regular
   *  file's header is out and its data waits (identity: dev:ino:size:mtime:ctime of the fstat it is read after;
   *  path: the name in that header; size: the data's length). */
  status: 'full' | 'done' | 'xattrs' | 'refused' | 'file';
  identity?: string;
  path?: string;
  size?: number;
  files: number;    // entries archived so far (cumulative)
  bytes: number;    // file bytes archived so far (cumulative)
  skips?: [rel: string, why: string][];
  message?: string;
}

export interface ArchiveWalkNative {
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
  /** Each later fill stops with status 'file' before a regular file's data. */
  archiveWalkPauseFiles(walk: NativeArchiveWalk): void;
  /** After status 'file': ends that file without reading it (its padding still follows). */
  archiveWalkSkipFile(walk: NativeArchiveWalk): void;
}

export const archivePart: NativePart<ArchiveWalkNative> = {
  file: 'native/archive.c',
  functions: {
    archiveWalkStart: true, archiveWalkFill: true, archiveWalkPending: true, archiveWalkResume: true,
    archiveWalkClose: true, archiveWalkPauseFiles: true, archiveWalkSkipFile: true,
  },
  constants: ['TAR_BLOCK'],
};
