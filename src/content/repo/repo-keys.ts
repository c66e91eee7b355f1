// A repository's keys. One random 32-byte master key per repository, wrapped under the node's KEK (bound to
// the repository's name and scope, so a key object copied to another repository does not open) and stored as
// `rp-<repo>.key`. Everything else is derived from it with HKDF-SHA256, one label per purpose, so no key
// serves two ends. Layout: docs/backup-format.md ("Repository format").
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import { DomainError } from '../../errors';
import { isKeyId, KeyRing, type WrapFacts } from '../../crypto/keys';
import type { ObjectStorage } from '../storage';
import { gearTable } from './chunker';

export const KEY_OBJECT_FORMAT = 'tetrix-repository-key';

export interface RepoKeys {
  /** AES-256-GCM key of chunks, pack indexes and snapshot trees. */
  readonly seal: Buffer;
  /** HMAC-SHA256 key of chunk ids: an id says nothing about the plaintext to anyone without it. */
  readonly id: Buffer;
  /** FastCDC gear table: chunk boundaries depend on this secret. */
  readonly gear: Buffer;
}

interface KeyObject {
  format: typeof KEY_OBJECT_FORMAT;
  version: 1;
  repo: string;
  scope: string;
  keyId: string;
  wrappedKey: string;
}

export function keyObjectName(repo: string): string {
  return `rp-${repo}.key`;
}

function derive(master: Buffer, repo: string, label: string, bytes = 32): Buffer {
  return Buffer.from(crypto.hkdfSync('sha256', master, Buffer.from(repo), `tetrix/repo/${label}/v1`, bytes));
}

function facts(repo: string, scope: string): WrapFacts {
  return [['repository', repo], ['scope', scope]];
}

function keysOf(master: Buffer, repo: string): RepoKeys {
  return { seal: derive(master, repo, 'seal'), id: derive(master, repo, 'chunk-id'), gear: gearTable(derive(master, repo, 'gear')) };
}

/** Reads (or, the first time, creates) a repository's keys. Callers serialize this per repository. */
export async function openRepoKeys(storage: ObjectStorage, keyring: KeyRing, repo: string, scope: string): Promise<{ keys: RepoKeys; keyId: string }> {
  const existing = await readKeyObject(storage, repo);
  if (existing) {
    if (existing.scope !== scope) throw new DomainError('DATA_LOSS', `repository ${repo}: key object names another scope`);
    const master = keyring.unwrapBound(existing.keyId, Buffer.from(existing.wrappedKey, 'base64'), facts(repo, scope));
    try {
      return { keys: keysOf(master, repo), keyId: existing.keyId };
    } finally {
      master.fill(0);
    }
  }
  const master = crypto.randomBytes(32);
  try {
    const { keyId, wrapped } = keyring.wrapBound(master, facts(repo, scope));
    await writeKeyObject(storage, { format: KEY_OBJECT_FORMAT, version: 1, repo, scope, keyId, wrappedKey: wrapped.toString('base64') });
    return { keys: keysOf(master, repo), keyId };
  } finally {
    master.fill(0);
  }
}

/** The KEK a repository's master key is wrapped under, or undefined for none. */
export async function repoKeyId(storage: ObjectStorage, repo: string): Promise<string | undefined> {
  return (await readKeyObject(storage, repo))?.keyId;
}

/** Re-wraps a repository's master key under toKeyId; chunks and snapshots stay as they are. */
export async function rewrapRepoKey(storage: ObjectStorage, keyring: KeyRing, repo: string, toKeyId: string): Promise<boolean> {
  const k = await readKeyObject(storage, repo);
  if (!k || k.keyId === toKeyId) return false;
  const master = keyring.unwrapBound(k.keyId, Buffer.from(k.wrappedKey, 'base64'), facts(repo, k.scope));
  try {
    const { wrapped } = keyring.wrapBound(master, facts(repo, k.scope), toKeyId);
    await writeKeyObject(storage, { ...k, keyId: toKeyId, wrappedKey: wrapped.toString('base64') });
  } finally {
    master.fill(0);
  }
  return true;
}

async function readKeyObject(storage: ObjectStorage, repo: string): Promise<KeyObject | undefined> {
  let raw: Buffer;
  try {
    raw = await readSmallObject(storage, keyObjectName(repo), 1 << 16);
  } catch (err) {
    if (err instanceof DomainError && err.code === 'NOT_FOUND') return undefined;
    throw err;
  }
  let k: KeyObject;
  try {
    k = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new DomainError('DATA_LOSS', `repository ${repo}: key object is not JSON`);
  }
  if (k?.format !== KEY_OBJECT_FORMAT || k.version !== 1 || k.repo !== repo || typeof k.scope !== 'string' || !isKeyId(k.keyId) || typeof k.wrappedKey !== 'string') {
    throw new DomainError('DATA_LOSS', `repository ${repo}: key object is malformed`);
  }
  return k;
}

async function writeKeyObject(storage: ObjectStorage, k: KeyObject): Promise<void> {
  await storage.put(keyObjectName(k.repo), Readable.from([Buffer.from(JSON.stringify(k) + '\n')]));
}

/** A whole small object (keys, indexes, snapshots); more than `limit` bytes is DATA_LOSS. */
export async function readSmallObject(storage: ObjectStorage, name: string, limit: number): Promise<Buffer> {
  if (storage.readWhole) return storage.readWhole(name, limit);
  const parts: Buffer[] = [];
  let size = 0;
  for await (const c of await storage.get(name)) {
    size += (c as Buffer).length;
    if (size > limit) throw new DomainError('DATA_LOSS', `object ${name} is larger than ${limit} bytes`);
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}
