// native/loop.c: loop devices for workspace volumes (src/storage/).
import type { NativePart } from './part';

export interface LoopNative {
  /**
   * Attaches image to a free loop device (LOOP_CONFIGURE, LO_FLAGS_AUTOCLEAR, 4 KiB blocks, direct I/O if
   * asked) and mounts it at target in the same worker call; resolves to the device's number. `label` goes
   * in lo_file_name. NativeError(`LOOP_CONFIGURE`, `mount`...): nothing stays attached then.
   */
  loopMount(image: string, target: string, fstype: string, flags: number, data: string, label: string, directIo: boolean): Promise<number>;
  /** LOOP_CLR_FD on /dev/loop<minor>; a device still in use is only marked to go at its last close. */
  loopClear(minor: number): void;
}

export const loopPart: NativePart<LoopNative> = {
  file: 'native/loop.c',
  functions: { loopMount: true, loopClear: true },
};
