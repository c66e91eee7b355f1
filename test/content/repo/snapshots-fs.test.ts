import t from 'tap';
import path from 'node:path';
import { FsObjectStorage } from '../../../src/content/storage-fs';
import { tempDir } from '../backup-suite';
import { repoSuite } from './repo-suite';

repoSuite(t, async (t) => {
  const dir = path.join(tempDir(t, 'repo-store'), 'backups');
  return { storage: new FsObjectStorage({ dir }), childConfig: { kind: 'fs', dir } };
});
