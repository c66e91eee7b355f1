// The node's backups in both formats behind one face: new backups in the configured format (backupFormat),
// every existing backup read in its own (a full backup's id is bk-..., a snapshot's sn-...). The workspace
// layer and the API see only this.
import { DomainError } from '../../errors';
import type { AuthorizeBackup, BackupBinding, BackupLog, BackupOptions, BackupResult, BackupStore, RestoreOptions, SourceDirs } from '../backups';
import { isBackupId } from '../backups';
import { toForget, retentionIsOff, type RetentionPolicy } from './retention';
import { isSnapshotId, scopeOf, type CheckResult, type GcResult, type SnapshotStore } from './snapshots';
import { repoName } from './repository';

export type BackupFormat = 'snapshot' | 'full';

/** One backup as ListBackups shows it. */
export interface BackupListing {
  backupId: string;
  format: BackupFormat;
  createdAt: string;
  roots: string[];
  files: number;
  logicalBytes: number;  // file bytes in the backup
  storedBytes: number;   // what it added to storage (a full backup: its whole data object)
  binding: BackupBinding | undefined;  // undefined: a version 1 full backup
}

export interface PruneResult {
  forgotten: string[];
  gc: GcResult[];
}

export class BackupFormats {
  readonly full: BackupStore;
  readonly snapshots: SnapshotStore;
  readonly #write: BackupFormat;
  readonly #retention: RetentionPolicy;
  readonly #log: BackupLog;
  /** Told of every backup deleted (DeleteBackup, retention, prune): the prebuild tree cache drops its tree. */
  onDeleted: (backupId: string) => void = () => undefined;

  constructor(opts: { full: BackupStore; snapshots: SnapshotStore; write: BackupFormat; retention?: RetentionPolicy; log: BackupLog }) {
    this.#log = opts.log;
    this.full = opts.full;
    this.snapshots = opts.snapshots;
    this.#write = opts.write;
    this.#retention = opts.retention ?? { keepLast: 0, keepDaily: 0, keepWeekly: 0 };
  }

  /** A new backup; with a retention policy, the workspace's snapshots it no longer keeps go after it. */
  async backup(sources: SourceDirs, opts: BackupOptions): Promise<BackupResult> {
    if (this.#write === 'full') return this.full.backup(sources, opts);
    const result = await this.snapshots.backup(sources, opts);
    if (!retentionIsOff(this.#retention)) {
      await this.#applyRetention(opts.binding).catch((err: unknown) =>
        this.#log.warn({ workspace: opts.binding.workspaceId, err: (err as Error).message }, 'retention not applied'));
    }
    return result;
  }

  async #applyRetention(binding: BackupBinding): Promise<void> {
    const mine = (await this.snapshots.list()).filter((s) => s.binding.workspaceId === binding.workspaceId && s.binding.ownerId === binding.ownerId);
    const forget = toForget(mine, this.#retention);
    for (const id of forget) {
      await this.snapshots.delete(id);
      this.onDeleted(id);
    }
    if (forget.length) {
      this.#log.info({ workspace: binding.workspaceId, forgotten: forget }, 'snapshots forgotten by the retention policy');
      await this.snapshots.gc(repoName(scopeOf(binding)));
    }
  }

  restore(backupId: string, target: string | SourceDirs, opts: RestoreOptions): Promise<void> {
    return isSnapshotId(backupId) ? this.snapshots.restore(backupId, target, opts) : this.full.restore(backupId, target, opts);
  }

  open(backupId: string, authorize: AuthorizeBackup): Promise<{ roots: string[]; binding: BackupBinding | undefined; bytes: number; files: number }> {
    return isSnapshotId(backupId) ? this.snapshots.open(backupId, authorize) : this.full.open(backupId, authorize);
  }

  /** Every complete backup of both formats, oldest first. */
  async list(): Promise<BackupListing[]> {
    const full = (await this.full.list()).map((b): BackupListing => ({
      backupId: b.backupId, format: 'full', createdAt: b.createdAt, roots: b.roots, files: b.files, logicalBytes: b.bytes,
      storedBytes: b.size, binding: b.binding,
    }));
    const snaps = (await this.snapshots.list()).map((s): BackupListing => ({
      backupId: s.backupId, format: 'snapshot', createdAt: s.createdAt, roots: s.roots, files: s.files, logicalBytes: s.bytes,
      storedBytes: s.storedBytes, binding: s.binding,
    }));
    return [...full, ...snaps].sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0));
  }

  /** What one backup claims (unverified): for the access decision on deleting it. NOT_FOUND when there is none. */
  async claimOf(backupId: string): Promise<BackupBinding | undefined> {
    if (isSnapshotId(backupId)) return (await this.snapshots.get(backupId)).binding;
    if (isBackupId(backupId)) return (await this.full.get(backupId)).binding;
    throw new DomainError('INVALID_ARGUMENT', `backup_id: ${JSON.stringify(backupId)} is not a backup id`);
  }

  /** Deletes a backup. A snapshot's chunks go at the next prune, unless another snapshot needs them. */
  async delete(backupId: string): Promise<void> {
    await (isSnapshotId(backupId) ? this.snapshots.delete(backupId) : this.full.delete(backupId));
    this.onDeleted(backupId);
  }

  /** The node's retention policy over snapshots (full backups are left as they are), then GC of the
   *  repositories it touched, or of every one when `all`. */
  async prune(opts: { dryRun?: boolean; all?: boolean } = {}): Promise<PruneResult> {
    const snaps = await this.snapshots.list();
    const forgotten = toForget(snaps, this.#retention);
    if (opts.dryRun) return { forgotten, gc: [] };
    const touched = new Set<string>();
    for (const id of forgotten) {
      const s = snaps.find((x) => x.backupId === id)!;
      touched.add(repoName(scopeOf(s.binding)));
      await this.snapshots.delete(id);
      this.onDeleted(id);
    }
    const gc = opts.all || retentionIsOff(this.#retention)
      ? await this.snapshots.gcAll()
      : await Promise.all([...touched].map((r) => this.snapshots.gc(r)));
    return { forgotten, gc };
  }

  check(): Promise<CheckResult> {
    return this.snapshots.check();
  }

  async keyUsage(): Promise<Map<string, number>> {
    const counts = await this.full.keyUsage();
    for (const [k, n] of await this.snapshots.keyUsage()) counts.set(k, (counts.get(k) ?? 0) + n);
    return counts;
  }

  async rewrap(which: 'all', toKeyId?: string): Promise<number> {
    return (await this.full.rewrap(which, toKeyId)) + (await this.snapshots.rewrap(toKeyId));
  }

  cleanupTemporary(): Promise<number> {
    return this.full.cleanupTemporary();
  }
}

/** The object a backup's provenance names and hashes: a full backup's data object, a snapshot's own object
 *  (which binds, through its sealed tree, every chunk of it). */
/** A backup id of either format (bk-… full, sn-… snapshot). */
export function isAnyBackupId(id: string): boolean {
  return isBackupId(id) || isSnapshotId(id);
}

export function storedObjectOf(backupId: string): string {
  return isSnapshotId(backupId) ? `snap-${backupId}` : `${backupId}.data`;
}
