// Formatted volumes made ahead of need, so a start only renames one (mkfs is 5-16 ms, a start's budget
// for storage is 2 ms). Only the node's default size is pooled; other sizes are made when asked for.
// An image is made under a temporary name and renamed when complete, so a crash leaves either a whole
// pool image or a temporary that the next start removes.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { makeImage } from './ext4';
import type { StorageLog, VolumeLimits } from './types';

const MAKING = '.making-';

export class VolumePool {
  #ready: string[] = [];
  #filling: Promise<void> | undefined;
  #closed = false;

  constructor(private readonly dir: string, private readonly limits: VolumeLimits & { inodes: number }, private readonly target: number, private readonly log: StorageLog) {}

  /** Removes temporaries and images of other sizes, adopts the rest, and starts filling. */
  start(): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    for (const name of fs.readdirSync(this.dir)) {
      if (name.startsWith(this.prefix()) && name.endsWith('.img')) this.#ready.push(path.join(this.dir, name));
      else fs.rmSync(path.join(this.dir, name), { force: true });
    }
    this.refill();
  }

  /** A ready image of exactly these limits, now the caller's to rename; undefined when none is ready. */
  take(limits: VolumeLimits): string | undefined {
    if (limits.bytes !== this.limits.bytes || limits.inodes !== this.limits.inodes) return undefined;
    const image = this.#ready.shift();
    this.refill();
    return image;
  }

  /** Resolves when the pool is full (tests, benchmarks). */
  async filled(): Promise<void> {
    while (this.#filling) await this.#filling;
  }

  close(): void {
    this.#closed = true;
  }

  private prefix(): string {
    return `${this.limits.bytes}-${this.limits.inodes}-`;
  }

  // One image at a time, in the background: the pool never competes with starts for more than a core.
  private refill(): void {
    if (this.#filling || this.#closed || this.target === 0) return;
    this.#filling = (async () => {
      while (!this.#closed && this.#ready.length < this.target) {
        const name = `${this.prefix()}${crypto.randomBytes(6).toString('hex')}.img`;
        const temporary = path.join(this.dir, MAKING + name);
        await makeImage(temporary, this.limits.bytes, this.limits.inodes);
        const image = path.join(this.dir, name);
        fs.renameSync(temporary, image);
        this.#ready.push(image);
      }
    })()
      .catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'storage: pool refill failed'))
      .finally(() => {
        this.#filling = undefined;
      });
  }
}
