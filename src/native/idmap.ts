// native/idmap.c: idmapped bind mounts (mount_setattr MOUNT_ATTR_IDMAP).
import type { NativePart } from './part';

export interface IdmapNative {
  /** Attaches at target (an existing directory) a read-only, nodev, nosuid, recursive bind of source in which
   *  on-disk ids 0..count-1 read as uidBase.. / gidBase.. (MOUNT_ATTR_IDMAP; others read as 65534), on a
   *  worker thread. Rejects with NativeError naming the step: `idmap open_tree: ENOENT`,
   *  `idmap mount_setattr: EINVAL` (a filesystem without idmapped mounts), `idmap clone`, `idmap uid_map`,
   *  `idmap move_mount`...; nothing stays attached or open then. Bad arguments throw TypeError at once. */
  idmapMount(source: string, target: string, uidBase: number, gidBase: number, count: number): Promise<void>;
}

export const idmapPart: NativePart<IdmapNative> = {
  file: 'native/idmap.c',
  functions: { idmapMount: true },
};
