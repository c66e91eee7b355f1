// A separate process that runs one backup and reports how many bytes reached storage, so a test can kill -9
// it midway. The bytes are slowed down on their way to the real backend, so "midway" is reliable.
import { S3Client } from '@aws-sdk/client-s3';
import { Readable, Transform } from 'node:stream';
import { KeyRing } from '../../src/crypto/keys';
import { BackupStore } from '../../src/content/backups';
import { FsObjectStorage } from '../../src/content/storage-fs';
import { S3ObjectStorage } from '../../src/content/storage-s3';
import { ObjectStorage } from '../../src/content/storage';

const cfg = JSON.parse(process.argv[2]);
const backend: ObjectStorage = cfg.storage.kind === 'fs'
  ? new FsObjectStorage({ dir: cfg.storage.dir })
  : new S3ObjectStorage({ bucket: cfg.storage.bucket, prefix: cfg.storage.prefix, client: new S3Client(cfg.storage.clientConfig), partSize: 5 << 20 });

let stored = 0;
const slow = () => new Transform({
  transform(chunk: Buffer, _enc, done) {
    stored += chunk.length;
    process.stdout.write(`stored ${stored}\n`);
    setTimeout(() => done(null, chunk), 5);
  },
});
const storage: ObjectStorage = Object.assign(Object.create(backend), {
  put: (name: string, body: Readable, opts?: { signal?: AbortSignal }) => backend.put(name, body.pipe(slow()), opts),
});
const store = new BackupStore({ storage, keyring: KeyRing.open({ dir: cfg.keysDir }), log: { info() {}, warn() {} } });
store.backup({ content: cfg.content }, { uidBase: cfg.uidBase, binding: { workspaceId: 'ws-child', ownerId: 'alice', teamId: '', kind: 'REGULAR' } })
  .then(() => process.stdout.write('done\n'), (err) => { process.stderr.write(`backup failed: ${err.message}\n`); process.exit(1); });
