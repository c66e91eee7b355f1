// Encrypted workspace backups: the one entry point the workspace layer and tetrixctl use.
//
// A backup is two objects in storage: `<id>.data` (tar -> zstd -> segmented AES-256-GCM) and
// `<id>.manifest` (JSON naming the data key's wrapping key, the data object's size and sha256, and the
// workspace, owner, team and kind the backup was made of). The data key is wrapped with the whole manifest
// bound in, so a manifest changed in storage (its roots, its owner) does not open. The manifest is written
// last, so a backup exists (is listed, can be restored) only when complete. Re-wrapping rewrites only the
// manifest. Format: docs/backup-format.md.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline as pipelineCb, Readable } from 'node:stream';
import { DomainError } from '../errors';
import { isKeyId, KeyRing, type WrapFacts } from '../crypto/keys';
import { DecryptStream, DEFAULT_SEGMENT_SIZE, EncryptStream, newDataKey, STREAM_VERSION } from '../crypto/stream';
import { ArchiveRoot } from './archive';
import { COMPRESSION } from './compress';
import { runBackup, runRestore } from './runner-client';
import { HashCounter, ObjectStorage } from './storage';

export const MANIFEST_FORMAT = 'tetrix-backup';
export const MANIFEST_VERSION = 2;
/** Manifests written before backups recorded their workspace: read, restored only for operators. */
export const LEGACY_MANIFEST_VERSION = 1;
const MAX_BINDING_LENGTH = 256;
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

/** What a backup was made of, recorded in its manifest and bound into its key wrap. */
export interface BackupBinding {
  workspaceId: string;
  ownerId: string;
  teamId: string;   // '' when the workspace had none
  kind: 'REGULAR' | 'PREBUILD';
}

export interface BackupInfo extends BackupResult {
  createdAt: string;
  roots: string[];  // "content", and "upper" when the overlay upper layer was included
  files: number;
  bytes: number;
  /** undefined for a version 1 backup, which did not record it. */
  binding: BackupBinding | undefined;
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
  binding: BackupBinding;
  /** The trees belong to a running workspace: entries it changes during the walk are left out (reported).
   *  Otherwise any change fails the backup (ABORTED). */
  live?: boolean;
  onProgress?(p: BackupProgress): void;
  signal?: AbortSignal;
}

export interface RestoreOptions extends IdOptions {
  /** Restore only if the backup's verified binding is this one (null: a version 1 backup, none). */
  expectBinding?: BackupBinding | null;
  onProgress?(p: BackupProgress): void;
  signal?: AbortSignal;
}

/** The access decision for a backup: throws to refuse. Called with what the manifest claims (undefined:
 *  an unknown or unreadable backup, or a version 1 one) before the claim is verified. */
export type AuthorizeBackup = (binding: BackupBinding | undefined) => void;

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
  // Version 2 on: what the backup was made of.
  workspaceId?: string;
  ownerId?: string;
  teamId?: string;
  kind?: BackupBinding['kind'];
}

export class BackupStore {
  readonly #storage: ObjectStorage;
  readonly #keyring: KeyRing;
  readonly #log: BackupLog;
  // Backups being written, by the key id their data key is wrapped under: a key is in use before its manifest exists.
  readonly #active = new Map<string, string>();
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
    checkBinding(opts.binding, 'binding');
    const backupId = newBackupId();
    const dataKey = newDataKey();
    const progress = new ProgressReporter(0, 0, opts.onProgress);
    // The wrap comes last (with the key current then); until it, the backup counts against the current key.
    this.#active.set(backupId, this.#keyring.current().id);
    try {
      const changes = opts.live ? 'skip' : 'fail';
      const run = runBackup({ op: 'backup', roots, uidBase: opts.uidBase, idCount: opts.idCount, changes }, {
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
      const { workspaceId, ownerId, teamId, kind } = opts.binding;
      const body = {
        format: MANIFEST_FORMAT, version: MANIFEST_VERSION, backupId, createdAt: new Date().toISOString(),
        object: backupId + DATA_SUFFIX, size: stored.size, sha256: stored.sha256,
        streamVersion: STREAM_VERSION, segmentSize: DEFAULT_SEGMENT_SIZE, compression: COMPRESSION,
        roots: roots.map((r) => r.name), files: stats.files, bytes: stats.bytes, workspaceId, ownerId, teamId, kind,
      } as const;
      // Wrapped last: the wrap authenticates the whole manifest, sizes and digest included.
      const { keyId, wrapped } = this.#keyring.wrapBound(dataKey, boundFacts({ ...body, keyId: '', wrappedKey: '' }));
      const manifest: Manifest = { ...body, keyId, wrappedKey: wrapped.toString('base64') };
      await this.#writeManifest(manifest);
      this.#log.info({ backupId, size: stored.size, keyId, files: manifest.files, workspace: workspaceId }, 'backup stored');
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
   * error the target is untouched. DATA_LOSS: altered, truncated or refused content, a manifest that does
   * not authenticate or whose binding is not opts.expectBinding. FAILED_PRECONDITION: the backup's key is not
   * in the keyring. NOT_FOUND: no such backup. Access is decided before, with open().
   */
  async restore(backupId: string, target: string | SourceDirs, opts: RestoreOptions): Promise<void> {
    const targets: SourceDirs = typeof target === 'string' ? { content: target } : target;
    const manifest = await this.#readManifest(backupId);
    // Verified before anything is created or believed: every field of the manifest is bound into the wrap.
    const dataKey = this.#unwrap(manifest);
    const staged = new Map<string, { target: string; staging: string }>();
    try {
      if (opts.expectBinding !== undefined && !sameBinding(bindingOf(manifest), opts.expectBinding)) {
        throw new DomainError('DATA_LOSS', `backup ${backupId}: manifest changed since the restore was authorized`);
      }
      if (targets.upper && !manifest.roots.includes('upper')) {
        throw new DomainError('FAILED_PRECONDITION', `backup ${backupId} does not include the upper layer`);
      }
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
      const dataKey = this.#unwrap(m);
      try {
        // The same facts under the new key: a version 1 backup stays version 1 (it gains no owner here).
        const { wrapped } = m.version === LEGACY_MANIFEST_VERSION
          ? this.#keyring.wrap(dataKey, legacyWrapContext(id), toKeyId)
          : this.#keyring.wrapBound(dataKey, boundFacts(m), toKeyId);
        await this.#writeManifest({ ...m, keyId: toKeyId, wrappedKey: wrapped.toString('base64') });
      } finally {
        dataKey.fill(0);
      }
      count++;
    }
    if (count) this.#log.info({ count, keyId: toKeyId }, 'backups re-wrapped');
    return count;
  }

  /**
   * How many backups (complete, or being written) each key id wraps a data key of. Not list(), which skips
   * what it cannot read: a manifest this node cannot parse (a newer format) counts under the key id it
   * names, and one the storage fails to hand over fails the census, so no key is retired on a guess.
   */
  async keyUsage(): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    const add = (keyId: string): void => void counts.set(keyId, (counts.get(keyId) ?? 0) + 1);
    const seen = new Set<string>();
    for (const o of await this.#storage.list()) {
      const id = o.name.slice(0, -MANIFEST_SUFFIX.length);
      if (!o.name.endsWith(MANIFEST_SUFFIX) || !isBackupId(id)) continue;
      const keyId = await this.#readManifestBytes(id).then(claimedKeyId, (err: unknown) => {
        if (err instanceof DomainError && err.code === 'NOT_FOUND') return undefined; // deleted meanwhile
        throw err;
      });
      seen.add(id);
      if (keyId) add(keyId);
      else this.#log.warn({ object: o.name }, 'backup manifest names no key: nothing can open it');
    }
    for (const [id, keyId] of this.#active) if (!seen.has(id)) add(keyId);
    return counts;
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

  /** What the manifest says, unverified (listing, tools). Use open() before acting on it. */
  async get(backupId: string): Promise<BackupInfo> {
    return infoOf(await this.#readManifest(backupId));
  }

  /**
   * A backup about to be restored: `authorize` decides on what the manifest claims (undefined for an
   * unknown or unreadable backup, or a version 1 one), and only then is the claim verified, so the only
   * callers who learn whether a backup exists or is intact are those it would be restored for.
   * DATA_LOSS: the manifest was changed. FAILED_PRECONDITION: its key is not in the keyring.
   */
  async open(backupId: string, authorize: AuthorizeBackup): Promise<BackupInfo> {
    checkBackupId(backupId);
    let raw: Buffer;
    try {
      raw = await this.#readManifestBytes(backupId);
    } catch (err) {
      authorize(undefined);
      throw err;
    }
    let m: Manifest;
    try {
      m = parseManifest(raw, backupId);
    } catch (err) {
      authorize(claimedBinding(raw));
      throw err;
    }
    authorize(bindingOf(m));
    this.#unwrap(m).fill(0);
    return infoOf(m);
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

  /** The data key; DATA_LOSS unless the manifest is the one it was wrapped with. */
  #unwrap(m: Manifest): Buffer {
    const wrapped = Buffer.from(m.wrappedKey, 'base64');
    return m.version === LEGACY_MANIFEST_VERSION
      ? this.#keyring.unwrap(m.keyId, wrapped, legacyWrapContext(m.backupId))
      : this.#keyring.unwrapBound(m.keyId, wrapped, boundFacts(m));
  }

  async #writeManifest(m: Manifest): Promise<void> {
    await this.#storage.put(m.backupId + MANIFEST_SUFFIX, Readable.from([Buffer.from(JSON.stringify(m) + '\n')]));
  }

  async #readManifest(backupId: string): Promise<Manifest> {
    return parseManifest(await this.#readManifestBytes(backupId), backupId);
  }

  async #readManifestBytes(backupId: string): Promise<Buffer> {
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
    return raw;
  }
}

/** Whom a damaged manifest claims to belong to, if it still says: they, and only they, hear it is damaged. */
function claimedBinding(raw: Buffer): BackupBinding | undefined {
  try {
    const m = JSON.parse(raw.toString('utf8')) as Manifest;
    return m && typeof m === 'object' && m.version === MANIFEST_VERSION && isBinding(m) ? bindingOf(m) : undefined;
  } catch {
    return undefined;
  }
}

/** The key id a manifest names, even one this node cannot parse as a whole. */
function claimedKeyId(raw: Buffer): string | undefined {
  try {
    const keyId = (JSON.parse(raw.toString('utf8')) as Partial<Manifest> | null)?.keyId;
    return typeof keyId === 'string' && isKeyId(keyId) ? keyId : undefined;
  } catch {
    return undefined;
  }
}

function parseManifest(raw: Buffer, backupId: string): Manifest {
  let m: Manifest;
  try {
    m = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new DomainError('DATA_LOSS', `backup ${backupId}: manifest is not JSON`);
  }
  const ok = m && typeof m === 'object' && m.format === MANIFEST_FORMAT
    && (m.version === MANIFEST_VERSION || m.version === LEGACY_MANIFEST_VERSION) && m.backupId === backupId
    && m.object === backupId + DATA_SUFFIX && Number.isSafeInteger(m.size) && /^[0-9a-f]{64}$/.test(m.sha256)
    && isKeyId(m.keyId) && typeof m.wrappedKey === 'string' && m.streamVersion === STREAM_VERSION
    && m.compression === COMPRESSION && Array.isArray(m.roots) && m.roots.every((r) => r === 'content' || r === 'upper')
    && (m.version === LEGACY_MANIFEST_VERSION || isBinding(m));
  if (!ok) throw new DomainError('DATA_LOSS', `backup ${backupId}: manifest is malformed or of an unknown version`);
  return m;
}

function isBinding(b: Partial<BackupBinding>): boolean {
  const id = (v: unknown, empty: boolean): boolean => typeof v === 'string' && v.length <= MAX_BINDING_LENGTH && (empty || v.length > 0);
  return id(b.workspaceId, false) && id(b.ownerId, false) && id(b.teamId, true) && (b.kind === 'REGULAR' || b.kind === 'PREBUILD');
}

function checkBinding(b: BackupBinding, field: string): void {
  if (!isBinding(b)) throw new DomainError('INVALID_ARGUMENT', `${field}: a backup needs its workspace, owner, team and kind`);
}

/** A version 1 manifest binds nothing: whatever owner fields it may carry are not believed. */
function bindingOf(m: Manifest): BackupBinding | undefined {
  if (m.version === LEGACY_MANIFEST_VERSION) return undefined;
  return { workspaceId: m.workspaceId!, ownerId: m.ownerId!, teamId: m.teamId!, kind: m.kind! };
}

function sameBinding(a: BackupBinding | undefined, b: BackupBinding | null): boolean {
  if (!a || !b) return !a && !b;
  return a.workspaceId === b.workspaceId && a.ownerId === b.ownerId && a.teamId === b.teamId && a.kind === b.kind;
}

/**
 * What the wrap of a version 2 backup's data key authenticates: its id and binding by name (so a reader
 * of docs/backup-format.md can see them), and the SHA-256 of every other manifest field but the key id
 * (itself in the wrap's AAD) and the wrapped key (the ciphertext).
 */
function boundFacts(m: Manifest): WrapFacts {
  const { keyId: _keyId, wrappedKey: _wrapped, ...rest } = m;
  const digest = crypto.createHash('sha256').update(canonicalJson(rest)).digest('hex');
  return [
    ['backup', m.backupId], ['workspace', m.workspaceId ?? ''], ['owner', m.ownerId ?? ''], ['team', m.teamId ?? ''],
    ['kind', m.kind ?? ''], ['manifest-sha256', digest],
  ];
}

/** JSON with object keys sorted, so a manifest's digest does not depend on how it was spelled. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : 1));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function infoOf(m: Manifest): BackupInfo {
  return {
    backupId: m.backupId, size: m.size, sha256: m.sha256, keyId: m.keyId, createdAt: m.createdAt,
    roots: m.roots, files: m.files, bytes: m.bytes, binding: bindingOf(m),
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

/** Version 1: the data key was bound to the backup id alone. */
function legacyWrapContext(backupId: string): string {
  return `backup:${backupId}`;
}

export async function makeStagingDir(target: string): Promise<string> {
  const parent = path.dirname(target);
  const st = await fs.promises.stat(parent).catch(() => undefined);
  if (!st?.isDirectory()) throw new DomainError('FAILED_PRECONDITION', `restore target's parent ${parent} does not exist`);
  const staging = path.join(parent, `.${path.basename(target)}.tetrix-restore-${crypto.randomBytes(6).toString('hex')}`);
  await fs.promises.mkdir(staging, { mode: 0o700 });
  return staging;
}

/** Staging replaces target: move the old one aside, move staging in, then delete the old one. */
export async function swapIntoPlace(staging: string, target: string): Promise<void> {
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

export class ProgressReporter {
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
