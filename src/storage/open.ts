// The node's workspace volumes as configured (storageBackend), for main.ts to wire.
import { stateLayout } from '../layout';
import type { Config } from '../config/config';
import type { DiskKeyStore, StorageLog } from './types';
import { checkStorageHost } from './preflight';
import { WorkspaceVolumes } from './volumes';

/** undefined for storageBackend none: workspaces keep plain directories under the state dir. */
export async function openWorkspaceVolumes(config: Config, keys: DiskKeyStore, log: StorageLog): Promise<WorkspaceVolumes | undefined> {
  if (config.storageBackend === 'none') return undefined;
  await checkStorageHost();
  const volumes = new WorkspaceVolumes({
    dir: stateLayout(config.stateDir).storage,
    keys,
    log,
    defaults: { bytes: config.defaultDiskBytes, inodes: config.defaultDiskInodes },
    poolSize: config.storagePoolSize,
  });
  await volumes.start();
  return volumes;
}

/** The disk limits a workspace gets when it names none: none at all without volumes. */
export function defaultDisk(config: Config): { diskBytes: number; diskInodes: number } {
  if (config.storageBackend === 'none') return { diskBytes: 0, diskInodes: 0 };
  return { diskBytes: config.defaultDiskBytes, diskInodes: config.defaultDiskInodes };
}
