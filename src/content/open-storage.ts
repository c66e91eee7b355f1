// The configured home of backups: a directory on the node (the default) or an S3-compatible bucket.
import path from 'node:path';
import type { Config } from '../config/config';
import type { ObjectStorage } from './storage';
import { FsObjectStorage } from './storage-fs';

export function openBackupStorage(config: Config): ObjectStorage {
  if (config.backupStorage === 'fs') return new FsObjectStorage({ dir: config.backupDir || path.join(config.stateDir, 'backups') });
  // Loaded only here: the AWS SDK costs ~7 MiB of memory and 60 ms of start-up on the nodes (the
  // default) that keep backups on disk.
  const { S3ObjectStorage } = require('./storage-s3') as typeof import('./storage-s3');
  return new S3ObjectStorage({
    bucket: config.s3Bucket,
    prefix: config.s3Prefix,
    clientConfig: {
      region: config.s3Region,
      ...(config.s3Endpoint ? { endpoint: config.s3Endpoint, forcePathStyle: true } : {}),
    },
  });
}
