// tetrixctl backup rm BACKUP...: deletes backups (a snapshot's chunks go at the next `backup prune`).
import type { Clients } from './client';
import { unaryCall } from './client';
import { UsageError, type Invocation } from './args';

export const BACKUP_ID = /^(bk|sn)-\d{8}T\d{6}Z-[0-9a-f]{12}$/;

export function backupIds(inv: Invocation): string[] {
  const ids = inv.args.slice(1);
  if (ids.length === 0) throw new UsageError('backup rm: which backup? (tetrixctl backups lists them)', 'backup');
  for (const id of ids) if (!BACKUP_ID.test(id)) throw new UsageError(`backup rm: "${id}" is not a backup id`, 'backup');
  return ids;
}

export async function removeBackups(c: Clients, ids: string[], json: boolean): Promise<number> {
  for (const backupId of ids) {
    await unaryCall((md, o, cb) => c.backups.DeleteBackup({ backupId }, md, o, cb));
    process.stdout.write(json ? JSON.stringify({ deleted: backupId }) + '\n' : `deleted ${backupId}\n`);
  }
  return 0;
}
