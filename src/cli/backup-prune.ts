// tetrixctl backup prune [--dry-run]: the node's retention policy, then GC of chunks no snapshot needs.
import type { Clients } from './client';
import { unaryCall } from './client';
import type { PruneBackupsResponse__Output } from '../generated/tetrix/agent/v1/PruneBackupsResponse';

export async function pruneBackups(c: Clients, dryRun: boolean, json: boolean): Promise<number> {
  const r = await unaryCall<PruneBackupsResponse__Output>((md, o, cb) => c.backups.PruneBackups({ dryRun }, md, o, cb), { deadlineMs: 3_600_000 });
  if (json) process.stdout.write(JSON.stringify(r) + '\n');
  else {
    for (const id of r.forgotten) process.stdout.write(`${dryRun ? 'would forget' : 'forgot'} ${id}\n`);
    if (!dryRun) process.stdout.write(`${r.packsDeleted} packs deleted, ${r.packsRepacked} repacked, ${(Number(r.bytesFreed) / (1 << 20)).toFixed(1)} MiB freed\n`);
  }
  return 0;
}
