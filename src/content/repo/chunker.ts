// Content-defined chunking (FastCDC, native/chunker.c) with a gear table derived from the repository's
// secret: the same content always cuts at the same places inside one repository, and nowhere an observer
// could predict. Two sizes: file data (about 1 MiB) and the snapshot's tree stream (about 64 KiB, so a
// changed header costs little). Why C and not a TypeScript loop: docs/backup-format.md ("Chunker").
import crypto from 'node:crypto';
import { chunker } from '../../native';

export interface ChunkSizes {
  min: number;
  normal: number;
  max: number;
  bitsSmall: number;  // mask bits below `normal` (harder to cut)
  bitsLarge: number;  // above it (easier): FastCDC's normalized chunking, level 2
}

export const DATA_CHUNKS: ChunkSizes = { min: 256 << 10, normal: 1 << 20, max: 4 << 20, bitsSmall: 22, bitsLarge: 18 };
export const TREE_CHUNKS: ChunkSizes = { min: 16 << 10, normal: 64 << 10, max: 256 << 10, bitsSmall: 18, bitsLarge: 14 };

/** 256 64-bit gear values from the repository's chunker secret (HKDF-SHA256). */
export function gearTable(secret: Buffer): Buffer {
  return Buffer.from(crypto.hkdfSync('sha256', secret, Buffer.alloc(0), 'tetrix/repo/gear/v1', 256 * 8));
}

/**
 * Cuts a byte stream into chunks; `emit` gets each chunk as a view that is valid only during the call.
 * Call end() after the last push (a file's end is always a chunk's end).
 */
export class StreamChunker {
  readonly #gear: Buffer;
  readonly #sizes: ChunkSizes;
  readonly #emit: (chunk: Buffer) => void;
  readonly #acc: Buffer;
  #len = 0;
  #scanned = 0;

  constructor(gear: Buffer, sizes: ChunkSizes, emit: (chunk: Buffer) => void) {
    this.#gear = gear;
    this.#sizes = sizes;
    this.#emit = emit;
    this.#acc = Buffer.allocUnsafe(sizes.max);
  }

  push(data: Buffer): void {
    let off = 0;
    while (off < data.length) {
      if (this.#len === 0) {
        // Nothing held: cut straight out of the caller's buffer, no copy.
        const cut = this.#cut(data.subarray(off), 0, data.length - off);
        if (cut > 0) {
          this.#emit(data.subarray(off, off + cut));
          off += cut;
          continue;
        }
        // No boundary in the rest (shorter than max): hold it, already scanned.
        data.copy(this.#acc, 0, off);
        this.#len = this.#scanned = data.length - off;
        return;
      }
      const n = Math.min(this.#sizes.max - this.#len, data.length - off);
      data.copy(this.#acc, this.#len, off, off + n);
      this.#len += n;
      off += n;
      this.#drain(false);
    }
  }

  end(): void {
    this.#drain(true);
  }

  #drain(final: boolean): void {
    while (this.#len > 0) {
      const cut = this.#cut(this.#acc, this.#scanned, this.#len);
      if (cut <= 0) {
        if (!final) {
          this.#scanned = this.#len;
          return;
        }
        this.#emit(this.#acc.subarray(0, this.#len));
        this.#len = 0;
        break;
      }
      this.#emit(this.#acc.subarray(0, cut));
      this.#acc.copyWithin(0, cut, this.#len);
      this.#len -= cut;
      this.#scanned = 0;
    }
    this.#scanned = 0;
  }

  #cut(buf: Buffer, from: number, len: number): number {
    const s = this.#sizes;
    return chunker.chunkerCut(this.#gear, buf, from, len, s.min, s.normal, s.max, s.bitsSmall, s.bitsLarge);
  }
}

/**
 * The same cut rule as native/chunker.c in TypeScript, with a 32-bit gear hash (64-bit arithmetic needs
 * BigInt in JavaScript, far slower). Kept for the measurement in bench/backup/chunker.ts only.
 */
export function tsChunkerCut(gear32: Uint32Array, buf: Buffer, len: number, s: ChunkSizes): number {
  const maskS = s.bitsSmall === 0 ? 0 : (~0 << (32 - Math.min(s.bitsSmall, 31))) >>> 0;
  const maskL = s.bitsLarge === 0 ? 0 : (~0 << (32 - s.bitsLarge)) >>> 0;
  if (len > s.max) len = s.max;
  let h = 0;
  let i = s.min >= 32 ? s.min - 32 : 0;
  for (; i < s.min && i < len; i++) h = ((h << 1) + gear32[buf[i]]) >>> 0;
  const normal = Math.min(s.normal, len);
  for (; i < normal; i++) {
    h = ((h << 1) + gear32[buf[i]]) >>> 0;
    if ((h & maskS) === 0) return i + 1;
  }
  for (; i < len; i++) {
    h = ((h << 1) + gear32[buf[i]]) >>> 0;
    if ((h & maskL) === 0) return i + 1;
  }
  return len;
}
