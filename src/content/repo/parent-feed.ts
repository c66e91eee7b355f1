// The previous snapshot's files, for an incremental walk to reuse the chunks of unchanged ones (restic's
// parent snapshot). The daemon opens the parent's tree chunks and streams their plaintext while the walk
// runs; both are in the walk's order, so a lookup is a merge step and the walk waits only when it is
// ahead of the stream. Reading the whole parent first put ~0.4 s of a 44k-file tree before the walk.
import { REC_CHUNK, REC_FILE, REC_IDENTITY, TreeReader } from './tree-stream';

export interface ParentFile {
  path: string;
  identity: string;
  size: number;
  chunks: { id: Buffer; length: number }[];
}

interface Building {
  path: string;
  identity?: string;
  chunks: { id: Buffer; length: number }[];
  whole: boolean;    // every chunk is still in the repository
}

export class ParentFeed {
  readonly #reader = new TreeReader({ literals: false });
  readonly #known: (id: Buffer) => boolean;
  readonly #queue: ParentFile[] = [];
  #head = 0;
  #building: Building | undefined;
  #ended = false;
  #wake: (() => void) | undefined;

  /** known: whether the repository holds a chunk (a parent file with one it lost is read afresh). */
  constructor(known: (id: Buffer) => boolean) {
    this.#known = known;
  }

  /** The next bytes of the parent's tree stream. A damaged stream ends the feed: later files are read. */
  push(bytes: Buffer): void {
    if (this.#ended) return;
    try {
      for (const rec of this.#reader.feed(bytes)) {
        if (rec.type === REC_FILE) {
          this.#complete();
          this.#building = { path: rec.path, chunks: [], whole: true };
        } else if (rec.type === REC_IDENTITY && this.#building) this.#building.identity = rec.identity;
        else if (rec.type === REC_CHUNK && this.#building) {
          this.#building.chunks.push({ id: rec.id, length: rec.length });
          if (!this.#known(rec.id)) this.#building.whole = false;
        }
      }
    } catch {
      this.#building = undefined;
      this.end();
      return;
    }
    this.#notify();
  }

  /** The stream is over (or will not come: no parent, or it failed to read). */
  end(): void {
    if (this.#ended) return;
    this.#complete();
    this.#ended = true;
    this.#notify();
  }

  /** The parent's file at `path`, if it had one with all its chunks; a promise only while the stream is
   *  behind the walk (an await per file of a large tree adds up). */
  find(path: string): ParentFile | undefined | Promise<ParentFile | undefined> {
    while (this.#head < this.#queue.length) {
      const f = this.#queue[this.#head];
      const order = compareWalkOrder(f.path, path);
      if (order > 0) return undefined;
      this.#advance();
      if (order === 0) return f;
    }
    if (this.#ended) return undefined;
    return new Promise<void>((resolve) => (this.#wake = resolve)).then(() => this.find(path));
  }

  #complete(): void {
    const b = this.#building;
    this.#building = undefined;
    if (!b || b.identity === undefined || !b.whole || b.chunks.length === 0) return;
    this.#queue.push({ path: b.path, identity: b.identity, size: b.chunks.reduce((n, c) => n + c.length, 0), chunks: b.chunks });
  }

  #advance(): void {
    if (++this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

/**
 * The order native/archive.c walks in: depth first, a directory's entries sorted bytewise, a directory
 * before what it holds. Paths compare component by component ("a/b" comes before "a-c", whose component
 * "a-c" sorts after "a"). Non-ASCII names compare by UTF-16 unit, which can differ from bytes: such a
 * file is then read instead of reused, never matched wrongly (a match needs the same path and identity).
 */
export function compareWalkOrder(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    if (x === SLASH) return -1;   // a's component ended first: a prefix of b's sorts first
    if (y === SLASH) return 1;
    return x - y;
  }
  return a.length - b.length;
}

const SLASH = 0x2f;
