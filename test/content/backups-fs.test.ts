import t from 'tap';
import path from 'node:path';
import { FsObjectStorage } from '../../src/content/storage-fs';
import { backupSuite, tempDir } from './backup-suite';

backupSuite(t, async (t) => {
  const dir = path.join(tempDir(t, 'store-fs'), 'backups');
  return { storage: new FsObjectStorage({ dir }), childConfig: { kind: 'fs', dir } };
});
