// BackupService handlers: list, delete, prune, check (proto/tetrix/agent/v1/backups.proto). The rules are in
// auth.ts; the backups themselves in src/content/repo/formats.ts.
import type { Logger } from 'pino';
import type { BackupServiceHandlers } from '../generated/tetrix/agent/v1/BackupService';
import type { BackupEntry } from '../generated/tetrix/agent/v1/BackupEntry';
import { isAnyBackupId, type BackupFormats, type BackupListing } from '../content/repo/formats';
import { DomainError } from '../errors';
import type { AuditLog } from './audit';
import { authorizeBackupAction, mayListBackup } from './auth';
import { unary } from './handlers';

const FILTER_ID = /^[A-Za-z0-9][A-Za-z0-9._@:-]{0,255}$/;

function filterId(field: string, value: string): string {
  if (value !== '' && !FILTER_ID.test(value)) throw new DomainError('INVALID_ARGUMENT', `${field}: ${JSON.stringify(value.slice(0, 64))} is not an id`);
  return value;
}

function entryOf(b: BackupListing): BackupEntry {
  return {
    backupId: b.backupId, format: b.format, workspaceId: b.binding?.workspaceId ?? '', ownerId: b.binding?.ownerId ?? '',
    teamId: b.binding?.teamId ?? '', kind: b.binding?.kind ?? '', createdUnixMs: String(Date.parse(b.createdAt)),
    logicalBytes: String(b.logicalBytes), storedBytes: String(b.storedBytes), files: String(b.files), roots: b.roots,
  };
}

export function backupHandlers(backups: BackupFormats, audit: AuditLog, log: Logger): BackupServiceHandlers {
  return {
    ListBackups: unary(log, 'ListBackups', async (req, ctx) => {
      if (!ctx.principal) throw new DomainError('UNAUTHENTICATED', 'credentials required');
      const workspaceId = filterId('workspace_id', req.workspaceId);
      const ownerId = filterId('owner_id', req.ownerId);
      const all = await backups.list();
      return {
        backups: all
          .filter((b) => mayListBackup(ctx.principal, b.binding))
          .filter((b) => (workspaceId === '' || b.binding?.workspaceId === workspaceId) && (ownerId === '' || b.binding?.ownerId === ownerId))
          .map(entryOf),
      };
    }),
    DeleteBackup: unary(log, 'DeleteBackup', async (req, ctx) => {
      if (!isAnyBackupId(req.backupId)) throw new DomainError('INVALID_ARGUMENT', 'backup_id: is not a backup id');
      const binding = await backups.claimOf(req.backupId).catch((err: unknown) => {
        // Decided as for an unknown backup: a user learns nothing; an operator hears NOT_FOUND.
        authorizeBackupAction(ctx.principal, { id: req.backupId, binding: undefined }, 'delete-backup', audit);
        throw err;
      });
      authorizeBackupAction(ctx.principal, { id: req.backupId, binding }, 'delete-backup', audit);
      await backups.delete(req.backupId);
      return {};
    }),
    PruneBackups: unary(log, 'PruneBackups', async (req, ctx) => {
      authorizeBackupAction(ctx.principal, { id: '', binding: undefined }, 'prune-backups', audit);
      const r = await backups.prune({ dryRun: req.dryRun });
      const sum = (k: 'packsDeleted' | 'packsRepacked' | 'bytesFreed'): string => String(r.gc.reduce((n, g) => n + g[k], 0));
      return { forgotten: r.forgotten, packsDeleted: sum('packsDeleted'), packsRepacked: sum('packsRepacked'), bytesFreed: sum('bytesFreed') };
    }),
    CheckBackups: unary(log, 'CheckBackups', async (_req, ctx) => {
      authorizeBackupAction(ctx.principal, { id: '', binding: undefined }, 'check-backups', audit);
      const r = await backups.check();
      return { snapshots: String(r.snapshots), chunks: String(r.chunks), errors: r.errors };
    }),
  };
}
