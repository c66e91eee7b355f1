// The addon's file system calls for backup and restore (native/fsops.c): overlayfs whiteouts and xattrs,
// which Node has no calls for. Loaded through the one typed door, src/sandbox/native.ts.
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

function loadFsOps(): FsOpsAddon {
  const addon = native as NativeAddon & Partial<FsOpsAddon>;
  if (typeof addon.listXattrs !== 'function' || typeof addon.mkwhiteoutat !== 'function') {
    throw new Error('native addon has no fsops (native/fsops.c): rebuild it with "node-gyp rebuild -C native"');
  }
  return addon as FsOpsAddon;
}

export const fsops: FsOpsAddon = loadFsOps();
