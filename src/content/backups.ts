// Encrypted workspace backups: the one entry point the workspace layer and tetrixctl use.
//
// A backup is two objects in storage: `<id>.data` (tar -> zstd -> segmented AES-256-GCM) and
// `<id>.manifest` (JSON naming the data key's wrapping key and the data object's size and sha256).
// The manifest is written last, so a backup exists (is listed, can be restored) only when complete.
// Re-wrapping rewrites only the manifest. Format: docs/backup-format.md.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline as pipelineCb, Readable } from 'node:stream';
import { DomainError } from '../errors';
import { isKeyId, KeyRing } from '../crypto/keys';
import { DecryptStream, DEFAULT_SEGMENT_SIZE, EncryptStream, newDataKey, STREAM_VERSION } from '../crypto/stream';
import { ArchiveRoot } from './archive';
import { COMPRESSION } from './compress';
import { runBackup, runRestore } from './runner-client';
import { HashCounter, ObjectStorage } from './storage';

export const MANIFEST_FORMAT = 'tetrix-backup';
export const MANIFEST_VERSION = 1;
const DATA_SUFFIX = '.data';
const MANIFEST_SUFFIX = '.manifest';
const PROGRESS_INTERVAL_MS = 250;

/** The subset of a pino logger this module uses. */
export interface BackupLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface BackupProgress {
  bytesDone: number;
  filesDone: number;
  bytesTotal: number;   // 0 until known: a backup's estimate comes before its walk (exact at its end), a restore's from the manifest
  filesTotal: number;
}

export interface BackupResult {
  backupId: string;
  size: number;     // bytes of the stored data object
  sha256: string;   // hex, of the stored data object
  keyId: string;    // the KEK that wraps the backup's data key
}

export interface BackupInfo extends BackupResult {
  createdAt: string;
  roots: string[];  // "content", and "upper" when the overlay upper layer was included
  files: number;
  bytes: number;
}

export interface SourceDirs {
  content: string;
  upper?: string;
}

export interface IdOptions {
  uidBase: number;
  idCount?: number;
}

export interface BackupOptions extends IdOptions {
  onProgress?(p: BackupProgress): void;
  signal?: AbortSignal;
}

export interface RestoreOptions extends IdOptions {
  onProgress?(p: BackupProgress): void;
  signal?: AbortSignal;
}

/** What `<id>.manifest` holds (JSON). */
interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  backupId: string;
  createdAt: string;
  object: string;
  size: number;
  sha256: string;
  keyId: string;
  wrappedKey: string;   // base64: nonce || wrapped data key || tag
  streamVersion: number;
  segmentSize: number;
  compression: typeof COMPRESSION;
  roots: string[];
  files: number;
  bytes: number;
}

export class BackupStore {
  readonly #storage: ObjectStorage;
  readonly #keyring: KeyRing;
  readonly #log: BackupLog;
  readonly #active = new Set<string>();
  readonly #inProcess: boolean;

  /**
   * inProcess: archive and extract in this process instead of an archive-runner child (for tools and
   * tests; the daemon keeps the default so its event loop and memory stay out of it).
   */
  constructor(opts: { storage: ObjectStorage; keyring: KeyRing; log: BackupLog; inProcess?: boolean }) {
    this.#storage = opts.storage;
    this.#keyring = opts.keyring;
    this.#log = opts.log;
    this.#inProcess = opts.inProcess ?? false;
  }

  /** Archives, compresses, encrypts and stores the trees; the backup is listed only once complete. */
  async backup(sources: SourceDirs, opts: BackupOptions): Promise<BackupResult> {
    const roots: ArchiveRoot[] = [{ name: 'content', dir: sources.content }];
    if (sources.upper) roots.push({ name: 'upper', dir: sources.upper });
    const backupId = newBackupId();
    const dataKey = newDataKey();
    const { keyId, wrapped } = this.#keyring.wrap(dataKey, wrapContext(backupId));
    const progress = new ProgressReporter(0, 0, opts.onProgress);
    this.#active.add(backupId);
    try {
      const run = runBackup({ op: 'backup', roots, uidBase: opts.uidBase, idCount: opts.idCount }, {
        onTotals: (bytes, files) => progress.setTotals(bytes, files),
        onProgress: (bytes, files) => progress.add(bytes, files),
        onSkip: (rel, why) => this.#log.warn({ backupId, path: rel, why }, 'backup: entry left out'),
        signal: opts.signal,
        inProcess: this.#inProcess,
      });
      const sealed = pipelineCb(run.object, new EncryptStream(dataKey), () => undefined);
      const put = this.#storage.put(backupId + DATA_SUFFIX, sealed, { signal: opts.signal });
      put.catch(() => run.kill());
      // Both must succeed: an upload can complete on a stream the runner ended early.
      const [stored, stats] = await Promise.all([put, run.done]).catch((err) => {
        throw opts.signal?.aborted ? new DomainError('ABORTED', `backup ${backupId} cancelled`, { cause: err }) : err;
      });
      progress.flush();
      const manifest: Manifest = {
        format: MANIFEST_FORMAT, version: MANIFEST_VERSION, backupId, createdAt: new Date().toISOString(),
        object: backupId + DATA_SUFFIX, size: stored.size, sha256: stored.sha256, keyId,
        wrappedKey: wrapped.toString('base64'), streamVersion: STREAM_VERSION, segmentSize: DEFAULT_SEGMENT_SIZE,
        compression: COMPRESSION, roots: roots.map((r) => r.name), files: stats.files, bytes: stats.bytes,
      };
      await this.#writeManifest(manifest);
      this.#log.info({ backupId, size: stored.size, keyId, files: manifest.files }, 'backup stored');
      return { backupId, size: stored.size, sha256: stored.sha256, keyId };
    } catch (err) {
      await this.#storage.delete(backupId + DATA_SUFFIX).catch(() => undefined);
      throw err;
    } finally {
      this.#active.delete(backupId);
      dataKey.fill(0);
    }
  }

  /**
   * Restores a backup into `target` (the content dir, or {content, upper}). Everything is extracted into a
   * sibling staging directory and verified to the final segment before it replaces the target; on any
   * error the target is untouched. DATA_LOSS: altered, truncated or refused content. FAILED_PRECONDITION:
   * the backup's key is not in the keyring. NOT_FOUND: no such backup.
   */
  async restore(backupId: string, target: string | SourceDirs, opts: RestoreOptions): Promise<void> {
    const targets: SourceDirs = typeof target === 'string' ? { content: target } : target;
    const manifest = await this.#readManifest(backupId);
    if (targets.upper && !manifest.roots.includes('upper')) {
      throw new DomainError('FAILED_PRECONDITION', `backup ${backupId} does not include the upper layer`);
    }
    const dataKey = this.#keyring.unwrap(manifest.keyId, Buffer.from(manifest.wrappedKey, 'base64'), wrapContext(backupId));
    const staged = new Map<string, { target: string; staging: string }>();
    try {
      for (const [root, dir] of Object.entries(targets) as [string, string | undefined][]) {
        if (dir) staged.set(root, { target: path.resolve(dir), staging: await makeStagingDir(path.resolve(dir)) });
      }
      const extractRoots: Record<string, string | null> = {};
      for (const root of manifest.roots) extractRoots[root] = staged.get(root)?.staging ?? null;
      const progress = new ProgressReporter(manifest.bytes, manifest.files, opts.onProgress);
      const counter = new HashCounter();
      const source = await this.#storage.get(manifest.object);
      // Decrypted here: the runner child extracts, and its work is kept only if the last segment verified.
      const plain = pipelineCb(source, counter, new DecryptStream(dataKey), () => undefined);
      const stats = await runRestore(
        { op: 'restore', roots: extractRoots, uidBase: opts.uidBase, idCount: opts.idCount },
        plain,
        { onProgress: (bytes, files) => progress.add(bytes, files), signal: opts.signal, inProcess: this.#inProcess },
      ).catch((err) => {
        throw opts.signal?.aborted ? new DomainError('ABORTED', `restore of ${backupId} cancelled`, { cause: err }) : err;
      });
      if (counter.size !== manifest.size || counter.digest() !== manifest.sha256) {
        throw new DomainError('DATA_LOSS', `backup ${backupId}: stored object does not match its manifest`);
      }
      progress.flush();
      for (const { target: t, staging } of staged.values()) await swapIntoPlace(staging, t);
      staged.clear();
      this.#log.info({ backupId, files: stats.files }, 'backup restored');
    } finally {
      dataKey.fill(0);
      for (const { staging } of staged.values()) await fs.promises.rm(staging, { recursive: true, force: true });
    }
  }

  /**
   * Re-wraps backups' data keys under `toKeyId` (default: the current KEK) without touching their content:
   * only the manifests are rewritten. Returns how many were re-wrapped.
   */
  async rewrap(which: string[] | 'all', toKeyId: string = this.#keyring.current().id): Promise<number> {
    if (!this.#keyring.has(toKeyId)) throw new DomainError('FAILED_PRECONDITION', `key ${toKeyId} is not in the keyring`);
    const ids = which === 'all' ? (await this.list()).map((b) => b.backupId) : which;
    let count = 0;
    for (const id of ids) {
      const m = await this.#readManifest(id);
      if (m.keyId === toKeyId) continue;
      const dataKey = this.#keyring.unwrap(m.keyId, Buffer.from(m.wrappedKey, 'base64'), wrapContext(id));
      try {
        const { wrapped } = this.#keyring.wrap(dataKey, wrapContext(id), toKeyId);
        await this.#writeManifest({ ...m, keyId: toKeyId, wrappedKey: wrapped.toString('base64') });
      } finally {
        dataKey.fill(0);
      }
      count++;
    }
    if (count) this.#log.info({ count, keyId: toKeyId }, 'backups re-wrapped');
    return count;
  }

  /** Complete backups, oldest first. */
  async list(): Promise<BackupInfo[]> {
    const objects = await this.#storage.list();
    const out: BackupInfo[] = [];
    for (const o of objects) {
      if (!o.name.endsWith(MANIFEST_SUFFIX)) continue;
      const m = await this.#readManifest(o.name.slice(0, -MANIFEST_SUFFIX.length)).catch((err) => {
        this.#log.warn({ object: o.name, err: (err as Error).message }, 'backup manifest unreadable');
        return undefined;
      });
      if (m) out.push(infoOf(m));
    }
    return out.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0));
  }

  async get(backupId: string): Promise<BackupInfo> {
    return infoOf(await this.#readManifest(backupId));
  }

  /** Deletes a backup: the manifest first, so it is never listed without its data. */
  async delete(backupId: string): Promise<void> {
    checkBackupId(backupId);
    await this.#storage.delete(backupId + MANIFEST_SUFFIX);
    await this.#storage.delete(backupId + DATA_SUFFIX);
  }

  /**
   * Removes what interrupted backups left: the backend's temporaries and data objects without a manifest.
   * Call at daemon start, before any backup. Returns how many were removed.
   */
  async cleanupTemporary(): Promise<number> {
    let removed = await this.#storage.cleanupTemporary();
    const names = new Set((await this.#storage.list()).map((o) => o.name));
    for (const name of names) {
      if (!name.endsWith(DATA_SUFFIX)) continue;
      const id = name.slice(0, -DATA_SUFFIX.length);
      if (names.has(id + MANIFEST_SUFFIX) || this.#active.has(id)) continue;
      await this.#storage.delete(name);
      removed++;
    }
    if (removed) this.#log.info({ removed }, 'backup leftovers removed');
    return removed;
  }

  async #writeManifest(m: Manifest): Promise<void> {
    await this.#storage.put(m.backupId + MANIFEST_SUFFIX, Readable.from([Buffer.from(JSON.stringify(m) + '\n')]));
  }

  async #readManifest(backupId: string): Promise<Manifest> {
    checkBackupId(backupId);
    let raw: Buffer;
    try {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const c of await this.#storage.get(backupId + MANIFEST_SUFFIX)) {
        size += c.length;
        if (size > 1 << 16) throw new DomainError('DATA_LOSS', `backup ${backupId}: manifest too large`);
        chunks.push(c);
      }
      raw = Buffer.concat(chunks);
    } catch (err) {
      if (err instanceof DomainError && err.code === 'NOT_FOUND') {
        throw new DomainError('NOT_FOUND', `backup ${backupId} not found`);
      }
      throw err;
    }
    return parseManifest(raw, backupId);
  }
}

function parseManifest(raw: Buffer, backupId: string): Manifest {
  let m: Manifest;
  try {
    m = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new DomainError('DATA_LOSS', `backup ${backupId}: manifest is not JSON`);
  }
  const ok = m && m.format === MANIFEST_FORMAT && m.version === MANIFEST_VERSION && m.backupId === backupId
    && m.object === backupId + DATA_SUFFIX && Number.isSafeInteger(m.size) && /^[0-9a-f]{64}$/.test(m.sha256)
    && isKeyId(m.keyId) && typeof m.wrappedKey === 'string' && m.streamVersion === STREAM_VERSION
    && m.compression === COMPRESSION && Array.isArray(m.roots) && m.roots.every((r) => r === 'content' || r === 'upper');
  if (!ok) throw new DomainError('DATA_LOSS', `backup ${backupId}: manifest is malformed or of an unknown version`);
  return m;
}

function infoOf(m: Manifest): BackupInfo {
  return {
    backupId: m.backupId, size: m.size, sha256: m.sha256, keyId: m.keyId, createdAt: m.createdAt,
    roots: m.roots, files: m.files, bytes: m.bytes,
  };
}

/** bk-<UTC time>-<random>: sorts by creation, unique without coordination. */
function newBackupId(): string {
  const t = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `bk-${t}-${crypto.randomBytes(6).toString('hex')}`;
}

export function isBackupId(id: string): boolean {
  return /^bk-\d{8}T\d{6}Z-[0-9a-f]{12}$/.test(id);
}

function checkBackupId(id: string): void {
  if (!isBackupId(id)) throw new DomainError('INVALID_ARGUMENT', `backup_id: ${JSON.stringify(id)} is not a backup id`);
}

function wrapContext(backupId: string): string {
  return `backup:${backupId}`;
}

async function makeStagingDir(target: string): Promise<string> {
  const parent = path.dirname(target);
  const st = await fs.promises.stat(parent).catch(() => undefined);
  if (!st?.isDirectory()) throw new DomainError('FAILED_PRECONDITION', `restore target's parent ${parent} does not exist`);
  const staging = path.join(parent, `.${path.basename(target)}.tetrix-restore-${crypto.randomBytes(6).toString('hex')}`);
  await fs.promises.mkdir(staging, { mode: 0o700 });
  return staging;
}

/** Staging replaces target: move the old one aside, move staging in, then delete the old one. */
async function swapIntoPlace(staging: string, target: string): Promise<void> {
  const old = `${path.dirname(target)}/.${path.basename(target)}.tetrix-old-${crypto.randomBytes(6).toString('hex')}`;
  const hadTarget = await fs.promises.lstat(target).then(() => true, () => false);
  if (hadTarget) await fs.promises.rename(target, old);
  try {
    await fs.promises.rename(staging, target);
  } catch (err) {
    if (hadTarget) await fs.promises.rename(old, target);
    throw err;
  }
  if (hadTarget) await fs.promises.rm(old, { recursive: true, force: true });
}

class ProgressReporter {
  bytesDone = 0;
  filesDone = 0;
  #last = 0;

  constructor(public bytesTotal: number, public filesTotal: number, readonly report?: (p: BackupProgress) => void) {}

  /** Sent at once: a client learns the total before the first bytes are done. */
  setTotals(bytes: number, files: number): void {
    this.bytesTotal = bytes;
    this.filesTotal = files;
    this.flush();
  }

  add(bytes: number, files = 1): void {
    this.bytesDone += bytes;
    this.filesDone += files;
    if (!this.report) return;
    const now = Date.now();
    if (now - this.#last >= PROGRESS_INTERVAL_MS) {
      this.#last = now;
      this.flush();
    }
  }

  flush(): void {
    this.report?.({
      bytesDone: this.bytesDone, filesDone: this.filesDone, bytesTotal: this.bytesTotal, filesTotal: this.filesTotal,
    });
  }
}
