// Content initialization in the start sequence (issue 17): the prebuild snapshot's provenance checked before
// it is restored, then the git checkout into the content dir before the workload exists. Progress goes to
// the record as it comes, so GetWorkspace and WatchWorkspaces show it while the workspace is CREATING.
import { DomainError } from '../errors';
import { SourceError } from '../source/checkout';
import { NO_CONTENT } from '../source/spec';
import type { ProvenancePublisher } from './adapters/provenance';
import type { WorkspaceSource } from './ports';
import { noContentStatus, type ContentSpec, type ContentStatus, type WorkspaceRecord } from './types';

const PROGRESS_EVERY_MS = 250;

export const contentOf = (record: WorkspaceRecord): ContentSpec => record.spec.content ?? NO_CONTENT;

export class ContentInit {
  constructor(private readonly o: { source?: WorkspaceSource; provenance?: ProvenancePublisher; save(record: WorkspaceRecord): void }) {}

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
    } catch (err) {
      if (!content.allowUnverified) {
        const why = err instanceof Error ? err.message : String(err);
        throw new DomainError('FAILED_PRECONDITION', `content.prebuild.snapshot_id: snapshot ${content.prebuildSnapshot} was not verified (${why}); set allow_unverified to start from it anyway`);
      }
    }
    return status;
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
