// native/mount.c: mount(2), umount2, directories and fifos, and the MS_*, MNT_* and signal constants.
import type { NativePart } from './part';

export interface MountNative {
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  umount(target: string, flags: number): void;
  /** mkdir (existing is fine), chown, chmod for each, in order, on a worker thread. NativeError names the
   *  call and the path ("mkdir /x/y"). */
  makeDirs(dirs: Array<{ path: string; mode: number; uid: number; gid: number }>): Promise<void>;
  /** mount(2) on a worker thread, so a slow mount (an overlay on a busy node) never stalls the event loop. */
  mountAsync(source: string, target: string, fstype: string, flags: number, data: string): Promise<void>;
  /** umount2 on a worker thread: a detach waits for an RCU grace period in the kernel. */
  umountAsync(target: string, flags: number): Promise<void>;
  /** statx's STATX_ATTR_MOUNT_ROOT; a symlink is not followed. NativeError ENOENT, or ENOTSUP before Linux 5.8. */
  isMountPoint(path: string): boolean;
  mkfifo(path: string, mode: number): void;
}

export const mountPart: NativePart<MountNative> = {
  file: 'native/mount.c',
  functions: {
    mount: true, umount: true, makeDirs: true, mountAsync: true, umountAsync: true, isMountPoint: true, mkfifo: true,
  },
  constants: ['MS_BIND', 'MS_NODEV', 'MS_NOSUID', 'MS_RDONLY', 'MS_REMOUNT', 'MNT_DETACH', 'SIGKILL', 'SIGTERM'],
};
