// Backup objects in S3-compatible object storage. An S3 object appears only when its upload completes
// (PutObject or CompleteMultipartUpload), which is the atomic commit; a crash leaves at most an incomplete
// multipart upload, invisible to readers, which cleanupTemporary aborts (or a bucket lifecycle rule
// AbortIncompleteMultipartUpload does, where the server does not list uploads).
// Parts are uploaded by hand rather than with @aws-sdk/lib-storage: one part in flight while the next
// fills keeps memory at two parts.
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, DeleteObjectCommand,
  GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand,
  S3Client, S3ClientConfig, UploadPartCommand,
} from '@aws-sdk/client-s3';
import { Readable } from 'node:stream';
import { DomainError } from '../errors';
import { checkObjectName, HashCounter, ObjectInfo, ObjectStorage, PutOptions, PutResult, readSha256 } from './storage';

export const DEFAULT_PART_SIZE = 8 << 20;
const MIN_PART_SIZE = 5 << 20;

export interface S3StorageOptions {
  bucket: string;
  /** Key prefix, e.g. "nodes/<node-id>/backups/". Must be private to this node: cleanup works inside it. */
  prefix?: string;
  client?: S3Client;
  clientConfig?: S3ClientConfig;
  partSize?: number;
}

export class S3ObjectStorage implements ObjectStorage {
  readonly kind = 's3';
  readonly #s3: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #partSize: number;

  constructor(opts: S3StorageOptions) {
    this.#s3 = opts.client ?? new S3Client(opts.clientConfig ?? {});
    this.#bucket = opts.bucket;
    this.#prefix = opts.prefix ?? '';
    this.#partSize = Math.max(opts.partSize ?? DEFAULT_PART_SIZE, MIN_PART_SIZE);
  }

  put(name: string, body: Readable, opts: PutOptions & { digest: false }): Promise<Pick<PutResult, 'size'>>;
  put(name: string, body: Readable, opts?: PutOptions): Promise<PutResult>;
  async put(name: string, body: Readable, opts: PutOptions = {}): Promise<PutResult | Pick<PutResult, 'size'>> {
    checkObjectName(name);
    const key = this.#prefix + name;
    const counter = new HashCounter({ digest: opts.digest });
    const source = body.pipe(counter);
    body.on('error', (err) => counter.destroy(err));
    const parts = readParts(source, this.#partSize, opts.signal);
    const first = await parts.next();
    const firstPart = first.done ? Buffer.alloc(0) : first.value;
    const second = first.done ? first : await parts.next();
    if (second.done) {
      await this.#request(`put ${name}`, () =>
        this.#s3.send(new PutObjectCommand({ Bucket: this.#bucket, Key: key, Body: firstPart }), { abortSignal: opts.signal }));
    } else {
      await this.#multipart(key, [firstPart, second.value], parts, opts.signal);
    }
    return counter.result();
  }

  async #multipart(key: string, head: Buffer[], rest: AsyncGenerator<Buffer>, signal?: AbortSignal): Promise<void> {
    const created = await this.#request(`put ${key}`, () =>
      this.#s3.send(new CreateMultipartUploadCommand({ Bucket: this.#bucket, Key: key }), { abortSignal: signal }));
    const uploadId = created.UploadId!;
    const done: { ETag: string; PartNumber: number }[] = [];
    let inFlight: Promise<void> | undefined;
    try {
      const upload = async (part: Buffer, n: number): Promise<void> => {
        const r = await this.#request(`put ${key}`, () => this.#s3.send(new UploadPartCommand({
          Bucket: this.#bucket, Key: key, UploadId: uploadId, PartNumber: n, Body: part, ContentLength: part.length,
        }), { abortSignal: signal }));
        done.push({ ETag: r.ETag!, PartNumber: n });
      };
      let n = 0;
      const next = async (part: Buffer): Promise<void> => {
        if (inFlight) await inFlight;
        inFlight = upload(part, ++n);
        inFlight.catch(() => undefined); // awaited below; avoid an unhandled rejection meanwhile
      };
      for (const part of head) await next(part);
      for await (const part of rest) await next(part);
      if (inFlight) await inFlight;
      done.sort((a, b) => a.PartNumber - b.PartNumber);
      await this.#request(`put ${key}`, () => this.#s3.send(new CompleteMultipartUploadCommand({
        Bucket: this.#bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: done },
      }), { abortSignal: signal }));
    } catch (err) {
      await inFlight?.catch(() => undefined);
      await this.#s3.send(new AbortMultipartUploadCommand({ Bucket: this.#bucket, Key: key, UploadId: uploadId }))
        .catch(() => undefined);
      throw err;
    }
  }

  /**
   * A request whose failure (unreachable endpoint, refused credentials, missing bucket...) becomes UNAVAILABLE
   * naming the operation and the S3 error, instead of an unmapped SDK error the API can only call UNKNOWN.
   */
  async #request<T>(what: string, send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } catch (err) {
      const e = err as Error & { code?: string };
      throw new DomainError('UNAVAILABLE', `object storage: ${what}: ${e.code ?? e.name}`, { cause: err });
    }
  }

  async get(name: string): Promise<Readable> {
    checkObjectName(name);
    try {
      const r = await this.#s3.send(new GetObjectCommand({ Bucket: this.#bucket, Key: this.#prefix + name }));
      return r.Body as Readable;
    } catch (err) {
      if (isNotFound(err)) throw new DomainError('NOT_FOUND', `object ${name} not found`);
      throw new DomainError('UNAVAILABLE', `object storage: get ${name}: ${(err as Error).name}`, { cause: err });
    }
  }

  async getRange(name: string, offset: number, length: number): Promise<Buffer> {
    checkObjectName(name);
    if (length === 0) return Buffer.alloc(0);
    try {
      const r = await this.#s3.send(new GetObjectCommand({
        Bucket: this.#bucket, Key: this.#prefix + name, Range: `bytes=${offset}-${offset + length - 1}`,
      }));
      const parts: Buffer[] = [];
      for await (const c of r.Body as Readable) parts.push(c as Buffer);
      return Buffer.concat(parts);
    } catch (err) {
      if (isNotFound(err)) throw new DomainError('NOT_FOUND', `object ${name} not found`);
      throw new DomainError('UNAVAILABLE', `object storage: get ${name}: ${(err as Error).name}`, { cause: err });
    }
  }

  async stat(name: string): Promise<ObjectInfo | undefined> {
    checkObjectName(name);
    try {
      const r = await this.#s3.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: this.#prefix + name }));
      return { name, size: r.ContentLength ?? 0, modifiedAt: r.LastModified ?? new Date(0) };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  sha256(name: string): Promise<string> {
    return readSha256(this, name);
  }

  async list(prefix = ''): Promise<ObjectInfo[]> {
    const out: ObjectInfo[] = [];
    let token: string | undefined;
    do {
      const r = await this.#request('list', () => this.#s3.send(new ListObjectsV2Command({
        Bucket: this.#bucket, Prefix: this.#prefix + prefix, ContinuationToken: token,
      })));
      for (const o of r.Contents ?? []) {
        const name = o.Key!.slice(this.#prefix.length);
        if (!name.includes('/')) out.push({ name, size: o.Size ?? 0, modifiedAt: o.LastModified ?? new Date(0) });
      }
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async delete(name: string): Promise<void> {
    checkObjectName(name);
    await this.#request(`delete ${name}`, () =>
      this.#s3.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: this.#prefix + name })));
  }

  async cleanupTemporary(): Promise<number> {
    let aborted = 0;
    try {
      const r = await this.#s3.send(new ListMultipartUploadsCommand({ Bucket: this.#bucket, Prefix: this.#prefix }));
      for (const u of r.Uploads ?? []) {
        await this.#s3.send(new AbortMultipartUploadCommand({ Bucket: this.#bucket, Key: u.Key!, UploadId: u.UploadId! }));
        aborted++;
      }
    } catch (err) {
      // Some S3-speaking servers (s3rver) do not list uploads; incomplete uploads stay invisible to readers.
      if ((err as Error).name !== 'NotImplemented') throw err;
    }
    return aborted;
  }
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}

/** Yields the stream in buffers of exactly partSize bytes (the last one shorter, never empty). */
async function* readParts(source: Readable, partSize: number, signal?: AbortSignal): AsyncGenerator<Buffer> {
  let part = Buffer.allocUnsafe(partSize);
  let filled = 0;
  for await (const chunk of source as AsyncIterable<Buffer>) {
    if (signal?.aborted) throw signal.reason ?? new DomainError('ABORTED', 'upload aborted');
    let off = 0;
    while (off < chunk.length) {
      const n = Math.min(partSize - filled, chunk.length - off);
      chunk.copy(part, filled, off, off + n);
      filled += n;
      off += n;
      if (filled === partSize) {
        yield part;
        part = Buffer.allocUnsafe(partSize);
        filled = 0;
      }
    }
  }
  if (filled > 0) yield part.subarray(0, filled);
}
