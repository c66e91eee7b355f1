// native/overlay.c: an overlay of many lower layers through fsconfig's "lowerdir+" (Linux >= 6.8).
import type { NativePart } from './part';

export interface OverlayNative {
  /** Mounts at target (an existing directory) a nodev overlay of lowerDirs (top first, 1..500) under
   *  upper with work as its workdir, with metacopy=on where the kernel takes it, on a worker thread.
   *  Rejects with NativeError naming the step and path: `overlay fsconfig lowerdir+ /x: ENOENT`. */
  overlayMountLayers(target: string, lowerDirs: string[], upper: string, work: string): Promise<void>;
}

export const overlayPart: NativePart<OverlayNative> = {
  file: 'native/overlay.c',
  functions: { overlayMountLayers: true },
};
