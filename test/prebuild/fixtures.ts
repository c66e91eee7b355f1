// Shared test fixtures for test/prebuild (not a test file itself).
import { Test } from 'tap';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ObjectStorage } from '../../src/content/storage';
import { DomainError } from '../../src/errors';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { PrebuildProvenanceInput, ProvenanceObjectStore } from '../../src/prebuild/provenance';
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

export type TestStore = Pick<ObjectStorage, 'put' | 'get' | 'sha256'> & { dir: string };

/**
 * A directory of objects with the ObjectStorage calls provenance uses (put, get, sha256), one file per
 * object as the fs backend keeps them. Stands in until src/content's fs backend lands.
 */
export async function fsObjectStore(t: Test): Promise<TestStore> {
  const dir = await tempDir(t, 'provstore');
  const file = (name: string): string => path.join(dir, name);
  return {
    dir,
    async put(name, body) {
      const tmp = file(`.${name}.tmp`);
      await pipeline(body, createWriteStream(tmp));
      await fs.rename(tmp, file(name));
      const bytes = await fs.readFile(file(name));
      return { size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') };
    },
    async get(name) {
      await fs.access(file(name)).catch(() => { throw new DomainError('NOT_FOUND', `object ${name}: not found`); });
      return createReadStream(file(name));
    },
    async sha256(name) {
      return createHash('sha256').update(await fs.readFile(file(name))).digest('hex');
    },
  };
}

export async function putBytes(store: TestStore, name: string, bytes: Buffer): Promise<string> {
  return (await store.put(name, Readable.from([bytes]))).sha256;
}

export async function nodeKey(t: Test): Promise<ProvenanceSigningKey> {
  return loadOrCreateSigningKey(await tempDir(t, 'provkey'));
}
