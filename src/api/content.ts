// StartWorkspace's content source (issue 17) to the spec's ContentSpec, field by field. The backup kind is
// restore_from by another name; a prebuild snapshot is restored through restore_from too, so the one access
// rule on backups (auth.ts authorizeRestore) decides who may start from it. Messages never echo a token.
import { invalidArgument } from '../errors';
import type { ContentSource__Output } from '../generated/tetrix/agent/v1/ContentSource';
import type { GitSource__Output } from '../generated/tetrix/agent/v1/GitSource';
import { checkGitSource, NO_CONTENT, NO_GIT, type ContentSpec, type GitSourceSpec } from '../source/spec';

const BACKUP_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function git(field: string, raw: GitSource__Output | null | undefined): GitSourceSpec {
  if (!raw) throw invalidArgument(field, 'is required');
  return checkGitSource(field, { url: raw.url, ref: raw.ref, commit: raw.commit, depth: raw.depth, filter: raw.filter, submodules: raw.submodules, token: raw.token });
}

/** The content spec, and the restore_from it implies (the request's own restore_from must then be empty). */
export function contentSpec(raw: ContentSource__Output | null | undefined, restoreFrom: string): { content: ContentSpec; restoreFrom: string } {
  if (!raw || !raw.kind) return { content: NO_CONTENT, restoreFrom };
  const conflict = (): never => { throw invalidArgument('restore_from', `give content.${raw.kind === 'backupId' ? 'backup_id' : raw.kind} or restore_from, not both`); };
  switch (raw.kind) {
    case 'git':
      return { content: { ...NO_CONTENT, kind: 'git', git: git('content.git', raw.git) }, restoreFrom };
    case 'backupId': {
      const id = raw.backupId ?? '';
      if (!BACKUP_ID.test(id)) throw invalidArgument('content.backup_id', 'is not a backup id');
      if (restoreFrom !== '' && restoreFrom !== id) conflict();
      return { content: NO_CONTENT, restoreFrom: id };
    }
    case 'prebuild': {
      const p = raw.prebuild;
      if (!p) throw invalidArgument('content.prebuild', 'is required');
      if (!BACKUP_ID.test(p.snapshotId)) throw invalidArgument('content.prebuild.snapshot_id', 'is not a snapshot id');
      if (restoreFrom !== '') conflict();
      const g = p.git ? git('content.prebuild.git', p.git) : NO_GIT;
      if (!p.git) throw invalidArgument('content.prebuild.git', 'names the revision to bring the snapshot up to');
      return { content: { kind: 'prebuild', git: g, prebuildSnapshot: p.snapshotId, allowUnverified: p.allowUnverified }, restoreFrom: p.snapshotId };
    }
    default:
      throw invalidArgument('content', `unknown kind ${String(raw.kind)}`);
  }
}
