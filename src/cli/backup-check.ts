// tetrixctl backup check: every chunk of every repository read and authenticated (restic check --read-data);
// exit 1 when anything is damaged, naming the backups and files it breaks.
import type { Clients } from './client';
import { unaryCall } from './client';
import type { CheckBackupsResponse__Output } from '../generated/tetrix/agent/v1/CheckBackupsResponse';

export async function checkBackups(c: Clients, json: boolean): Promise<number> {
  const r = await unaryCall<CheckBackupsResponse__Output>((md, o, cb) => c.backups.CheckBackups({}, md, o, cb), { deadlineMs: 3_600_000 });
  if (json) process.stdout.write(JSON.stringify(r) + '\n');
  else {
    for (const e of r.errors) process.stdout.write(`damaged: ${e}\n`);
    process.stdout.write(`${r.snapshots} snapshots, ${r.chunks} chunks checked: ${r.errors.length ? `${r.errors.length} errors` : 'no errors'}\n`);
  }
  return r.errors.length ? 1 : 0;
}
