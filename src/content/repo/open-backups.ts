// The node's backups as its config asks: both formats readable, new ones in config.backupFormat, the
// snapshot retention policy from backupKeep*.
import type { Config } from '../../config/config';
import type { KeyRing } from '../../crypto/keys';
import { BackupStore, type BackupLog } from '../backups';
import type { ObjectStorage } from '../storage';
import { BackupFormats } from './formats';
import { SnapshotStore } from './snapshots';

export function openBackups(config: Config, storage: ObjectStorage, keyring: KeyRing, log: BackupLog): BackupFormats {
  return new BackupFormats({
    full: new BackupStore({ storage, keyring, log }),
    snapshots: new SnapshotStore({ storage, keyring, log }),
    write: config.backupFormat,
    retention: { keepLast: config.backupKeepLast, keepDaily: config.backupKeepDaily, keepWeekly: config.backupKeepWeekly },
    log,
  });
}
