// The tail of a terminal session's output, replayed to a client that re-attaches: a fixed ring of
// `capacity` bytes, so a session that prints forever holds no more than that (docs/exec.md).

export const DEFAULT_REPLAY_BYTES = 256 * 1024;

export class ReplayBuffer {
  private buf: Buffer | undefined; // allocated on the first write
  private start = 0;               // where the oldest byte is
  private length = 0;

  constructor(readonly capacity = DEFAULT_REPLAY_BYTES) {}

  get size(): number {
    return this.length;
  }

  push(data: Buffer): void {
    if (data.length === 0) return;
    const buf = (this.buf ??= Buffer.allocUnsafe(this.capacity));
    const cap = this.capacity;
    // Only the last `capacity` bytes of a big chunk can survive it.
    const src = data.length > cap ? data.subarray(data.length - cap) : data;
    let at = (this.start + this.length) % cap;
    let done = 0;
    while (done < src.length) {
      const n = Math.min(src.length - done, cap - at);
      src.copy(buf, at, done, done + n);
      done += n;
      at = (at + n) % cap;
    }
    const total = this.length + src.length;
    if (total > cap) {
      this.start = (this.start + (total - cap)) % cap;
      this.length = cap;
    } else {
      this.length = total;
    }
  }

  /** The buffered bytes, oldest first (a copy). */
  contents(): Buffer {
    if (!this.buf || this.length === 0) return Buffer.alloc(0);
    const end = this.start + this.length;
    if (end <= this.capacity) return Buffer.from(this.buf.subarray(this.start, end));
    return Buffer.concat([this.buf.subarray(this.start), this.buf.subarray(0, end - this.capacity)]);
  }
}
