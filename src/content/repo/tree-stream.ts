// A snapshot's tree stream: the archive (the same pax tar native/archive.c writes for the full format)
// with every regular file's data replaced by the list of its chunks. Restoring concatenates the literal
// bytes and the chunks' plaintext back into that tar and hands it to the hardened extractor
// (native/extract.c), so both formats are checked by the same code. Records (docs/backup-format.md):
//   0x01 u32be len, bytes    literal tar bytes (headers, pax records, padding, the end-of-archive marker);
//                            version 1 trees only, still read
//   0x02 u32be len, utf8     the path of the file whose chunks follow ("content/src/a.c"), for error reports
//   0x03 id(32) u32be len    one chunk of that file's data, `len` bytes of plaintext
//   0x04 u32be len, ascii    that file's identity when it was read (dev:ino:size:mtime:ctime): the next backup
//                            reuses its chunks without reading it if the identity is unchanged (restic's rule)
//   0x05 u32be len, u32be plain, packed
//                            the same bytes with their zero runs as counts (native/tree-pack.c); what
//                            snapshot version 2 writes instead of 0x01
import { DomainError } from '../../errors';
import { TREE_PACK_SLACK, treePack } from '../../native';

export const REC_LITERAL = 1;
export const REC_FILE = 2;
export const REC_CHUNK = 3;
export const REC_IDENTITY = 4;
export const REC_PACKED_LITERAL = 5;
export const ID_BYTES = 32;

export type TreeRecord =
  | { type: typeof REC_LITERAL; bytes: Buffer }
  | { type: typeof REC_FILE; path: string }
  | { type: typeof REC_CHUNK; id: Buffer; length: number }
  | { type: typeof REC_IDENTITY; identity: string };

/**
 * Writes records; literal bytes are gathered until a file or chunk record (or the end) needs them out, then
 * packed (0x05). Records are gathered into 64 KiB buffers for `out` (one Buffer per record was a tenth of
 * an incremental's walk in allocation and collection); the stream's bytes, and so its chunks, are the same
 * either way.
 */
export class TreeWriter {
  readonly #out: (bytes: Buffer) => void;
  #literal = Buffer.allocUnsafe(OUT_BUFFER);
  #literalLen = 0;
  #buf = Buffer.allocUnsafe(OUT_BUFFER);
  #len = 0;

  constructor(out: (bytes: Buffer) => void) {
    this.#out = out;
  }

  /** Literal tar bytes. Records split them every LITERAL_MAX bytes, however they were handed in, so the same
   *  tree gives the same stream. */
  literal(bytes: Buffer): void {
    for (let off = 0; off < bytes.length;) {
      const n = Math.min(bytes.length - off, LITERAL_MAX - this.#literalLen);
      if (this.#literalLen + n > this.#literal.length) this.#growLiteral(this.#literalLen + n);
      this.#literalLen += bytes.copy(this.#literal, this.#literalLen, off, off + n);
      off += n;
      if (this.#literalLen === LITERAL_MAX) this.#closeLiteral();
    }
  }

  file(path: string): void {
    this.#text(REC_FILE, path, 'utf8');
  }

  identity(identity: string): void {
    this.#text(REC_IDENTITY, identity, 'latin1');
  }

  chunk(id: Buffer, length: number): void {
    this.#closeLiteral();
    const at = this.#reserve(1 + ID_BYTES + 4);
    this.#buf[at] = REC_CHUNK;
    id.copy(this.#buf, at + 1, 0, ID_BYTES);
    this.#buf.writeUInt32BE(length, at + 1 + ID_BYTES);
  }

  /** Everything written so far, out. */
  flush(): void {
    this.#closeLiteral();
    this.#emit();
  }

  #text(type: number, text: string, encoding: 'utf8' | 'latin1'): void {
    this.#closeLiteral();
    const n = Buffer.byteLength(text, encoding);
    const at = this.#reserve(5 + n);
    this.#buf[at] = type;
    this.#buf.writeUInt32BE(n, at + 1);
    this.#buf.write(text, at + 5, n, encoding);
  }

  #closeLiteral(): void {
    const plain = this.#literalLen;
    if (plain === 0) return;
    const at = this.#reserve(9 + plain + TREE_PACK_SLACK);
    const packed = treePack.treePack(this.#literal, 0, plain, this.#buf, at + 9);
    this.#buf[at] = REC_PACKED_LITERAL;
    this.#buf.writeUInt32BE(4 + packed, at + 1);
    this.#buf.writeUInt32BE(plain, at + 5);
    this.#len = at + 9 + packed;
    this.#literalLen = 0;
  }

  #growLiteral(need: number): void {
    const grown = Buffer.allocUnsafe(Math.min(LITERAL_MAX, Math.max(need, this.#literal.length * 2)));
    this.#literal.copy(grown, 0, 0, this.#literalLen);
    this.#literal = grown;
  }

  /** Room for n bytes at the returned offset; what is there already goes out first when they do not fit. */
  #reserve(n: number): number {
    if (this.#len + n > this.#buf.length) {
      this.#emit();
      if (n > this.#buf.length) this.#buf = Buffer.allocUnsafe(n);
    }
    const at = this.#len;
    this.#len += n;
    return at;
  }

  #emit(): void {
    if (this.#len === 0) return;
    const full = this.#buf.subarray(0, this.#len);
    this.#buf = Buffer.allocUnsafe(OUT_BUFFER);   // out may keep what it was given
    this.#len = 0;
    this.#out(full);
  }
}

const OUT_BUFFER = 64 << 10;
const LITERAL_MAX = 1 << 20;   // literal bytes per record at most (a directory of many empty files has more)
const RECORD_MAX = 64 << 20;

export class TreeReader {
  #carry: Buffer = Buffer.alloc(0);
  readonly #literals: boolean;

  /** literals: false leaves literal records out (a parent feed needs only files and chunks). */
  constructor(opts: { literals?: boolean } = {}) {
    this.#literals = opts.literals ?? true;
  }

  *feed(bytes: Buffer): Generator<TreeRecord> {
    let buf = this.#carry.length ? Buffer.concat([this.#carry, bytes]) : bytes;
    let off = 0;
    for (;;) {
      if (buf.length - off < 5) break;
      const type = buf[off];
      if (type === REC_CHUNK) {
        if (buf.length - off < 1 + ID_BYTES + 4) break;
        const id = Buffer.from(buf.subarray(off + 1, off + 1 + ID_BYTES));
        const length = buf.readUInt32BE(off + 1 + ID_BYTES);
        off += 1 + ID_BYTES + 4;
        yield { type, id, length };
        continue;
      }
      if (type < REC_LITERAL || type > REC_PACKED_LITERAL) throw new DomainError('DATA_LOSS', `snapshot tree: unknown record type ${type}`);
      const len = buf.readUInt32BE(off + 1);
      if (len > RECORD_MAX) throw new DomainError('DATA_LOSS', 'snapshot tree: record too large');
      if (buf.length - off < 5 + len) break;
      const start = off + 5;
      off += 5 + len;
      if (type === REC_FILE) yield { type, path: buf.toString('utf8', start, start + len) };
      else if (type === REC_IDENTITY) yield { type, identity: buf.toString('latin1', start, start + len) };
      else if (!this.#literals) continue;
      else if (type === REC_LITERAL) yield { type, bytes: buf.subarray(start, start + len) };
      else yield { type: REC_LITERAL, bytes: unpackLiteral(buf, start, len) };
    }
    this.#carry = Buffer.from(buf.subarray(off));
  }

  /** After the last chunk: a record cut short means the tree is damaged. */
  end(): void {
    if (this.#carry.length) throw new DomainError('DATA_LOSS', 'snapshot tree: ends inside a record');
  }
}

function unpackLiteral(buf: Buffer, start: number, len: number): Buffer {
  const plain = len >= 4 ? buf.readUInt32BE(start) : -1;
  if (plain < 0 || plain > RECORD_MAX) throw new DomainError('DATA_LOSS', 'snapshot tree: packed literal malformed');
  const out = Buffer.allocUnsafe(plain);
  if (!treePack.treeUnpack(buf, start + 4, len - 4, out)) throw new DomainError('DATA_LOSS', 'snapshot tree: packed literal malformed');
  return out;
}
