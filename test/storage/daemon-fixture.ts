// Shared by the storage daemon tests: a daemon with encrypted, size-limited volumes, and the counts of
// what a volume holds on the node (loop devices, mounts, sealed keys) that must all go back to zero.
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { Test } from 'tap';
import { native } from '../../src/native';
import { loopsUnder } from '../../src/storage/loops';
import { mountsUnder, startDaemon, type Daemon, type DaemonOptions } from '../helpers/daemon';

export const MiB = 2 ** 20;

export const STORAGE_ARGS = [
  '--storage-backend', 'ext4-fscrypt', '--default-disk-bytes', String(64 * MiB), '--max-disk-bytes', String(256 * MiB),
  '--storage-pool-size', '2',
];

export const startStorageDaemon = (t: Test, extra: string[] = [], opts: DaemonOptions = {}): Promise<Daemon> =>
  startDaemon(t, [...STORAGE_ARGS, ...extra], opts);

export const imageOf = (d: Daemon, id: string): string => path.join(d.stateDir, 'storage', 'images', `${id}.img`);
export const volumeMount = (d: Daemon, id: string): string => path.join(d.stateDir, 'storage', 'mnt', id);

/** The sealed volume key in the state database (null: erased), read as a second reader of the WAL database. */
export function sealedDiskKey(d: Daemon, id: string): string | null | undefined {
  const db = new Database(path.join(d.stateDir, 'state.db'), { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT disk_key_sealed FROM workspaces WHERE id = ?').get(id) as { disk_key_sealed: string | null } | undefined;
    return row?.disk_key_sealed;
  } finally {
    db.close();
  }
}

/** Every file under dir, as paths (for searching the node's disk for bytes that must not be there). */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (p: string): void => {
    for (const e of fs.readdirSync(p, { withFileTypes: true })) {
      const q = path.join(p, e.name);
      if (e.isDirectory()) walk(q);
      else if (e.isFile()) out.push(q);
    }
  };
  walk(dir);
  return out;
}

/** Files under dir holding needle, read whole (test state dirs are small but for sparse images). */
export function filesHolding(dir: string, needle: string | Buffer): string[] {
  return filesUnder(dir).filter((f) => fs.readFileSync(f).includes(needle));
}

/**
 * fscrypt keys the kernel holds, by identifier (hex): each added key shows in /proc/keys as the adding
 * user's claim, ".fscrypt <identifier>.uid.0", until it is removed or its filesystem unmounted.
 */
export function kernelFscryptKeys(): string[] {
  return [...fs.readFileSync('/proc/keys', 'utf8').matchAll(/\.fscrypt\s+([0-9a-f]{32})\.uid\.\d+/g)].map((m) => m[1]);
}

/**
 * Keys the test must not blame on d: those of d's pool volumes (keyed, empty, unassigned by design:
 * src/storage/pool.ts) and those of any other daemon's volumes mounted meanwhile (a soak beside the suite).
 */
function othersKeys(d: Daemon): string[] {
  const pool = path.join(d.stateDir, 'storage', 'pool') + '/';
  const all = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((l) => l.split(' ')[4]);
  const volumes = all.filter((m) => /\/storage\/(pool\/)?mnt\/[^/]+$/.test(m) && (m.startsWith(pool) || !m.startsWith(d.stateDir + '/')));
  return volumes.flatMap((mnt) => {
    try {
      const policy = native.fscryptPolicyOf(path.join(mnt, 'ws'));
      return policy ? [policy.identifier.toString('hex')] : [];
    } catch {
      return [];
    }
  });
}

/** What volumes hold on the node, for this daemon: all must be zero once its workspaces are gone. */
export function volumeLeftovers(d: Daemon): { loops: number; mounts: string[]; images: string[]; keys: number; kernelKeys: string[] } {
  const images = fs.existsSync(path.join(d.stateDir, 'storage', 'images')) ? fs.readdirSync(path.join(d.stateDir, 'storage', 'images')) : [];
  const db = new Database(path.join(d.stateDir, 'state.db'), { readonly: true, fileMustExist: true });
  let keys: number;
  try {
    keys = (db.prepare('SELECT COUNT(*) AS n FROM workspaces WHERE disk_key_sealed IS NOT NULL').get() as { n: number }).n;
  } finally {
    db.close();
  }
  // The pool's formatted volumes are mounted, keyless and empty, by design (src/storage/pool.ts).
  const pool = path.join(d.stateDir, 'storage', 'pool') + '/';
  return {
    loops: loopsUnder(d.stateDir).filter((l) => !l.backingFile.startsWith(pool)).length,
    mounts: mountsUnder(d.stateDir).filter((m) => !m.startsWith(pool)), images, keys,
    kernelKeys: kernelFscryptKeys().filter((k) => !othersKeys(d).includes(k)),
  };
}

/** Waits for the kernel to finish what a lazy unmount began (autoclear runs at the last reference). */
export async function settled<T>(read: () => T, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let v = read();
  while (!ok(v) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
    v = read();
  }
  return v;
}
