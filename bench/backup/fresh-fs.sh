#!/usr/bin/env bash
# Runs bench/backup/run.sh on a freshly made ext4 (journaled, the mkfs default) on a loop device, so that
# neither contender's restore depends on what the shared machine deleted in the minutes before: this
# machine's root file system is ext4 without a journal, where inode allocation skips inodes freed in the
# last seconds (minutes while their inode table block is dirty), and a big delete anywhere on it made
# restores of the same tree take 3 s or 17 s. Needs root, mkfs.ext4 and losetup. Same variables as run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Room for every round of run.sh without the busy ones and with them (restored trees stay until the end);
# the image is sparse.
size_gib=$(( ( ${TETRIX_BENCH_BYTES:-1073741824} * 16 / 1073741824 ) + 2 ))
work=$(mktemp -d "/var/tmp/tetrix-benchfs-$$-XXXXXX")
image="$work/fs.img"
mnt="$work/mnt"
cleanup() {
  umount "$mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
truncate -s "${size_gib}G" "$image"
# Inode tables and journal zeroed now, not by a kernel thread in the background while the bench runs.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$image"
mkdir "$mnt"
mount -o loop "$image" "$mnt"
TMPDIR="$mnt" bench/backup/run.sh
