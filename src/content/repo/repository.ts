// One repository of encrypted, deduplicated chunks in the backup storage: a scope's (an owner's, or a
// prebuild team's) chunks sealed into pack objects, each pack followed by its sealed index object. A chunk
// is listed (and so reused by later backups) only once its pack is stored and its index written after it,
// so a crash leaves at most a pack without an index, which gc() removes. Layout: docs/backup-format.md.
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import * as zstd from 'zstd-napi';
import { DomainError } from '../../errors';
import { openBlob, sealBlob } from '../../crypto/aead';
import type { ObjectStorage } from '../storage';
import { readSmallObject, type RepoKeys } from './repo-keys';
import { ID_BYTES } from './tree-stream';
import { readAhead } from '../../promises';

export const PACK_TARGET = 4 << 20;
const INDEX_ENTRY = ID_BYTES + 12;
const SMALL_READ = 64 << 10;     // chunks up to this size are read with their neighbours
const READ_WINDOW = 2 << 20;
const WINDOWS_KEPT = 3;
const INDEX_READS_AHEAD = 8;   // one index per pack: a 1 GiB tree's 150 read one by one took 0.3 s
export const ENC_RAW = 0;
export const ENC_ZSTD = 1;
const MAX_CHUNK = 8 << 20;

/** Where the crash tests kill a process (TETRIX_TEST_REPO_CRASH_AT=<point>); a no-op unless it names one. */
export type RepoCrashPoint = 'pack-stored' | 'index-stored' | 'before-snapshot' | 'gc-repacked' | 'gc-index-deleted';
const crashAt = process.env.TETRIX_TEST_REPO_CRASH_AT;
export function repoCrashPoint(point: RepoCrashPoint): void {
  if (crashAt === point) process.kill(process.pid, 'SIGKILL');
}

export interface PackEntry {
  pack: string;
  offset: number;
  length: number;     // sealed bytes
  rawLength: number;  // plaintext bytes
}

/** The repository name for a scope: a digest, so object names say nothing about who the owner is. */
export function repoName(scope: string): string {
  return crypto.createHash('sha256').update(`tetrix/repo-name/v1\0${scope}`).digest('hex').slice(0, 24);
}

export const packPrefix = (repo: string): string => `rp-${repo}.pack-`;
export const indexPrefix = (repo: string): string => `rp-${repo}.idx-`;

export function chunkAad(repo: string, id: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`tetrix/repo-chunk/v1\0${repo}\0`), id]);
}

/** nonce || AES-256-GCM || tag with a fresh nonce (crypto/aead.ts, the node's one AES-GCM). */
export function sealWith(key: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  return sealBlob(key, aad, plaintext);
}

/** null when the bytes do not authenticate. */
export function openWith(key: Buffer, sealed: Buffer, aad: Buffer): Buffer | null {
  return openBlob(key, aad, sealed) ?? null;
}

export class Repository {
  readonly name: string;
  readonly scope: string;
  readonly keys: RepoKeys;
  readonly keyId: string;
  readonly #storage: ObjectStorage;
  /** id (latin1 of its 32 bytes) -> where it is. */
  readonly index = new Map<string, PackEntry>();
  readonly #packs = new Map<string, PackEntry[]>();
  /** Recent range reads (small chunks are read with their neighbours); promises, so reads issued together share one. */
  #windows: { pack: string; offset: number; length: number; bytes: Promise<Buffer> }[] = [];

  constructor(storage: ObjectStorage, name: string, scope: string, keys: RepoKeys, keyId: string) {
    this.#storage = storage;
    this.name = name;
    this.scope = scope;
    this.keys = keys;
    this.keyId = keyId;
  }

  get storage(): ObjectStorage {
    return this.#storage;
  }

  /** Chunk id: HMAC-SHA256 under the repository's id key. */
  chunkId(plaintext: Buffer): Buffer {
    return crypto.createHmac('sha256', this.keys.id).update(plaintext).digest();
  }

  /** Reads the index objects written since the last call, and forgets those removed. */
  async refreshIndex(): Promise<void> {
    this.dropReadCache();
    const listed = await this.#storage.list(indexPrefix(this.name));
    const names = new Set(listed.map((o) => o.name));
    this.#forgetPacks([...this.#packs.keys()].filter((pack) => !names.has(indexNameOf(pack))));
    const unread = listed.map((o) => ({ name: o.name, pack: packNameOf(o.name) })).filter((o) => !this.#packs.has(o.pack));
    const read = readAhead(unread, INDEX_READS_AHEAD, async (o) => ({ pack: o.pack, entries: await this.#readIndex(o.name, o.pack) }));
    for await (const { pack, entries } of read) {
      this.#packs.set(pack, entries);
      for (const e of entries) {
        const key = e.id.toString('latin1');
        if (!this.index.has(key)) this.index.set(key, e);
      }
    }
  }

  /** Forgets the range reads kept for neighbouring chunks: each operation reads storage afresh. */
  dropReadCache(): void {
    this.#windows = [];
  }

  packs(): Map<string, PackEntry[]> {
    return this.#packs;
  }

  /** All known ids, concatenated (for the chunking child's dedup). */
  knownIds(): Buffer {
    const out = Buffer.allocUnsafe(this.index.size * ID_BYTES);
    let off = 0;
    for (const key of this.index.keys()) off += out.write(key, off, 'latin1');
    return out;
  }

  async #readIndex(objectName: string, pack: string): Promise<(PackEntry & { id: Buffer })[]> {
    const sealed = await readSmallObject(this.#storage, objectName, 64 << 20);
    const plain = openWith(this.keys.seal, sealed, this.#indexAad(pack));
    if (!plain || plain.length % INDEX_ENTRY !== 0) throw new DomainError('DATA_LOSS', `repository ${this.name}: index ${objectName} does not authenticate`);
    const out: (PackEntry & { id: Buffer })[] = [];
    for (let off = 0; off < plain.length; off += INDEX_ENTRY) {
      out.push({
        id: plain.subarray(off, off + ID_BYTES), pack,
        offset: plain.readUInt32BE(off + ID_BYTES), length: plain.readUInt32BE(off + ID_BYTES + 4), rawLength: plain.readUInt32BE(off + ID_BYTES + 8),
      });
    }
    return out;
  }

  #indexAad(pack: string): Buffer {
    return Buffer.from(`tetrix/repo-index/v1\0${this.name}\0${pack}`);
  }

  /** Drops packs from the index; a chunk another pack also holds (a repack's copy, a concurrent backup's)
   *  is pointed there. */
  #forgetPacks(packs: string[]): void {
    if (packs.length === 0) return;
    const lost = new Set<string>();
    for (const pack of packs) {
      for (const e of this.#packs.get(pack) ?? []) {
        const key = (e as PackEntry & { id: Buffer }).id.toString('latin1');
        if (this.index.get(key)?.pack === pack) {
          this.index.delete(key);
          lost.add(key);
        }
      }
      this.#packs.delete(pack);
    }
    this.#windows = this.#windows.filter((w) => !packs.includes(w.pack));
    if (lost.size === 0) return;
    for (const entries of this.#packs.values()) {
      for (const e of entries) {
        const key = (e as PackEntry & { id: Buffer }).id.toString('latin1');
        if (lost.has(key) && !this.index.has(key)) this.index.set(key, e);
      }
    }
  }

  /** Stores a pack, then its index (that order: an index never names a pack that is not there). */
  async writePack(pack: string, body: Buffer[], entries: (PackEntry & { id: Buffer })[]): Promise<void> {
    await this.#storage.put(pack, Readable.from(body), { digest: false });
    repoCrashPoint('pack-stored');
    const plain = Buffer.allocUnsafe(entries.length * INDEX_ENTRY);
    entries.forEach((e, i) => {
      const off = i * INDEX_ENTRY;
      e.id.copy(plain, off);
      plain.writeUInt32BE(e.offset, off + ID_BYTES);
      plain.writeUInt32BE(e.length, off + ID_BYTES + 4);
      plain.writeUInt32BE(e.rawLength, off + ID_BYTES + 8);
    });
    await this.#storage.put(indexNameOf(pack), Readable.from([sealWith(this.keys.seal, plain, this.#indexAad(pack))]));
    repoCrashPoint('index-stored');
    this.#packs.set(pack, entries);
    for (const e of entries) {
      const key = e.id.toString('latin1');
      if (!this.index.has(key)) this.index.set(key, e);
    }
  }

  /** Deletes packs: each one's index first, so no index ever names a missing pack. */
  async deletePacks(packs: string[]): Promise<void> {
    this.#forgetPacks(packs);
    for (const pack of packs) {
      await this.#storage.delete(indexNameOf(pack));
      repoCrashPoint('gc-index-deleted');
      await this.#storage.delete(pack);
    }
  }

  newPackName(): string {
    return packPrefix(this.name) + crypto.randomBytes(16).toString('hex');
  }

  /** The sealed bytes of a chunk as stored (repacking copies them without opening them). */
  async readSealed(id: Buffer, opts: ReadOptions = {}): Promise<Buffer> {
    const e = this.index.get(id.toString('latin1'));
    if (!e) throw new DomainError('DATA_LOSS', `chunk ${shortId(id)} is missing from the repository`);
    let w = this.#windows.find((x) => x.pack === e.pack && e.offset >= x.offset && e.offset + e.length <= x.offset + x.length);
    if (!w) {
      const length = e.length <= SMALL_READ && opts.neighbours !== false ? Math.max(e.length, READ_WINDOW) : e.length;
      const bytes = this.#storage.getRange(e.pack, e.offset, length).catch((err: unknown) => {
        if (err instanceof DomainError && err.code === 'NOT_FOUND') throw new DomainError('DATA_LOSS', `chunk ${shortId(id)}: its pack ${e.pack} is missing`);
        throw err;
      });
      const made = { pack: e.pack, offset: e.offset, length, bytes };
      bytes.catch(() => { this.#windows = this.#windows.filter((x) => x !== made); }); // a failed read is not kept
      w = made;
      if (length > e.length) this.#windows = [w, ...this.#windows].slice(0, WINDOWS_KEPT);
    }
    const bytes = await w.bytes;
    const start = e.offset - w.offset;
    if (bytes.length < start + e.length) throw new DomainError('DATA_LOSS', `chunk ${shortId(id)}: its pack ${e.pack} is truncated`);
    return bytes.subarray(start, start + e.length);
  }

  /** A chunk's plaintext, authenticated (AES-GCM under the repository key, its id bound in). DATA_LOSS otherwise. */
  async readChunk(id: Buffer, opts: ReadOptions & { verifyId?: boolean } = {}): Promise<Buffer> {
    const sealed = await this.readSealed(id, opts);
    const e = this.index.get(id.toString('latin1'))!;
    const plain = openWith(this.keys.seal, sealed, chunkAad(this.name, id));
    if (!plain || plain.length < 1) throw new DomainError('DATA_LOSS', `chunk ${shortId(id)} in ${e.pack} does not authenticate`);
    const out = decodeChunk(plain, e.rawLength, id);
    if (opts.verifyId && !this.chunkId(out).equals(id)) throw new DomainError('DATA_LOSS', `chunk ${shortId(id)}: content does not match its id`);
    return out;
  }
}

export interface ReadOptions {
  /** false: read the chunk alone. A small one is otherwise read with the 2 MiB after it, which pays when
   *  its neighbours (small files) are read next, and not for tree chunks, strewn among a tree's data. */
  neighbours?: boolean;
}

/** One decompression context for the process: zstd.decompress() would make (and leave to the GC) one per chunk. */
let decompressor: zstd.Decompressor | undefined;

function decodeChunk(plain: Buffer, rawLength: number, id: Buffer): Buffer {
  let out: Buffer;
  if (plain[0] === ENC_RAW) out = plain.subarray(1);
  else if (plain[0] === ENC_ZSTD && rawLength <= MAX_CHUNK) {
    try {
      if (!decompressor) {
        decompressor = new zstd.Decompressor();
        decompressor.setParameters({ windowLogMax: 23 });
      }
      out = decompressor.decompress(plain.subarray(1));
    } catch {
      throw new DomainError('DATA_LOSS', `chunk ${shortId(id)}: does not decompress`);
    }
  } else throw new DomainError('DATA_LOSS', `chunk ${shortId(id)}: unknown encoding`);
  if (out.length !== rawLength) throw new DomainError('DATA_LOSS', `chunk ${shortId(id)}: ${out.length} bytes, its index says ${rawLength}`);
  return out;
}

export function shortId(id: Buffer): string {
  return id.toString('hex').slice(0, 16);
}

export function indexNameOf(pack: string): string {
  return pack.replace('.pack-', '.idx-');
}

export function packNameOf(index: string): string {
  return index.replace('.idx-', '.pack-');
}
