// Content initialization in the start sequence (issue 17): the prebuild snapshot's provenance checked before
// it is restored, then the git checkout into the content dir before the workload exists. Progress goes to
// the record as it comes, so GetWorkspace and WatchWorkspaces show it while the workspace is CREATING.
// A verified prebuild snapshot becomes /workspace through the node's tree cache when it has one (prebuildTree).
import { DomainError } from '../errors';
import { SourceError } from '../source/checkout';
import { NO_CONTENT } from '../source/spec';
import type { ProvenancePublisher } from './adapters/provenance';
import type { BackupBinding, WorkspaceBackups, WorkspacePrebuildTrees, WorkspaceSource } from './ports';
import { noContentStatus, type ContentSpec, type ContentStatus, type WorkspaceRecord } from './types';

const PROGRESS_EVERY_MS = 250;

export const contentOf = (record: WorkspaceRecord): ContentSpec => record.spec.content ?? NO_CONTENT;

export class ContentInit {
  /** Per start (its record's content status): the stored object its snapshot's provenance verified against. */
  private readonly verifiedObjects = new WeakMap<ContentStatus, string>();

  constructor(private readonly o: {
    source?: WorkspaceSource; provenance?: ProvenancePublisher; backups?: WorkspaceBackups; prebuildTrees?: WorkspacePrebuildTrees;
    save(record: WorkspaceRecord): void;
  }) {}

  /** Before anything exists: a kind this node cannot serve is refused. */
  check(content: ContentSpec = NO_CONTENT): void {
    if (content.kind !== 'none' && !this.o.source) throw new DomainError('FAILED_PRECONDITION', 'content: this node fetches no source');
    if (content.kind === 'prebuild' && !this.o.provenance) throw new DomainError('FAILED_PRECONDITION', 'content.prebuild: this node has no provenance key to verify snapshots with');
  }

  /**
   * The snapshot's provenance must verify with this node's key, unless the request allows otherwise. Runs
   * before the record exists: a refused snapshot leaves nothing behind. Returns the record's first status.
   */
  async verifyPrebuild(content: ContentSpec = NO_CONTENT): Promise<ContentStatus> {
    const status = noContentStatus();
    if (content.kind !== 'prebuild') return status;
    status.prebuildSnapshotId = content.prebuildSnapshot;
    try {
      const verified = await this.o.provenance!.verify(content.prebuildSnapshot);
      Object.assign(status, { prebuildId: verified.invocationId, prebuildVerified: true });
      this.verifiedObjects.set(status, verified.objectSha256);
    } catch (err) {
      if (!content.allowUnverified) {
        const why = err instanceof Error ? err.message : String(err);
        throw new DomainError('FAILED_PRECONDITION', `content.prebuild.snapshot_id: snapshot ${content.prebuildSnapshot} was not verified (${why}); set allow_unverified to start from it anyway`);
      }
    }
    return status;
  }

  /**
   * For a start from a prebuild whose provenance verified (just now, in verifyPrebuild; the access decision
   * came before that): the node's unpacked tree of the snapshot, unpacked now if it has none, for /workspace
   * to be an overlay over. undefined: restore the snapshot into the workspace as any backup (no cache on this
   * node, an unverified snapshot, one with more than /workspace in it, or one too large to cache).
   */
  async prebuildTree(record: WorkspaceRecord, opened: { roots: string[]; binding: BackupBinding | undefined; bytes?: number; files?: number }): Promise<string | undefined> {
    const content = contentOf(record);
    if (content.kind !== 'prebuild') return undefined;
    const status = this.status(record);
    const snapshotId = content.prebuildSnapshot;
    const objectSha256 = this.verifiedObjects.get(status) ?? '';
    status.prebuildTree = 'restored';
    if (!this.o.prebuildTrees || !this.o.backups || !status.prebuildVerified || opened.roots.join() !== 'content') return undefined;
    const backups = this.o.backups;
    return this.o.prebuildTrees.acquire(
      { snapshotId, objectSha256, bytes: opened.bytes ?? 0, ...(opened.files !== undefined ? { files: opened.files } : {}) },
      // Unshifted ids, as an image's files: the idmapped lower shifts them into each workspace's range.
      (dir) => backups.restore(snapshotId, { content: dir }, { uidBase: 0, expectBinding: opened.binding ?? null }),
      (how) => {
        status.prebuildTree = how;
        this.o.save(record);
      },
    );
  }

  /** The checkout (or the update of a restored prebuild checkout); the workload is launched only after. */
  async populate(record: WorkspaceRecord): Promise<void> {
    const content = contentOf(record);
    if (content.kind === 'none') return;
    const status = this.status(record);
    status.phase = 'fetching';
    this.o.save(record);
    let last = 0;
    try {
      const result = await this.o.source!.populate({
        workspaceId: record.spec.id, uidBase: record.status.uidBase, git: content.git,
        update: content.kind === 'prebuild',
        onProgress: (p) => {
          const phaseChanged = p.phase !== status.phase;
          Object.assign(status, p);
          const now = Date.now();
          // Counts at most every PROGRESS_EVERY_MS; a new phase always.
          if (now - last < PROGRESS_EVERY_MS && !phaseChanged) return;
          last = now;
          this.o.save(record);
        },
      });
      status.commit = result.commit;
      status.phase = 'ready';
      this.o.save(record);
    } catch (err) {
      Object.assign(status, { phase: 'failed', failedStep: err instanceof SourceError ? err.step : status.failedStep || 'prepare' });
      throw err;
    }
  }

  private status(record: WorkspaceRecord): ContentStatus {
    return (record.status.content ??= noContentStatus());
  }
}

/** A start that failed in content initialization (reason CONTENT_FAILED rather than SPAWN_FAILED). */
export const isContentFailure = (err: unknown): boolean => err instanceof SourceError;
