// What both directions of the archive share: the top-level roots, the id mapping, and how a root is opened.
import fs from 'node:fs';
import { DomainError } from '../errors';

/** Containers see host ids outside their mapped range as the overflow id (see user_namespaces(7)). */
export const OVERFLOW_ID = 65534;
export const DEFAULT_ID_COUNT = 65536;
/** The archive root that holds an overlay upper layer: only there are whiteouts and trusted.overlay.* kept. */
export const OVERLAY_UPPER_ROOT = 'upper';

export interface IdMapping {
  uidBase: number;   // host id of container id 0 (uid and gid alike)
  idCount?: number;  // size of the mapped range, default 65536
}

/** A directory tree stored under a top-level name in the archive (e.g. "content", "upper"). */
export interface ArchiveRoot {
  name: string;
  dir: string;
}

export function openRootDir(dir: string): number {
  try {
    return fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException)?.code;
    throw new DomainError('FAILED_PRECONDITION', `${dir}: not a directory (${code})`, { cause: err });
  }
}

export function checkRootName(name: string): void {
  if (!/^[a-z][a-z0-9-]*$/.test(name)) throw new DomainError('INVALID_ARGUMENT', `archive root name ${JSON.stringify(name)}`);
}
