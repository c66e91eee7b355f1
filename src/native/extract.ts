// native/extract.c: the restore side, a tar stream extracted under root fds.
import type { NativePart } from './part';

/** An extraction in progress; opaque. */
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

export interface ExtractNative {
  /** Starts extracting into the root fds (duplicated; -1: check the root's entries but write nothing). */
  extractStart(rootNames: string[], rootFds: number[], uidBase: number, idCount: number): NativeExtraction;
  /** An OCI image layer into rootFd (duplicated), in layer mode: paths without a root name, .wh. whiteouts
   *  and opaque markers made overlayfs's, devices skipped (native/extract.c, docs/images.md). */
  extractStartLayer(rootFd: number, idCount: number): NativeExtraction;
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
  /** Layer mode, after extractFinish: parents made for entries without a directory entry of their own. */
  extractImplicitDirs(ex: NativeExtraction): string[];
  /** Closes every fd the extraction holds (after a running feed completes). */
  extractClose(ex: NativeExtraction): void;
}

export const extractPart: NativePart<ExtractNative> = {
  file: 'native/extract.c',
  functions: {
    extractStart: true, extractStartLayer: true, extractFeed: true, extractFeedAsync: true, extractPending: true, extractResume: true,
    extractFinish: true, extractImplicitDirs: true, extractClose: true,
  },
};
