// Shared test fixtures for test/prebuild (not a test file itself).
import { Test } from 'tap';
import { promises as fs } from 'node:fs';
import { Readable } from 'node:stream';
import { FsObjectStorage } from '../../src/content/storage-fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { PrebuildProvenanceInput } from '../../src/prebuild/provenance';
import { loadOrCreateSigningKey, ProvenanceSigningKey } from '../../src/prebuild/signing-key';

export const SECRET = 'tetrix-secret-value-do-not-record';
export const snapshotBytes = Buffer.from('pretend this is a snapshot archive');

export function sampleInput(overrides: Partial<PrebuildProvenanceInput> = {}): PrebuildProvenanceInput {
  return {
    snapshot: { name: 'snap-1', sha256: createHash('sha256').update(snapshotBytes).digest('hex') },
    source: { repository: 'https://git.example.test/team/app.git', revision: '0123456789abcdef0123456789abcdef01234567' },
    tasks: [
      { name: 'deps', command: ['sh', '-c', 'npm ci'], workingDir: '/workspace', env: { NPM_TOKEN: SECRET, CI: '1' } },
      { name: 'build', command: ['make'], workingDir: '/workspace/app' },
    ],
    image: { ref: 'builtin:busybox', sha256: 'ab'.repeat(32) },
    nodeId: 'node-a',
    tetrixVersion: '0.1.0',
    invocationId: 'pb-1234',
    startedOn: Date.UTC(2025, 0, 2, 3, 4, 5),
    finishedOn: Date.UTC(2025, 0, 2, 3, 9, 5, 250),
    nodeFacts: { kernel: '6.18.0', arch: 'x64' },
    ...overrides,
  };
}

export async function tempDir(t: Test, what: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `tetrix-${what}-${process.pid}-`));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

export type TestStore = FsObjectStorage;

/** The fs storage backend the node uses for backups, over a temp dir. */
export async function fsObjectStore(t: Test): Promise<TestStore> {
  const storage = new FsObjectStorage({ dir: await tempDir(t, 'provstore') });
  await storage.cleanupTemporary();
  return storage;
}

export async function putBytes(store: TestStore, name: string, bytes: Buffer): Promise<string> {
  return (await store.put(name, Readable.from([bytes]))).sha256;
}

export async function nodeKey(t: Test): Promise<ProvenanceSigningKey> {
  return loadOrCreateSigningKey(await tempDir(t, 'provkey'));
}
