// tetrixctl backups [--workspace ID] [--owner USER]: the backups the caller may restore, oldest first.
import type { Clients } from './client';
import { unaryCall } from './client';
import type { Invocation } from './args';
import type { ListBackupsResponse__Output } from '../generated/tetrix/agent/v1/ListBackupsResponse';
import type { BackupEntry__Output } from '../generated/tetrix/agent/v1/BackupEntry';

const mib = (n: string): string => `${(Number(n) / (1 << 20)).toFixed(1)} MiB`;

function rows(list: BackupEntry__Output[]): string {
  const all = [['BACKUP', 'TIME', 'WORKSPACE', 'OWNER', 'FORMAT', 'SIZE', 'STORED'],
    ...list.map((b) => [b.backupId, new Date(Number(b.createdUnixMs)).toISOString().replace(/\.\d+Z$/, 'Z'), b.workspaceId || '-',
      b.ownerId || '-', b.format, mib(b.logicalBytes), mib(b.storedBytes)])];
  const widths = all[0].map((_, i) => Math.max(...all.map((r) => r[i].length)));
  return all.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n') + '\n';
}

export async function listBackups(c: Clients, inv: Invocation, json: boolean): Promise<number> {
  const req = { workspaceId: (inv.values.workspace as string | undefined) ?? '', ownerId: (inv.values.owner as string | undefined) ?? '' };
  const res = await unaryCall<ListBackupsResponse__Output>((md, o, cb) => c.backups.ListBackups(req, md, o, cb));
  if (json) for (const b of res.backups) process.stdout.write(JSON.stringify(b) + '\n');
  else process.stdout.write(rows(res.backups));
  return 0;
}
