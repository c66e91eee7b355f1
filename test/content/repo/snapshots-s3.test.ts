// The snapshot suite against a real S3-speaking server (s3rver) on loopback.
import t, { Test } from 'tap';
import { S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import { S3ObjectStorage } from '../../../src/content/storage-s3';
import { tempDir } from '../backup-suite';
import { repoSuite } from './repo-suite';
// eslint-disable-next-line @typescript-eslint/no-var-requires
const S3rver = require('s3rver');

const BUCKET = 'tetrix-snapshots';

async function startS3(t: Test): Promise<S3ClientConfig> {
  const server = new S3rver({
    address: '127.0.0.1', port: 0, silent: true, directory: tempDir(t, 's3rver-repo'), configureBuckets: [{ name: BUCKET }],
  });
  const { port } = await server.run();
  t.teardown(() => server.close());
  return {
    endpoint: `http://127.0.0.1:${port}`, region: 'us-east-1', forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  };
}

repoSuite(t, async (t) => {
  const clientConfig = await startS3(t);
  const client = new S3Client(clientConfig);
  t.teardown(() => client.destroy());
  const prefix = `node-${process.pid}/`;
  return {
    storage: new S3ObjectStorage({ bucket: BUCKET, prefix, client, partSize: 5 << 20 }),
    childConfig: { kind: 's3', bucket: BUCKET, prefix, clientConfig },
  };
}, { crashPoints: ['index-stored'], storageOnly: true });
