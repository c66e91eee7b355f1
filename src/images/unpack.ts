// One layer from the wire into a directory of the layer store: verify the compressed bytes against the
// manifest's digest and size, decompress (gzip: node:zlib; zstd: zstd-napi, already a dependency), verify
// the tar against the config's diff_id, and extract every entry through the hardened extractor in layer
// mode (native/extract.c). Any failure rejects; the caller deletes the half-written directory.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { Transform, Writable, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import * as zstd from 'zstd-napi';
import { DomainError } from '../errors';
import { extract, NativeError, type ExtractResult, type NativeExtraction } from '../native';
import { capabilityToHost } from '../content/xattrs';
import { LAYER_MEDIA } from './manifest';

/** The workspace range the layer store's owners are kept in (idmapped into each workspace's range). */
export const LAYER_ID_COUNT = 65536;
// zstd frames of `zstd --long` use windows up to 2^27; beyond that a layer is not a normal image.
const ZSTD_WINDOW_LOG_MAX = 27;

/** Hashes and counts what passes; fails (DATA_LOSS) at the end on another digest, at once on excess. */
export class DigestCheck extends Transform {
  private readonly hash = crypto.createHash('sha256');
  private seen = 0;

  constructor(private readonly expected: string, private readonly size: number, private readonly what: string, private readonly onBytes?: (n: number) => void) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.seen += chunk.length;
    if (this.size >= 0 && this.seen > this.size) return done(new DomainError('DATA_LOSS', `image: ${this.what} ${this.expected} is longer than the ${this.size} bytes the manifest says`));
    this.hash.update(chunk);
    this.onBytes?.(chunk.length);
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    if (this.size >= 0 && this.seen !== this.size) return done(new DomainError('DATA_LOSS', `image: ${this.what} ${this.expected} ended after ${this.seen} of ${this.size} bytes`));
    const got = `sha256:${this.hash.digest('hex')}`;
    if (got !== this.expected) return done(new DomainError('DATA_LOSS', `image: ${this.what} ${this.expected} has digest ${got}`));
    done();
  }
}

function decompressor(mediaType: string): Transform | undefined {
  const kind = LAYER_MEDIA[mediaType];
  if (kind === 'gzip') return zlib.createGunzip({ chunkSize: 256 << 10 });
  if (kind === 'zstd') return new zstd.DecompressStream({ windowLogMax: ZSTD_WINDOW_LOG_MAX });
  return undefined;
}

/** Feeds a tar stream to the extractor, in layer mode, under rootDir. */
class LayerWriter extends Writable {
  private readonly ex: NativeExtraction;
  bytes = 0; // file bytes extracted
  implicitDirs: string[] = []; // parents no entry of their own described

  constructor(rootDir: string) {
    super({ highWaterMark: 1 << 20 });
    const fd = fs.openSync(rootDir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
    try {
      this.ex = extract.extractStartLayer(fd, LAYER_ID_COUNT);
    } finally {
      fs.closeSync(fd);
    }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.feed(chunk).then(() => done(), done);
  }

  override _final(done: (err?: Error | null) => void): void {
    try {
      check(extract.extractFinish(this.ex));
      this.implicitDirs = extract.extractImplicitDirs(this.ex);
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    extract.extractClose(this.ex);
    done(err);
  }

  private async feed(chunk: Buffer): Promise<void> {
    let off = 0;
    do {
      const r = await extract.extractFeedAsync(this.ex, chunk, off);
      off += r.consumed;
      check(r, this);
      if (r.status !== 'xattrs') return;
      check(this.resume(), this);
    } while (off < chunk.length);
  }

  /** The xattr policy of a layer (docs/images.md): user.* and file capabilities kept, the opaque marker in
   *  its overlay form kept on directories, everything else (other trusted.*, security.*) left out. */
  private resume(): ExtractResult {
    const p = extract.extractPending(this.ex);
    const kept: [string, Buffer][] = [];
    for (const [name, value] of p.xattrs) {
      if (name.startsWith('user.') && name.length <= 255 && value.length <= 65536) kept.push([name, value]);
      else if (name === 'security.capability' && p.kind === 'file') {
        const host = capabilityToHost(value, { upper: false, uidBase: 0, idCount: LAYER_ID_COUNT });
        if (host) kept.push([name, host]);
      } else if (name === 'trusted.overlay.opaque' && p.kind === 'directory' && value.toString() === 'y') kept.push([name, value]);
    }
    if (p.metacopySize >= 0) throw new DomainError('DATA_LOSS', `image: layer entry ${JSON.stringify(p.path)} carries a metadata-only size`);
    return extract.extractResume(this.ex, kept);
  }
}

function check(r: ExtractResult, writer?: LayerWriter): void {
  if (writer) writer.bytes = r.bytes;
  if (r.status === 'refused') throw new DomainError('DATA_LOSS', `image layer: ${r.message ?? 'refused'}`);
}

export interface LayerSource {
  body: Readable;          // the blob as the registry sends it
  mediaType: string;
  digest: string;          // of the compressed blob
  size: number;
  diffId: string;          // of the uncompressed tar (the config's rootfs.diff_ids)
}

/** Unpacks one layer into rootDir (an empty directory); resolves to the file bytes written and the parent
 *  directories it had to make without an entry. Rejects DATA_LOSS on any mismatch or refusal. */
export async function unpackLayer(src: LayerSource, rootDir: string, onBytes: (n: number) => void): Promise<{ bytes: number; implicitDirs: string[] }> {
  const stages: Array<NodeJS.ReadableStream | NodeJS.WritableStream | Transform> = [src.body, new DigestCheck(src.digest, src.size, 'layer', onBytes)];
  const unzip = decompressor(src.mediaType);
  if (unzip) stages.push(unzip);
  stages.push(new DigestCheck(src.diffId, -1, 'uncompressed layer'));
  const writer = new LayerWriter(rootDir);
  stages.push(writer);
  try {
    await (pipeline as (...s: unknown[]) => Promise<void>)(...stages);
    return { bytes: writer.bytes, implicitDirs: writer.implicitDirs };
  } catch (err) {
    if (err instanceof DomainError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (code.startsWith('Z_') || /zstd|incorrect header|unexpected end/i.test((err as Error).message)) {
      throw new DomainError('DATA_LOSS', `image: layer ${src.digest} does not decompress: ${(err as Error).message}`);
    }
    if (err instanceof NativeError) throw err; // the file system (ENOSPC...): INTERNAL, naming the step
    // The connection broke or stalled mid-blob.
    throw new DomainError('UNAVAILABLE', `image: layer ${src.digest}: download failed: ${(err as Error).message}`, { cause: err });
  }
}
