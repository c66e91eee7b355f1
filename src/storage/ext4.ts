// Making and mounting a workspace volume: a sparse ext4 image with the encrypt feature (fscrypt).
// Measured on kernel 6.18 (docs/storage.md): mkfs 5 ms (64 MiB, 1 GiB) to 16 ms (10 GiB), 0.1-4 MiB
// of host disk; attach + mount 0.7 ms. So images are made ahead of need (pool.ts), never on a start.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { DomainError } from '../errors';
import { native, NativeError } from '../native';

const run = promisify(execFile);

export const BLOCK_SIZE = 4096;
/** ext4 has one inode per 16 KiB by default (mke2fs.conf inode_ratio); a limit of 0 inodes means that. */
export const BYTES_PER_INODE = 16384;
/**
 * noinit_itable: the image is a fresh sparse file, so its inode tables already read as zeros; the
 * lazyinit thread would only write those zeros and make the sparse file grow by the tables' size.
 * errors=remount-ro: a corrupted volume stops taking writes instead of spreading the damage.
 */
export const MOUNT_OPTIONS = 'noinit_itable,errors=remount-ro';

export const inodesFor = (limits: { bytes: number; inodes: number }): number => limits.inodes || Math.max(1024, Math.floor(limits.bytes / BYTES_PER_INODE));

/**
 * A sparse image of `bytes` formatted ext4 with encryption on. -m 0: no blocks reserved for the
 * filesystem's root, who is host root and never the workspace (its root is an unprivileged host uid).
 * lazy_itable_init/lazy_journal_init: nothing but metadata is written (mkfs.ext4(8) -E).
 */
export async function makeImage(file: string, bytes: number, inodes: number): Promise<void> {
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    fs.ftruncateSync(fd, bytes);
  } finally {
    fs.closeSync(fd);
  }
  try {
    await run('mkfs.ext4', ['-q', '-F', '-b', String(BLOCK_SIZE), '-m', '0', '-N', String(inodes), '-O', 'encrypt',
      '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard', file], { timeout: 60_000 });
  } catch (err) {
    fs.rmSync(file, { force: true });
    const detail = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
    throw new DomainError('INTERNAL', `storage: mkfs.ext4 ${file}: ${detail}`, { cause: err });
  }
}

/**
 * Attaches the image to a loop device and mounts it at mnt. Direct I/O, so the host's page cache does not
 * hold the ciphertext beside ext4's cached plaintext (measured: the same write throughput either way);
 * buffered where the state dir's filesystem has no O_DIRECT (the kernel refuses LOOP_CONFIGURE: EINVAL).
 */
export async function mountImage(image: string, mnt: string, label: string): Promise<void> {
  const mount = (directIo: boolean) => native.loopMount(image, mnt, 'ext4', native.constants.MS_NODEV, MOUNT_OPTIONS, label, directIo);
  try {
    await mount(true);
  } catch (err) {
    if (!(err instanceof NativeError && err.step === 'LOOP_CONFIGURE' && err.code === 'EINVAL')) throw err;
    await mount(false);
  }
}
