// What storageBackend ext4-fscrypt needs of the host, checked before the daemon makes anything: a start
// that finds out at its first workspace would fail every workspace instead of refusing the daemon.
import fs from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { DomainError } from '../errors';

const run = promisify(execFile);

export async function storageProblems(): Promise<string[]> {
  const problems: string[] = [];
  if (!fs.existsSync('/dev/loop-control')) problems.push('no /dev/loop-control: the kernel has no loop devices (CONFIG_BLK_DEV_LOOP)');
  // ext4 publishes its optional features in sysfs; "encryption" is there only with CONFIG_FS_ENCRYPTION.
  if (!fs.existsSync('/sys/fs/ext4/features/encryption')) problems.push('ext4 has no encryption here (/sys/fs/ext4/features/encryption missing: CONFIG_FS_ENCRYPTION)');
  await run('mkfs.ext4', ['-V']).catch(() => problems.push('mkfs.ext4 is not installed (Debian e2fsprogs)'));
  return problems;
}

export async function checkStorageHost(): Promise<void> {
  const problems = await storageProblems();
  if (problems.length > 0) throw new DomainError('FAILED_PRECONDITION', `storageBackend ext4-fscrypt: ${problems.join('; ')}`);
}
