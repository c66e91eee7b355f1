// Where backup objects live. One interface, two backends: a local directory (storage-fs.ts, the default)
// and S3-compatible object storage (storage-s3.ts). Every put is atomic: a reader sees the whole object or
// nothing, never a prefix, whatever happens to the writer.
import crypto from 'node:crypto';
import { Transform, TransformCallback } from 'node:stream';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DomainError } from '../errors';

export interface ObjectInfo {
  name: string;
  size: number;
  modifiedAt: Date;
}

export interface PutResult {
  size: number;
  sha256: string;   // hex, of the bytes stored
}

export interface PutOptions {
  signal?: AbortSignal;
  /** false: the body is not hashed and the result has no sha256. For repository packs, whose chunks each
   *  authenticate themselves: hashing them cost a first backup a third of a second per GiB. */
  digest?: boolean;
}

export interface ObjectStorage {
  /** 'fs' or 's3', for logs and NodeInfo. */
  readonly kind: string;
  /**
   * Streams `body` to a temporary place and commits it under `name` only once it is complete
   * (fs: fsync + rename; S3: the upload completes). On error or abort nothing is visible under `name`.
   */
  put(name: string, body: Readable, opts: PutOptions & { digest: false }): Promise<Pick<PutResult, 'size'>>;
  put(name: string, body: Readable, opts?: PutOptions): Promise<PutResult>;
  /** The object's bytes. NOT_FOUND when there is none. */
  get(name: string): Promise<Readable>;
  /** The whole object in one buffer, for a backend that can do it in fewer steps than get(); DATA_LOSS
   *  when it is larger than limit. NOT_FOUND when there is none. */
  readWhole?(name: string, limit: number): Promise<Buffer>;
  /** `length` bytes of the object from `offset` (fewer only at its end). NOT_FOUND when there is none. */
  getRange(name: string, offset: number, length: number): Promise<Buffer>;
  /** Size and time of a committed object, or undefined. */
  stat(name: string): Promise<ObjectInfo | undefined>;
  /** sha256 (hex) of a committed object, by reading it. NOT_FOUND when there is none. */
  sha256(name: string): Promise<string>;
  /** Committed objects whose name starts with prefix, sorted by name. */
  list(prefix?: string): Promise<ObjectInfo[]>;
  /** Removes an object; no error when it is already gone. */
  delete(name: string): Promise<void>;
  /** Removes what interrupted puts left behind. Call at start, before any put. Returns how many. */
  cleanupTemporary(): Promise<number>;
}

/** Object names are flat and never a path: a letter or digit, then letters, digits, '.', '_', '-'. */
export function checkObjectName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/.test(name)) {
    throw new DomainError('INVALID_ARGUMENT', `object name ${JSON.stringify(name)}: not a valid storage name`);
  }
}

/** Counts and hashes the bytes flowing through, for PutResult. */
export class HashCounter extends Transform {
  readonly #hash: crypto.Hash | undefined;
  size = 0;

  constructor(opts: { digest?: boolean } = {}) {
    super();
    this.#hash = opts.digest === false ? undefined : crypto.createHash('sha256');
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.#hash?.update(chunk);
    this.size += chunk.length;
    done(null, chunk);
  }

  digest(): string {
    if (!this.#hash) throw new DomainError('INTERNAL', 'HashCounter: made without a digest');
    return this.#hash.digest('hex');
  }

  /** What a put returns: the size, and the sha256 unless it was made without one. */
  result(): PutResult | Pick<PutResult, 'size'> {
    return this.#hash ? { size: this.size, sha256: this.digest() } : { size: this.size };
  }
}

/** sha256 (hex) of a committed object, by reading it through: the same for every backend. */
export async function readSha256(storage: Pick<ObjectStorage, 'get'>, name: string): Promise<string> {
  const counter = new HashCounter();
  await pipeline(await storage.get(name), counter, async function* (source) {
    for await (const _ of source) { /* drain */ }
  });
  return counter.digest();
}
