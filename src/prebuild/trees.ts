// The prebuild tree cache (docs/source.md, "The prebuild tree cache"): a verified prebuild snapshot unpacked
// once on the node, with unshifted ids as an image's files are, then the read-only lower layer of the
// /workspace of every workspace started from it (src/sandbox/rootfs.ts), so such a start copies nothing.
//
//   <stateDir>/prebuild-trees/           0700 root
//     <snapshotId>/tree/                 the snapshot's content root
//     <snapshotId>/meta.json             the stored object's sha256 it was unpacked from, its bytes and files
//     <snapshotId>/deleted               its snapshot was deleted: removed once no workspace holds it
//     .staging-<random>/                 an unpack under way (a crash leaves it; open() removes it)
//     .trash-<random>/                   an entry on its way out
//
// What decides whether a start may use a tree stays with the caller and runs every time, cached or not: the
// access decision on the snapshot and its provenance. An entry is used only for the very object whose
// provenance was verified now (its sha256), and only ever read (an idmapped, read-only bind).
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { isAnyBackupId } from '../content/repo/formats';

export interface PrebuildTreesOptions {
  dir: string;
  /** Entries are removed, least recently used first, while the cache holds more than this many bytes. */
  maxBytes: number;
  /** Whether a workspace holds the snapshot's tree (its record says so): such an entry is never removed. */
  inUse(snapshotId: string): boolean;
  log: Pick<Logger, 'info' | 'warn'>;
}

interface TreeMeta {
  snapshotId: string;
  objectSha256: string;
  bytes: number;
  files: number;
  unpackedMs: number;
}

export type TreeUse = 'cached' | 'unpacked';


export class PrebuildTrees {
  /** Unpacks under way, one per snapshot: concurrent starts from one snapshot share it. */
  private readonly unpacking = new Map<string, Promise<void>>();
  /** Acquires under way: their entry is not removed between being found and being held. */
  private readonly busy = new Map<string, number>();
  private collecting: Promise<void> | undefined;

  constructor(private readonly o: PrebuildTreesOptions) {}

  /** The cache dir (0700), without what a crash left half made or half removed. */
  async open(): Promise<void> {
    await fsp.mkdir(this.o.dir, { recursive: true, mode: 0o700 });
    await fsp.chmod(this.o.dir, 0o700);
    for (const name of await fsp.readdir(this.o.dir)) {
      if (!name.startsWith('.')) continue;
      this.o.log.warn({ entry: name }, 'prebuild tree cache: removing what an interrupted unpack or removal left');
      await fsp.rm(path.join(this.o.dir, name), { recursive: true, force: true });
    }
  }

  async acquire(
    snapshot: { snapshotId: string; objectSha256: string; bytes: number; files?: number },
    unpack: (dir: string) => Promise<void>,
    hold: (how: TreeUse) => void,
  ): Promise<string | undefined> {
    const { snapshotId } = snapshot;
    if (!isAnyBackupId(snapshotId) || !/^[0-9a-f]{64}$/.test(snapshot.objectSha256)) return undefined;
    if (snapshot.bytes > this.o.maxBytes) return undefined;
    this.busy.set(snapshotId, (this.busy.get(snapshotId) ?? 0) + 1);
    try {
      let how: TreeUse = 'cached';
      let meta = this.meta(snapshotId);
      if (!meta) {
        how = 'unpacked';
        let p = this.unpacking.get(snapshotId);
        if (!p) {
          p = this.unpack(snapshot, unpack).finally(() => this.unpacking.delete(snapshotId));
          this.unpacking.set(snapshotId, p);
        }
        await p;
        meta = this.meta(snapshotId);
      }
      if (!meta || meta.objectSha256 !== snapshot.objectSha256 || fs.existsSync(path.join(this.entry(snapshotId), 'deleted'))) {
        this.o.log.warn({ snapshot: snapshotId }, 'prebuild tree cache: the entry is not of the object verified now; restoring instead');
        return undefined;
      }
      const tree = path.join(this.entry(snapshotId), 'tree');
      // Held before this returns (no await in between): a collect never sees it unheld and not busy.
      hold(how);
      const now = new Date();
      fs.utimesSync(this.entry(snapshotId), now, now); // least recently used goes first
      return tree;
    } finally {
      const n = (this.busy.get(snapshotId) ?? 1) - 1;
      if (n > 0) this.busy.set(snapshotId, n);
      else this.busy.delete(snapshotId);
      this.collectSoon();
    }
  }

  /** The snapshot was deleted: its tree goes now, or once the last workspace that holds it is gone. */
  forget(snapshotId: string): void {
    if (!isAnyBackupId(snapshotId) || !fs.existsSync(this.entry(snapshotId))) return;
    fs.writeFileSync(path.join(this.entry(snapshotId), 'deleted'), '');
    this.collectSoon();
  }

  /** Removes unheld entries whose snapshot was deleted, then the least recently used while over maxBytes. */
  collect(): Promise<void> {
    this.collecting ??= this.collectOnce().finally(() => (this.collecting = undefined));
    return this.collecting;
  }

  private collectSoon(): void {
    void this.collect().catch((err: unknown) => this.o.log.warn({ err: (err as Error).message }, 'prebuild tree cache: collection failed'));
  }

  private async collectOnce(): Promise<void> {
    const entries = fs.readdirSync(this.o.dir).filter((n) => !n.startsWith('.')).map((snapshotId) => {
      const dir = this.entry(snapshotId);
      const st = fs.statSync(dir, { throwIfNoEntry: false });
      return { snapshotId, usedMs: st?.mtimeMs ?? 0, bytes: this.meta(snapshotId)?.bytes ?? 0, deleted: fs.existsSync(path.join(dir, 'deleted')) };
    });
    let total = entries.reduce((sum, e) => sum + e.bytes, 0);
    for (const e of entries.sort((a, b) => Number(b.deleted) - Number(a.deleted) || a.usedMs - b.usedMs)) {
      if (!e.deleted && total <= this.o.maxBytes) break;
      if (await this.remove(e.snapshotId, e.deleted ? 'its snapshot was deleted' : 'the cache is over its size')) total -= e.bytes;
    }
  }

  /** The check and the rename are one synchronous step: nothing acquires the entry between them. */
  private async remove(snapshotId: string, why: string): Promise<boolean> {
    if (this.busy.has(snapshotId) || this.unpacking.has(snapshotId) || this.o.inUse(snapshotId)) return false;
    const trash = path.join(this.o.dir, `.trash-${crypto.randomBytes(6).toString('hex')}`);
    try {
      fs.renameSync(this.entry(snapshotId), trash);
    } catch {
      return false;
    }
    this.o.log.info({ snapshot: snapshotId, why }, 'prebuild tree cache: entry removed');
    await fsp.rm(trash, { recursive: true, force: true });
    return true;
  }

  /** Into a staging dir, then renamed into place: an entry is whole or absent. */
  private async unpack(snapshot: { snapshotId: string; objectSha256: string; bytes: number; files?: number }, unpack: (dir: string) => Promise<void>): Promise<void> {
    const staging = path.join(this.o.dir, `.staging-${crypto.randomBytes(6).toString('hex')}`);
    await fsp.mkdir(staging, { mode: 0o700 });
    try {
      const began = performance.now();
      await unpack(path.join(staging, 'tree'));
      const meta: TreeMeta = { snapshotId: snapshot.snapshotId, objectSha256: snapshot.objectSha256, bytes: snapshot.bytes, files: snapshot.files ?? 0, unpackedMs: Date.now() };
      await fsp.writeFile(path.join(staging, 'meta.json'), JSON.stringify(meta), { mode: 0o600 });
      await fsp.rename(staging, this.entry(snapshot.snapshotId));
      this.o.log.info({ snapshot: snapshot.snapshotId, ms: Math.round(performance.now() - began), bytes: snapshot.bytes }, 'prebuild tree cache: snapshot unpacked');
    } finally {
      await fsp.rm(staging, { recursive: true, force: true });
    }
  }

  private entry(snapshotId: string): string {
    return path.join(this.o.dir, snapshotId);
  }

  private meta(snapshotId: string): TreeMeta | undefined {
    try {
      return JSON.parse(fs.readFileSync(path.join(this.entry(snapshotId), 'meta.json'), 'utf8')) as TreeMeta;
    } catch {
      return undefined;
    }
  }
}
