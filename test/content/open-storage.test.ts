// openBackupStorage: backups on disk by default, in a bucket when configured; the AWS SDK (~7 MiB of
// memory after GC, 60 ms of start-up) is loaded only for the bucket.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { defaults } from '../../src/config/config';
import { openBackupStorage } from '../../src/content/open-storage';
import { FsObjectStorage } from '../../src/content/storage-fs';

const awsLoaded = (): boolean => Object.keys(require.cache).some((file) => file.includes(`${path.sep}@aws-sdk${path.sep}client-s3${path.sep}`));

t.test('the default keeps backups under the state dir, without loading the AWS SDK', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-open-storage-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  t.notOk(awsLoaded(), 'not loaded before');
  const storage = openBackupStorage({ ...defaults(), stateDir });
  t.ok(storage instanceof FsObjectStorage, 'a directory on the node');
  t.notOk(awsLoaded(), 'still not loaded');
});

t.test('s3 opens a bucket, loading the SDK then', async (t) => {
  const storage = openBackupStorage({ ...defaults(), backupStorage: 's3', s3Bucket: 'tetrix-open-storage', s3Endpoint: 'http://127.0.0.1:9' });
  t.equal(storage.constructor.name, 'S3ObjectStorage');
  t.ok(awsLoaded(), 'loaded for the bucket');
});
