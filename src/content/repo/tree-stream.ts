// A snapshot's tree stream: the archive (the same pax tar native/archive.c writes for the full format)
// with every regular file's data replaced by the list of its chunks. Restoring concatenates the literal
// bytes and the chunks' plaintext back into that tar and hands it to the hardened extractor
// (native/extract.c), so both formats are checked by the same code. Records (docs/backup-format.md):
//   0x01 u32be len, bytes    literal tar bytes (headers, pax records, padding, the end-of-archive marker)
//   0x02 u32be len, utf8     the path of the file whose chunks follow ("content/src/a.c"), for error reports
//   0x03 id(32) u32be len    one chunk of that file's data, `len` bytes of plaintext
//   0x04 u32be len, ascii    that file's identity when it was read (dev:ino:size:mtime:ctime): the next backup
//                            reuses its chunks without reading it if the identity is unchanged (restic's rule)
//   0x05 u32be len, u32be plain, packed
//                            literal tar bytes with their zero runs as counts (native/tree-pack.c); written
//                            instead of 0x01 since snapshot version 2
import { DomainError } from '../../errors';
import { TAR_BLOCK, TREE_PACK_SLACK, treePack } from '../../native';

export const REC_LITERAL = 1;
export const REC_FILE = 2;
export const REC_CHUNK = 3;
export const REC_IDENTITY = 4;
export const REC_PACKED_LITERAL = 5;
export const ID_BYTES = 32;
const BLOCK = TAR_BLOCK;

export type TreeRecord =
  | { type: typeof REC_LITERAL; bytes: Buffer }
  | { type: typeof REC_FILE; path: string }
  | { type: typeof REC_CHUNK; id: Buffer; length: number }
  | { type: typeof REC_IDENTITY; identity: string };

/**
 * Writes records; literal bytes are gathered until a file or chunk record (or the end) needs them out, then
 * packed (0x05). Records are packed into 64 KiB buffers for `out` (one Buffer per record was a tenth of an
 * incremental's walk in allocation and collection); the stream's bytes, and so its chunks, are the same
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

  literal(bytes: Buffer): void {
    if (bytes.length === 0) return;
    if (this.#literalLen + bytes.length > this.#literal.length) this.#growLiteral(this.#literalLen + bytes.length);
    this.#literalLen += bytes.copy(this.#literal, this.#literalLen);
    if (this.#literalLen >= LITERAL_MAX) this.#closeLiteral();
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
    const grown = Buffer.allocUnsafe(Math.max(need, this.#literal.length * 2));
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
const LITERAL_MAX = 1 << 20;   // a literal longer than this (a file's many xattrs) goes out in parts
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

/**
 * Splits the walk's tar stream into literal bytes and regular files' data. It relies on the shape of what
 * native/archive.c writes (ustar blocks, pax `x` headers whose `path`/`size` override the next entry), and
 * treats anything it does not recognise as literal bytes: the extractor decides on those at restore.
 */
export class TarSplitter {
  readonly #literal: (bytes: Buffer) => void;
  readonly #fileStart: (path: string) => void;
  readonly #fileData: (bytes: Buffer) => void;
  readonly #fileEnd: () => void;
  #block = Buffer.allocUnsafe(BLOCK);
  #blockFill = 0;
  #state: 'header' | 'pax' | 'data' | 'skip' = 'header';
  #remaining = 0;      // bytes of pax body, file data or literal data left
  #pad = 0;            // padding after them
  #pax: Buffer[] = [];
  #paxPath: string | undefined;
  #paxSize: number | undefined;
  #size = 0;
  /** The regular file whose data comes next (or came last). */
  currentPath = '';

  constructor(sink: { literal(b: Buffer): void; fileStart(path: string): void; fileData(b: Buffer): void; fileEnd(): void }) {
    this.#literal = (b) => sink.literal(b);
    this.#fileStart = (p) => sink.fileStart(p);
    this.#fileData = (b) => sink.fileData(b);
    this.#fileEnd = () => sink.fileEnd();
  }

  push(buf: Buffer): void {
    let off = 0;
    while (off < buf.length) {
      if (this.#state === 'header') {
        const n = Math.min(BLOCK - this.#blockFill, buf.length - off);
        buf.copy(this.#block, this.#blockFill, off, off + n);
        this.#blockFill += n;
        off += n;
        if (this.#blockFill === BLOCK) {
          this.#blockFill = 0;
          this.#header(this.#block);
        }
        continue;
      }
      if (this.#remaining > 0) {
        const n = Math.min(this.#remaining, buf.length - off);
        const part = buf.subarray(off, off + n);
        if (this.#state === 'data') this.#fileData(part);
        else {
          this.#literal(part);
          if (this.#state === 'pax') this.#pax.push(Buffer.from(part));
        }
        this.#remaining -= n;
        off += n;
        if (this.#remaining > 0) continue;
        if (this.#state === 'data') this.#fileEnd();
        if (this.#state === 'pax') this.#parsePax();
      }
      const n = Math.min(this.#pad, buf.length - off);
      this.#literal(buf.subarray(off, off + n));
      this.#pad -= n;
      off += n;
      if (this.#pad === 0) this.#state = 'header';
    }
  }

  #header(block: Buffer): void {
    this.#literal(block);
    if (block.every((b) => b === 0)) return; // the end-of-archive marker (or padding of it)
    const flag = String.fromCharCode(block[156]);
    const size = this.#paxSize ?? octal(block, 124, 12);
    if (flag === 'x') {
      this.#pax = [];
      this.#enter('pax', octal(block, 124, 12));
      return;
    }
    const path = this.#paxPath ?? ustarPath(block);
    this.#paxPath = undefined;
    this.#paxSize = undefined;
    if ((flag === '0' || flag === '\0' || flag === '7') && size > 0) {
      this.currentPath = path;
      this.#fileStart(path);
      this.#enter('data', size);
      this.#size = size;
    } else this.#enter('skip', size);
  }

  #enter(state: 'pax' | 'data' | 'skip', size: number): void {
    this.#state = state;
    this.#remaining = size;
    this.#pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (size === 0) this.#state = this.#pad === 0 ? 'header' : state;
  }

  #parsePax(): void {
    const body = Buffer.concat(this.#pax);
    this.#pax = [];
    let off = 0;
    while (off < body.length) {
      const space = body.indexOf(0x20, off);
      if (space < 0) break;
      const len = Number(body.toString('latin1', off, space));
      if (!Number.isSafeInteger(len) || len <= 0 || off + len > body.length) break;
      const rec = body.subarray(space + 1, off + len - 1);
      const eq = rec.indexOf(0x3d);
      if (eq > 0) {
        const key = rec.toString('utf8', 0, eq);
        if (key === 'path') this.#paxPath = rec.toString('utf8', eq + 1);
        else if (key === 'size') this.#paxSize = Number(rec.toString('latin1', eq + 1));
      }
      off += len;
    }
  }

  /** The size of the file whose data is next, if none of it came yet (else undefined). */
  get pendingDataSize(): number | undefined {
    return this.#state === 'data' && this.#remaining === this.#size ? this.#size : undefined;
  }

  /** The file's data will not come (its chunks are known): what follows is its padding. */
  skipData(): void {
    if (this.pendingDataSize === undefined) throw new DomainError('INTERNAL', 'snapshot: no file data to skip');
    this.#remaining = 0;
  }

  /** At the end of the stream: anything but a clean header boundary is a walk that broke off. */
  end(): void {
    if (this.#state !== 'header' || this.#blockFill !== 0) throw new DomainError('INTERNAL', 'snapshot: archive ended inside an entry');
  }
}

function octal(block: Buffer, off: number, len: number): number {
  const s = block.toString('latin1', off, off + len).replace(/[\0 ]+$/, '').trim();
  return s === '' ? 0 : parseInt(s, 8);
}

function ustarPath(block: Buffer): string {
  const cstr = (o: number, l: number): string => {
    const end = block.indexOf(0, o);
    return block.toString('utf8', o, end < 0 || end > o + l ? o + l : end);
  };
  const name = cstr(0, 100);
  const prefix = block.toString('latin1', 257, 262) === 'ustar' ? cstr(345, 155) : '';
  return prefix ? `${prefix}/${name}` : name;
}
