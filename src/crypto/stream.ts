// Streaming AEAD: AES-256-GCM over fixed-size segments (the STREAM construction, as in Tink's
// AesGcmHkdfStreaming). Segment i is sealed with nonce = prefix(7) || i (u32 BE) || final(1), and the stream
// header is the AAD of every segment, so a reordered, dropped, truncated or appended segment fails to
// authenticate. Only the final segment is shorter than a full one, which lets the reader know where the end
// must be without buffering more than one segment. Layout: docs/backup-format.md.
import crypto from 'node:crypto';
import { Transform, TransformCallback } from 'node:stream';
import { DomainError } from '../errors';
import { GCM_NONCE_BYTES, GCM_TAG_BYTES, openGcm, sealGcm } from './aead';
import { KEY_BYTES } from './keys';

export const STREAM_MAGIC = Buffer.from('TXBK', 'latin1');
export const STREAM_VERSION = 1;
export const HEADER_BYTES = 17;
export const TAG_BYTES = GCM_TAG_BYTES;
export const NONCE_PREFIX_BYTES = 7;
export const DEFAULT_SEGMENT_SIZE = 1 << 20;
export const MIN_SEGMENT_SIZE = 1 << 12;
export const MAX_SEGMENT_SIZE = 1 << 24;
const MAX_SEGMENTS = 0xffffffff;

export interface StreamHeader {
  version: number;
  segmentSize: number;
  noncePrefix: Buffer;
}

export function encodeHeader(h: StreamHeader): Buffer {
  const buf = Buffer.alloc(HEADER_BYTES);
  STREAM_MAGIC.copy(buf, 0);
  buf[4] = h.version;
  buf[5] = 0; // reserved flags, must be zero
  buf.writeUInt32BE(h.segmentSize, 6);
  h.noncePrefix.copy(buf, 10);
  return buf;
}

export function decodeHeader(buf: Buffer): StreamHeader {
  if (buf.length < HEADER_BYTES || !buf.subarray(0, 4).equals(STREAM_MAGIC)) {
    throw new DomainError('DATA_LOSS', 'encrypted stream: bad magic (not a Tetrix backup object)');
  }
  if (buf[4] !== STREAM_VERSION) throw new DomainError('DATA_LOSS', `encrypted stream: unknown version ${buf[4]}`);
  if (buf[5] !== 0) throw new DomainError('DATA_LOSS', 'encrypted stream: reserved header flags set');
  const segmentSize = buf.readUInt32BE(6);
  if (segmentSize < MIN_SEGMENT_SIZE || segmentSize > MAX_SEGMENT_SIZE) {
    throw new DomainError('DATA_LOSS', `encrypted stream: segment size ${segmentSize} out of range`);
  }
  return { version: buf[4], segmentSize, noncePrefix: Buffer.from(buf.subarray(10, HEADER_BYTES)) };
}

export function newDataKey(): Buffer {
  return crypto.randomBytes(KEY_BYTES);
}

function segmentNonce(prefix: Buffer, index: number, final: boolean): Buffer {
  if (index > MAX_SEGMENTS) throw new DomainError('RESOURCE_EXHAUSTED', 'encrypted stream: too many segments');
  const nonce = Buffer.alloc(GCM_NONCE_BYTES);
  prefix.copy(nonce, 0);
  nonce.writeUInt32BE(index, NONCE_PREFIX_BYTES);
  nonce[11] = final ? 1 : 0;
  return nonce;
}

function checkKey(key: Buffer): void {
  if (key.length !== KEY_BYTES) throw new DomainError('INVALID_ARGUMENT', `dataKey: must be ${KEY_BYTES} bytes`);
}

/** Plaintext in, header + sealed segments out. Holds at most one segment of plaintext. */
export class EncryptStream extends Transform {
  readonly #key: Buffer;
  readonly #header: Buffer;
  readonly #prefix: Buffer;
  readonly #segment: Buffer;
  #filled = 0;
  #index = 0;
  #started = false;

  constructor(dataKey: Buffer, opts: { segmentSize?: number } = {}) {
    super();
    checkKey(dataKey);
    const segmentSize = opts.segmentSize ?? DEFAULT_SEGMENT_SIZE;
    if (segmentSize < MIN_SEGMENT_SIZE || segmentSize > MAX_SEGMENT_SIZE) {
      throw new DomainError('INVALID_ARGUMENT', `segmentSize: must be in [${MIN_SEGMENT_SIZE}, ${MAX_SEGMENT_SIZE}]`);
    }
    this.#key = dataKey;
    this.#prefix = crypto.randomBytes(NONCE_PREFIX_BYTES);
    this.#header = encodeHeader({ version: STREAM_VERSION, segmentSize, noncePrefix: this.#prefix });
    this.#segment = Buffer.allocUnsafe(segmentSize);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      this.#start();
      let off = 0;
      while (off < chunk.length) {
        const n = Math.min(chunk.length - off, this.#segment.length - this.#filled);
        chunk.copy(this.#segment, this.#filled, off, off + n);
        this.#filled += n;
        off += n;
        // A full segment is never the final one: the final segment is always shorter (possibly empty).
        if (this.#filled === this.#segment.length) this.#seal(false);
      }
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      this.#start();
      this.#seal(true);
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  #start(): void {
    if (this.#started) return;
    this.#started = true;
    this.push(this.#header);
  }

  #seal(final: boolean): void {
    const nonce = segmentNonce(this.#prefix, this.#index++, final);
    this.push(sealGcm(this.#key, nonce, this.#header, [this.#segment.subarray(0, this.#filled)]));
    this.#filled = 0;
  }
}

/**
 * Header + sealed segments in, plaintext out. A segment's plaintext is released only after its tag
 * verified, and the stream ends without error only after the final segment verified. Any failure is
 * DATA_LOSS.
 */
export class DecryptStream extends Transform {
  readonly #key: Buffer;
  #header: Buffer | undefined;
  #prefix: Buffer = Buffer.alloc(0);
  #buf: Buffer = Buffer.alloc(HEADER_BYTES);
  #filled = 0;
  #index = 0;

  constructor(dataKey: Buffer) {
    super();
    checkKey(dataKey);
    this.#key = dataKey;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      let off = 0;
      while (off < chunk.length) {
        const n = Math.min(chunk.length - off, this.#buf.length - this.#filled);
        chunk.copy(this.#buf, this.#filled, off, off + n);
        this.#filled += n;
        off += n;
        if (this.#filled < this.#buf.length) break;
        if (this.#header) this.#open(false);
        else this.#takeHeader();
      }
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      if (!this.#header) throw new DomainError('DATA_LOSS', 'encrypted stream: truncated inside the header');
      if (this.#filled < TAG_BYTES) {
        throw new DomainError('DATA_LOSS', `encrypted stream: truncated (no final segment after segment ${this.#index})`);
      }
      this.#open(true);
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  #takeHeader(): void {
    const header = Buffer.from(this.#buf);
    const h = decodeHeader(header);
    this.#header = header;
    this.#prefix = h.noncePrefix;
    this.#buf = Buffer.allocUnsafe(h.segmentSize + TAG_BYTES);
    this.#filled = 0;
  }

  #open(final: boolean): void {
    const sealed = this.#buf.subarray(0, this.#filled);
    const plain = openGcm(this.#key, segmentNonce(this.#prefix, this.#index, final), this.#header!, sealed);
    if (!plain) {
      const where = final ? 'final segment' : `segment ${this.#index}`;
      throw new DomainError('DATA_LOSS', `encrypted stream: ${where} does not authenticate (corrupt, reordered, truncated or wrong key)`);
    }
    this.#index++;
    this.#filled = 0;
    if (plain.length > 0) this.push(plain);
  }
}
