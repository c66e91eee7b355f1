// Backup objects as files in a local directory (the default backend). A put writes `.tmp/<name>.<random>`,
// fsyncs it, renames it into place and fsyncs the directory, so after a crash an object is either complete
// or absent; leftovers in .tmp are removed by cleanupTemporary.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DomainError } from '../errors';
import { readAhead } from '../promises';
import { checkObjectName, HashCounter, ObjectInfo, ObjectStorage, PutOptions, PutResult, readSha256 } from './storage';

const TMP_DIR = '.tmp';
const STATS_AHEAD = 16;

export class FsObjectStorage implements ObjectStorage {
  readonly kind = 'fs';
  readonly #root: string;
  readonly #tmp: string;

  constructor(opts: { dir: string }) {
    this.#root = path.resolve(opts.dir);
    this.#tmp = path.join(this.#root, TMP_DIR);
    fs.mkdirSync(this.#tmp, { recursive: true, mode: 0o700 });
  }

  get dir(): string {
    return this.#root;
  }

  put(name: string, body: Readable, opts: PutOptions & { digest: false }): Promise<Pick<PutResult, 'size'>>;
  put(name: string, body: Readable, opts?: PutOptions): Promise<PutResult>;
  async put(name: string, body: Readable, opts: PutOptions = {}): Promise<PutResult | Pick<PutResult, 'size'>> {
    checkObjectName(name);
    const tmp = path.join(this.#tmp, `${name}.${process.pid}.${crypto.randomBytes(6).toString('hex')}`);
    const counter = new HashCounter({ digest: opts.digest });
    try {
      await pipeline(body, counter, new DurableFileWriter(tmp), { signal: opts.signal });
      await fs.promises.rename(tmp, path.join(this.#root, name));
      await syncDir(this.#root);
    } catch (err) {
      await fs.promises.rm(tmp, { force: true });
      throw err;
    }
    return counter.result();
  }

  async get(name: string): Promise<Readable> {
    return (await this.#open(name)).createReadStream({ highWaterMark: 1 << 20 });
  }

  // A stream costs a 1 MiB buffer and several turns per object: an index or a snapshot object is a few KiB.
  async readWhole(name: string, limit: number): Promise<Buffer> {
    const handle = await this.#open(name);
    try {
      const { size } = await handle.stat();
      if (size > limit) throw new DomainError('DATA_LOSS', `object ${name} is larger than ${limit} bytes`);
      return await handle.readFile();
    } finally {
      await handle.close();
    }
  }

  async getRange(name: string, offset: number, length: number): Promise<Buffer> {
    const handle = await this.#open(name);
    try {
      const buf = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await handle.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return buf.subarray(0, got);
    } finally {
      await handle.close();
    }
  }

  async #open(name: string): Promise<fs.promises.FileHandle> {
    checkObjectName(name);
    try {
      return await fs.promises.open(path.join(this.#root, name), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DomainError('NOT_FOUND', `object ${name} not found`);
      throw err;
    }
  }

  async stat(name: string): Promise<ObjectInfo | undefined> {
    checkObjectName(name);
    try {
      const st = await fs.promises.lstat(path.join(this.#root, name));
      return st.isFile() ? { name, size: st.size, modifiedAt: st.mtime } : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  sha256(name: string): Promise<string> {
    return readSha256(this, name);
  }

  async list(prefix = ''): Promise<ObjectInfo[]> {
    const names = (await fs.promises.readdir(this.#root)).filter((n) => n !== TMP_DIR && n.startsWith(prefix)).sort();
    const infos: ObjectInfo[] = [];
    for await (const info of readAhead(names, STATS_AHEAD, (n) => this.stat(n).catch(() => undefined))) if (info) infos.push(info);
    return infos;
  }

  async delete(name: string): Promise<void> {
    checkObjectName(name);
    await fs.promises.rm(path.join(this.#root, name), { force: true });
  }

  async cleanupTemporary(): Promise<number> {
    const names = await fs.promises.readdir(this.#tmp);
    for (const n of names) await fs.promises.rm(path.join(this.#tmp, n), { force: true, recursive: true });
    return names.length;
  }
}

/**
 * Writes a new file (0600, O_EXCL) and fsyncs it before finishing. Every SYNC_EVERY bytes it starts an
 * fdatasync in the background, so write-back overlaps the stream instead of all landing on the final fsync.
 */
class DurableFileWriter extends Writable {
  static readonly SYNC_EVERY = 32 << 20;
  readonly #path: string;
  #handle: fs.promises.FileHandle | undefined;
  #sinceSync = 0;
  #syncing: Promise<void> = Promise.resolve();

  constructor(file: string) {
    super({ highWaterMark: 1 << 20 });
    this.#path = file;
  }

  override _construct(done: (err?: Error | null) => void): void {
    fs.promises.open(this.#path, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600)
      .then((h) => { this.#handle = h; done(); }, done);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.#writeAll(chunk).then(() => done(), done);
  }

  async #writeAll(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) off += (await this.#handle!.write(chunk, off, chunk.length - off)).bytesWritten;
    this.#sinceSync += chunk.length;
    if (this.#sinceSync >= DurableFileWriter.SYNC_EVERY) {
      this.#sinceSync = 0;
      const previous = this.#syncing;
      this.#syncing = previous.then(() => this.#handle!.datasync());
    }
  }

  override _final(done: (err?: Error | null) => void): void {
    this.#syncing.then(() => this.#handle!.sync()).then(() => done(), done);
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    const handle = this.#handle;
    this.#handle = undefined;
    this.#syncing.catch(() => undefined)
      .then(() => handle?.close())
      .then(() => done(err), (closeErr) => done(err ?? closeErr));
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await fs.promises.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
