// Formatted volumes made ahead of need, attached and mounted already, so a start only moves one into
// place: mkfs is 5-16 ms and LOOP_CONFIGURE + mount 0.7 ms on a quiet node but 17 ms median under load
// (it freezes the device's queue and waits for RCU grace periods), against a start budget of 2 ms.
// Only the node's default size is pooled; other sizes are made when asked for. An image is made under a
// temporary name and renamed when complete; a pool volume holds no key and no data, so a restart simply
// unmounts and deletes them all and makes new ones.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { native, NativeError } from '../native';
import { makeImage, mountImage } from './ext4';
import type { StorageLog, VolumeLimits } from './types';

const MAKING = '.making-';
const REFILL_DELAY_MS = 200;
const KEY_BYTES = 32;

export interface PooledVolume {
  image: string;
  /** Where it is mounted now: the taker moves the mount (MS_MOVE) to where it belongs. */
  mnt: string;
  /** The key its encrypted dir is already under (in the kernel too); the taker seals it, then wipes this. */
  key: Buffer;
}

/** Gives the kernel a fresh key for the volume at mnt and makes its encrypted dir under it. */
export type PrepareVolume = (mnt: string, key: Buffer) => void;

export class VolumePool {
  #ready: PooledVolume[] = [];
  #filling: Promise<void> | undefined;
  #closed = false;

  constructor(readonly dir: string, private readonly limits: VolumeLimits & { inodes: number }, private readonly target: number,
    private readonly prepare: PrepareVolume, private readonly log: StorageLog) {}

  get mntRoot(): string {
    return path.join(this.dir, 'mnt');
  }

  /** Removes what an earlier run left (mounted or not) and starts filling. */
  async start(): Promise<void> {
    fs.mkdirSync(this.mntRoot, { recursive: true, mode: 0o700 });
    await this.removeAll();
    this.refill();
  }

  /** A ready volume of exactly these limits, now the caller's; undefined when none is ready. */
  take(limits: VolumeLimits): PooledVolume | undefined {
    if (limits.bytes !== this.limits.bytes || limits.inodes !== this.limits.inodes) return undefined;
    const volume = this.#ready.shift();
    // Later, not now: spawning mkfs costs the event loop 5-10 ms under load, which the start taking this
    // volume would wait out (measured: take() 11.5 ms median with the refill begun here).
    setTimeout(() => this.refill(), REFILL_DELAY_MS).unref();
    return volume;
  }

  /** Resolves when the pool is full (tests, benchmarks). */
  async filled(): Promise<void> {
    this.refill();
    while (this.#filling) await this.#filling;
  }

  /** Stops filling and unmounts and deletes what is ready (the daemon is going away). */
  async close(): Promise<void> {
    this.#closed = true;
    await this.filled();
    await this.removeAll();
  }

  private async removeAll(): Promise<void> {
    for (const v of this.#ready) v.key.fill(0);
    this.#ready = [];
    for (const name of fs.readdirSync(this.mntRoot)) {
      const mnt = path.join(this.mntRoot, name);
      await native.umountAsync(mnt, native.constants.MNT_DETACH).catch((err: unknown) => {
        if (!(err instanceof NativeError && (err.code === 'EINVAL' || err.code === 'ENOENT'))) throw err;
      });
      fs.rmdirSync(mnt);
    }
    for (const name of fs.readdirSync(this.dir)) if (name !== 'mnt') fs.rmSync(path.join(this.dir, name), { force: true });
  }

  private prefix(): string {
    return `${this.limits.bytes}-${this.limits.inodes}-`;
  }

  // One volume at a time, in the background: the pool never competes with starts for more than a core.
  private refill(): void {
    if (this.#filling || this.#closed || this.target === 0) return;
    this.#filling = (async () => {
      while (!this.#closed && this.#ready.length < this.target) this.#ready.push(await this.makeOne());
    })()
      .catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'storage: pool refill failed'))
      .finally(() => {
        this.#filling = undefined;
      });
  }

  private async makeOne(): Promise<PooledVolume> {
    const name = `${this.prefix()}${crypto.randomBytes(6).toString('hex')}`;
    const temporary = path.join(this.dir, `${MAKING}${name}.img`);
    await makeImage(temporary, this.limits.bytes, this.limits.inodes);
    const image = path.join(this.dir, `${name}.img`);
    fs.renameSync(temporary, image);
    const mnt = path.join(this.mntRoot, name);
    fs.mkdirSync(mnt, { mode: 0o700 });
    try {
      await mountImage(image, mnt, 'tetrix:pool');
    } catch (err) {
      fs.rmdirSync(mnt);
      fs.rmSync(image, { force: true });
      throw err;
    }
    // Keyed now rather than at the start that takes it; a daemon killed before then loses the key with
    // the volume, which holds nothing yet and which the next start deletes.
    const key = crypto.randomBytes(KEY_BYTES);
    this.prepare(mnt, key);
    return { image, mnt, key };
  }
}
