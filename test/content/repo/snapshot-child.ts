// A separate process that runs one snapshot backup (or one GC) and is killed by the crash point named in
// TETRIX_TEST_REPO_CRASH_AT (src/content/repo/repository.ts), so a test can check what a kill -9 leaves.
import { S3Client } from '@aws-sdk/client-s3';
import { KeyRing } from '../../../src/crypto/keys';
import { SnapshotStore } from '../../../src/content/repo/snapshots';
import { FsObjectStorage } from '../../../src/content/storage-fs';
import { S3ObjectStorage } from '../../../src/content/storage-s3';
import type { ObjectStorage } from '../../../src/content/storage';

const cfg = JSON.parse(process.argv[2]);
const storage: ObjectStorage = cfg.storage.kind === 'fs'
  ? new FsObjectStorage({ dir: cfg.storage.dir })
  : new S3ObjectStorage({ bucket: cfg.storage.bucket, prefix: cfg.storage.prefix, client: new S3Client(cfg.storage.clientConfig), partSize: 5 << 20 });
const store = new SnapshotStore({ storage, keyring: KeyRing.open({ dir: cfg.keysDir }), log: { info() {}, warn() {} }, inProcess: true });
const work = cfg.op === 'gc'
  ? store.gcAll()
  : store.backup({ content: cfg.content }, { uidBase: cfg.uidBase, binding: cfg.binding });
work.then(() => process.stdout.write('done\n'), (err) => { process.stderr.write(`failed: ${err.message}\n`); process.exit(1); });
