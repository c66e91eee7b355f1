// native/fsops.c: the file system calls backup and restore need that Node has none for: overlayfs
// whiteouts and xattrs.
import type { NativePart } from './part';

/** An fd (f*xattr) or a path whose last component is never followed (l*xattr). */
export type XattrTarget = number | string;

export interface FsOpsNative {
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

export const fsopsPart: NativePart<FsOpsNative> = {
  file: 'native/fsops.c',
  functions: { listXattrs: true, getXattr: true, setXattr: true, mkwhiteoutat: true },
};
