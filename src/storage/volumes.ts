// Each workspace's writable content (its dir: the overlay's upper layer, /workspace, init's records) on a
// volume of its own: a sparse ext4 image on a loop device, whose size is the workspace's disk limit, with
// everything in one fscrypt v2 directory (AES-256-XTS contents, AES-256-CTS names) under a 32-byte key
// made for that workspace alone. The key exists at rest only sealed under the node's KEK (DiskKeyStore);
// the kernel holds it only while the volume is open. docs/storage.md.
//
// <stateDir>/storage/images/<id>.img   the volume (ciphertext, but for ext4's own metadata)
// <stateDir>/storage/mnt/<id>/         where it is mounted while open; mnt/<id>/ws is the encrypted dir
// <stateDir>/workspaces/<id>/          mnt/<id>/ws bind-mounted: what the rest of the node sees
//
// Whatever kill -9 interrupts, the next start finds its way from what is on disk and in the kernel (a mount
// point or not, a key or not), never from memory: see sweep() and the order in create() and teardown.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';
import { native, NativeError } from '../native';
import { inodesFor, makeImage, mountImage } from './ext4';
import { loopsUnder } from './loops';
import { VolumePool } from './pool';
import type { DiskKeyStore, DiskUsage, StorageLog, VolumeLimits } from './types';

export const VOLUME_KEY_BYTES = 32;

/** Where the crash tests kill the daemon inside storage's own steps (TETRIX_TEST_CRASH_AT, as service.ts). */
export type VolumeCrashPoint = 'volume-key-sealed' | 'volume-mounted' | 'volume-key-removed';
const crashAt = process.env.TETRIX_TEST_CRASH_AT;
function crashPoint(point: VolumeCrashPoint): void {
  if (crashAt === point) process.kill(process.pid, 'SIGKILL');
}
const ENCRYPTED_DIR = 'ws';

export interface WorkspaceVolumesOptions {
  /** <stateDir>/storage */
  dir: string;
  keys: DiskKeyStore;
  log: StorageLog;
  /** The limits a workspace gets when it names none; the pool holds images of exactly these. */
  defaults: VolumeLimits;
  /** How many formatted images to keep ready (0: every start formats its own). */
  poolSize: number;
}

interface Hold {
  count: number;
  ready: Promise<void>;
  closeAfter: boolean;
}

export class WorkspaceVolumes {
  private readonly pool: VolumePool;
  private readonly holds = new Map<string, Hold>();
  private readonly lastUsage = new Map<string, DiskUsage>();

  constructor(private readonly o: WorkspaceVolumesOptions) {
    const defaults = { bytes: o.defaults.bytes, inodes: inodesFor(o.defaults) };
    this.pool = new VolumePool(path.join(o.dir, 'pool'), defaults, o.poolSize, (mnt, key) => void encryptedDirOf(mnt, key), o.log);
  }

  /** Makes the directories and (re)starts the pool. Call sweep() once records are loaded. */
  async start(): Promise<void> {
    for (const sub of ['', 'images', 'mnt']) fs.mkdirSync(path.join(this.o.dir, sub), { recursive: true, mode: 0o700 });
    fs.chmodSync(this.o.dir, 0o700);
    await this.pool.start();
  }

  /** Empties the pool (the daemon is going away); workspaces' volumes stay as they are. */
  stop(): Promise<void> {
    return this.pool.close();
  }

  poolFilled(): Promise<void> {
    return this.pool.filled();
  }

  /**
   * A new volume for the workspace, open and bind-mounted at wsDir. The key is sealed and stored before
   * any byte is encrypted under it; a failure (or a crash) at any later step leaves what teardown() and
   * sweep() remove.
   */
  async create(id: string, asked: VolumeLimits, wsDir: string): Promise<void> {
    const limits = { bytes: asked.bytes, inodes: inodesFor(asked) };
    const pooled = fs.existsSync(this.imageFile(id)) ? undefined : this.pool.take(limits);
    if (pooled) {
      try {
        this.o.keys.put(id, pooled.key);
      } finally {
        pooled.key.fill(0);
      }
      crashPoint('volume-key-sealed');
      fs.renameSync(pooled.image, this.imageFile(id)); // the loop device follows the file
      await this.moveMount(pooled.mnt, this.mntDir(id));
      crashPoint('volume-mounted');
      return this.bind(id, wsDir);
    }
    const key = crypto.randomBytes(VOLUME_KEY_BYTES);
    try {
      this.o.keys.put(id, key);
      await this.claimImage(id, limits);
      await this.mountVolume(id, key);
    } finally {
      key.fill(0);
    }
    await this.bind(id, wsDir);
  }

  /** Opens a closed volume again (a backup of a stopped workspace); a no-op when open, or when the
   *  workspace has no volume (started before the node had volumes: its dir is a plain one). */
  async open(id: string, wsDir: string): Promise<void> {
    if (!fs.existsSync(this.imageFile(id))) return;
    if (!this.isMounted(id)) {
      const key = this.o.keys.get(id);
      if (!key) throw new DomainError('FAILED_PRECONDITION', `storage: workspace "${id}" has no volume key (erased)`);
      try {
        await this.mountVolume(id, key);
      } finally {
        key.fill(0);
      }
    }
    await this.bind(id, wsDir);
  }

  /**
   * Closes the volume: wsDir unmounted, the key removed from the kernel (which first writes back what is
   * dirty and then drops every decrypted page and name: fscrypt.rst), the volume unmounted. The loop
   * device goes with the unmount (LO_FLAGS_AUTOCLEAR). Deferred while a backup holds it open.
   */
  async close(id: string, wsDir: string): Promise<void> {
    const hold = this.holds.get(id);
    if (hold) {
      hold.closeAfter = true;
      return;
    }
    if (isMountPoint(wsDir)) await umount(wsDir);
    const mnt = this.mntDir(id);
    if (!this.isMounted(id)) return;
    this.lastUsage.set(id, usageOf(mnt));
    await this.removeKernelKey(id);
    crashPoint('volume-key-removed');
    await umount(mnt);
  }

  /** Runs fn with the volume open at wsDir, opening it (and closing it after) if it was closed. */
  async whileOpen<T>(id: string, wsDir: string, fn: () => Promise<T>): Promise<T> {
    let hold = this.holds.get(id);
    if (!hold) {
      const wasOpen = this.isMounted(id) && isMountPoint(wsDir);
      hold = { count: 0, ready: wasOpen ? Promise.resolve() : this.open(id, wsDir), closeAfter: !wasOpen };
      this.holds.set(id, hold);
    }
    hold.count++;
    try {
      await hold.ready;
      return await fn();
    } finally {
      if (--hold.count === 0) {
        this.holds.delete(id);
        if (hold.closeAfter) await this.close(id, wsDir);
      }
    }
  }

  /**
   * Crypto-erase, teardown's first step: the sealed key is deleted for good and the kernel's copy removed.
   * From here on nothing on the node opens the volume; removing its files only reclaims the space.
   */
  async eraseKey(id: string): Promise<void> {
    this.o.keys.erase(id);
    if (this.isMounted(id)) await this.removeKernelKey(id);
  }

  /** After eraseKey and the workspace dir's removal: unmounts and deletes the volume. Idempotent. */
  async destroy(id: string): Promise<void> {
    this.holds.delete(id);
    this.lastUsage.delete(id);
    const mnt = this.mntDir(id);
    if (this.isMounted(id)) await umount(mnt);
    fs.rmSync(this.imageFile(id), { force: true });
    fs.rmSync(mnt, { recursive: true, force: true });
  }

  /** statfs of the open volume, else what it held when it closed. */
  usage(id: string): DiskUsage | undefined {
    if (this.isMounted(id)) {
      const u = usageOf(this.mntDir(id));
      this.lastUsage.set(id, u);
      return u;
    }
    return this.lastUsage.get(id);
  }

  /**
   * Refuses (RESOURCE_EXHAUSTED, naming the field) a restore whose files cannot fit in the open volume,
   * before any of it is written. need is what the backup's manifest records: file bytes and entries.
   */
  checkFits(id: string, need: { bytes: number; files: number }): void {
    const u = this.usage(id);
    if (!u) throw new DomainError('FAILED_PRECONDITION', `storage: workspace "${id}" has no open volume`);
    const free = u.limitBytes - u.usedBytes;
    if (need.bytes > free) {
      throw new DomainError('RESOURCE_EXHAUSTED', `restore_from: the backup holds ${need.bytes} bytes of files, more than the ${free} bytes resources.disk_bytes leaves free`);
    }
    const freeInodes = u.limitInodes - u.usedInodes;
    if (need.files > freeInodes) {
      throw new DomainError('RESOURCE_EXHAUSTED', `restore_from: the backup holds ${need.files} files, more than the ${freeInodes} resources.disk_inodes leaves free`);
    }
  }

  /**
   * After a restart, with the records loaded: volumes, mounts and loop devices that no live workspace
   * accounts for are removed (their keys are already gone with their records).
   */
  async sweep(liveIds: ReadonlySet<string>): Promise<number> {
    let removed = 0;
    for (const id of readdir(path.join(this.o.dir, 'mnt'))) {
      if (liveIds.has(id)) continue;
      if (this.isMounted(id)) await umount(this.mntDir(id));
      fs.rmSync(this.mntDir(id), { recursive: true, force: true });
      removed++;
    }
    for (const name of readdir(path.join(this.o.dir, 'images'))) {
      if (name.endsWith('.img') && liveIds.has(name.slice(0, -4))) continue;
      fs.rmSync(path.join(this.o.dir, 'images', name), { force: true });
      removed++;
    }
    // A device bound to one of ours but mounted nowhere (AUTOCLEAR makes this rare: an older daemon's, say).
    const mounted = new Set([...liveIds].filter((id) => this.isMounted(id)).map((id) => this.imageFile(id)));
    for (const loop of loopsUnder(this.o.dir)) {
      if (mounted.has(loop.backingFile) || loop.backingFile.startsWith(this.pool.dir + '/')) continue;
      try {
        native.loopClear(loop.minor);
        removed++;
      } catch (err) {
        this.o.log.warn({ loop: loop.minor, err: (err as Error).message }, 'storage: loop device not cleared');
      }
    }
    if (removed > 0) this.o.log.warn({ removed }, 'storage: removed volumes no workspace accounts for');
    return removed;
  }

  // --- steps -------------------------------------------------------------------------------------

  private imageFile(id: string): string {
    return path.join(this.o.dir, 'images', `${id}.img`);
  }

  private mntDir(id: string): string {
    return path.join(this.o.dir, 'mnt', id);
  }

  private isMounted(id: string): boolean {
    return isMountPoint(this.mntDir(id));
  }

  /** An image made now (none of these limits in the pool); kept if a crashed create made it already. */
  private async claimImage(id: string, limits: VolumeLimits): Promise<void> {
    const file = this.imageFile(id);
    if (fs.existsSync(file)) return;
    const temporary = `${file}.making`;
    fs.rmSync(temporary, { force: true });
    await makeImage(temporary, limits.bytes, limits.inodes);
    fs.renameSync(temporary, file);
  }

  /**
   * Mounts the image (unless mounted) and gives the kernel the key. A volume opened for the first time gets
   * its encrypted dir; one opened again must carry a policy naming this very key, or it is refused.
   */
  private async mountVolume(id: string, key: Buffer): Promise<void> {
    const mnt = this.mntDir(id);
    fs.mkdirSync(mnt, { recursive: true, mode: 0o700 });
    if (!this.isMounted(id)) {
      try {
        await mountImage(this.imageFile(id), mnt, `tetrix:${id}`);
      } catch (err) {
        throw new DomainError('INTERNAL', `storage: mount the volume of "${id}": ${(err as Error).message}`, { cause: err });
      }
    }
    encryptedDirOf(mnt, key, id);
  }

  /**
   * One mount call, where attaching and mounting anew is the slow part of a start. MS_MOVE is refused
   * (EINVAL) when the mount's parent is shared, as / is under systemd: then a bind, and the pool's mount detached.
   */
  private async moveMount(from: string, to: string): Promise<void> {
    fs.mkdirSync(to, { recursive: true, mode: 0o700 });
    try {
      await native.mountAsync(from, to, '', native.constants.MS_MOVE, '');
    } catch (err) {
      if (!(err instanceof NativeError && err.code === 'EINVAL')) throw err;
      await native.mountAsync(from, to, '', native.constants.MS_BIND, '');
      await native.umountAsync(from, native.constants.MNT_DETACH);
    }
    fs.rmdirSync(from);
  }

  private async bind(id: string, wsDir: string): Promise<void> {
    if (isMountPoint(wsDir)) return;
    fs.mkdirSync(wsDir, { recursive: true, mode: 0o711 });
    await native.mountAsync(path.join(this.mntDir(id), ENCRYPTED_DIR), wsDir, '', native.constants.MS_BIND, '');
  }

  private async removeKernelKey(id: string): Promise<void> {
    const dir = path.join(this.mntDir(id), ENCRYPTED_DIR);
    const policy = fs.existsSync(dir) ? native.fscryptPolicyOf(dir) : null;
    if (!policy) return;
    try {
      await native.fscryptRemoveKey(this.mntDir(id), policy.identifier);
    } catch (err) {
      // ENOKEY: already gone. EBUSY: an open file keeps its own key until closed; the unmount ends it.
      if (err instanceof NativeError && (err.code === 'ENOKEY' || err.code === 'EBUSY')) return;
      throw new DomainError('INTERNAL', `storage: remove the key of "${id}": ${(err as Error).message}`, { cause: err });
    }
  }
}

/**
 * Gives the kernel the key and returns the volume's encrypted dir: made under the key on a first open
 * (or after a crash between the mkdir and the policy, when it must still be empty); on a later open its
 * policy must name this very key.
 */
function encryptedDirOf(mnt: string, key: Buffer, id = 'pool'): string {
  const identifier = native.fscryptAddKey(mnt, key);
  const dir = path.join(mnt, ENCRYPTED_DIR);
  const policy = fs.existsSync(dir) ? native.fscryptPolicyOf(dir) : null;
  if (policy && !policy.identifier.equals(identifier)) {
    throw new DomainError('DATA_LOSS', `storage: the volume of "${id}" is encrypted under another key`);
  }
  if (policy) return dir;
  fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  if (fs.readdirSync(dir).length > 0) throw new DomainError('DATA_LOSS', `storage: the volume of "${id}" holds unencrypted files`);
  native.fscryptSetPolicy(dir, identifier);
  return dir;
}

function usageOf(mnt: string): DiskUsage {
  const s = fs.statfsSync(mnt);
  return {
    usedBytes: (s.blocks - s.bfree) * s.bsize,
    limitBytes: s.blocks * s.bsize,
    usedInodes: s.files - s.ffree,
    limitInodes: s.files,
    encrypted: true,
  };
}

function isMountPoint(target: string): boolean {
  try {
    return native.isMountPoint(target);
  } catch (err) {
    if (err instanceof NativeError && err.code === 'ENOENT') return false;
    throw err;
  }
}

/** A plain unmount, so the filesystem goes now; a lazy one only when something still holds it. */
async function umount(target: string): Promise<void> {
  try {
    await native.umountAsync(target, 0);
  } catch (err) {
    if (err instanceof NativeError && (err.code === 'EINVAL' || err.code === 'ENOENT')) return;
    if (err instanceof NativeError && err.code === 'EBUSY') return native.umountAsync(target, native.constants.MNT_DETACH);
    throw new DomainError('INTERNAL', `storage: unmount ${target}: ${(err as Error).message}`, { cause: err });
  }
}

function readdir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}
