// Writing one log: records are sealed as output arrives and queued for the disk, with a bound on the queue.
import { createHash } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { constants as fsConstants, promises as fs } from 'node:fs';
import { Readable } from 'node:stream';
import { sealRecord } from '../crypto/records';
import { DomainError } from '../errors';
import { readableFromFd, writevAll } from './files';
import { errText, originBytes, RECORD_PREFIX_BYTES, RecordType, u64 } from './format';
import type { LogChunkRecord, LogMeta, LogStream, LogWriterStats } from './types';

export class LogWriter {
  private readonly events = new EventEmitter();
  private handle: fs.FileHandle | undefined;
  private seq = 0;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private writing = false;
  private ending: Promise<void> | undefined;
  private closing: Promise<LogWriterStats> | undefined;
  private failure: unknown;
  private ended = false;
  private bytesLogged = 0;
  private bytesDropped = 0;
  private truncated = false;
  private peakQueuedBytes = 0;
  private readonly headerDigest: Buffer;
  /** Bytes of the file that are completely written (header included). */
  fileSize = 0;

  /** @internal use LogStore.create */
  constructor(
    readonly logId: string,
    private readonly dataKey: Buffer,
    header: Buffer,
    private readonly maxBytes: number,
    private readonly maxRecordData: number,
    private readonly maxQueuedBytes: number,
    private readonly onClosed: () => void,
  ) {
    this.headerDigest = createHash('sha256').update(header).digest();
    this.events.setMaxListeners(0);
  }

  /** @internal */
  sealOpenRecord(meta: LogMeta): Buffer {
    const body = Buffer.from(JSON.stringify({ meta, createdMs: Date.now() }));
    return this.seal(RecordType.Open, Date.now(), [body]);
  }

  /** @internal */
  async openFile(file: string): Promise<void> {
    this.handle = await fs.open(file, fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_NOFOLLOW);
    this.kick();
  }

  get closed(): boolean {
    return this.ending !== undefined;
  }

  stats(): LogWriterStats {
    return { bytesLogged: this.bytesLogged, bytesDropped: this.bytesDropped, truncated: this.truncated, peakQueuedBytes: this.peakQueuedBytes };
  }

  /**
   * Seals and queues one chunk (split at maxRecordData). Never waits: returns false when the queue is above
   * its bound, and the caller should await drained() before appending more. Past the cap it only counts.
   */
  append(chunk: LogChunkRecord): boolean {
    if (this.ending) throw new DomainError('FAILED_PRECONDITION', `log ${this.logId}: closed`);
    let data = chunk.data;
    if (this.truncated || this.failure !== undefined) {
      this.bytesDropped += data.length;
      return true;
    }
    const room = this.maxBytes - this.bytesLogged;
    const over = data.length > room;
    if (over) {
      this.bytesDropped += data.length - room;
      data = data.subarray(0, room);
    }
    const task = Buffer.from(chunk.task, 'utf8');
    for (let off = 0; off < data.length; off += this.maxRecordData) {
      const part = data.subarray(off, off + this.maxRecordData);
      this.enqueue(this.seal(RecordType.Chunk, chunk.timeMs, [originBytes(chunk.stream, task), part]));
    }
    this.bytesLogged += data.length;
    if (over) {
      this.truncated = true;
      this.enqueue(this.seal(RecordType.Truncated, chunk.timeMs, [originBytes(chunk.stream, task), u64(this.bytesLogged)]));
    }
    this.kick();
    return this.queuedBytes < this.maxQueuedBytes;
  }

  /** Resolves once the write queue is back under half its bound (or the writer failed or closed). */
  async drained(): Promise<void> {
    while (this.queuedBytes >= this.maxQueuedBytes / 2 && this.writing) await once(this.events, 'progress');
  }

  /**
   * Copies a workload's output into the log until EOF: reads chunks as they come (no line splitting, so a
   * producer without newlines is fine), stamps, seals, appends. Memory is bounded by the write queue; past the
   * cap it keeps reading and dropping so the workload is never stalled by a full pipe. A number is taken as
   * the read end of a pipe, owned (and closed) by capture from then on.
   */
  async capture(source: Readable | number, origin: { stream: LogStream; task: string }): Promise<void> {
    const readable = typeof source === 'number' ? readableFromFd(source) : source;
    try {
      for await (const raw of readable) {
        const data = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
        if (this.ending) continue; // keep draining: a closed log must not block the workload
        if (!this.append({ timeMs: Date.now(), stream: origin.stream, task: origin.task, data })) await this.drained();
      }
    } catch (err) {
      throw new DomainError('INTERNAL', `log ${this.logId}: reading ${origin.task || 'workload'} ${origin.stream}: ${errText(err)}`, { cause: err });
    } finally {
      if (typeof source === 'number') readable.destroy();
    }
  }

  /**
   * Writes the CLOSE record and resolves once the file holds it: from then on readers see the whole log, and
   * nothing more is appended. The fsync is close()'s. Never rejects; close() reports a failed write.
   */
  end(): Promise<void> {
    this.ending ??= this.writeClose();
    return this.ending;
  }

  /**
   * end(), then fsyncs and closes the file and wipes the data key. Followers end after CLOSE. Rejects
   * (INTERNAL) if a write failed earlier; the log then ends where the failure happened.
   */
  close(): Promise<LogWriterStats> {
    this.closing ??= this.finish();
    return this.closing;
  }

  /** @internal resolves when fileSize moves past pos, the writer closes, or signal aborts. */
  async progressBeyond(pos: number, signal?: AbortSignal): Promise<void> {
    if (this.fileSize > pos || this.ended) return;
    const ac = new AbortController();
    const onAbort = (): void => ac.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.race([once(this.events, 'progress', { signal: ac.signal }), once(this.events, 'closed', { signal: ac.signal })]);
    } catch (err) {
      if (!ac.signal.aborted) throw err;
    } finally {
      ac.abort();
      signal?.removeEventListener('abort', onAbort);
    }
  }

  private async writeClose(): Promise<void> {
    if (this.failure === undefined) {
      const stats = this.stats();
      this.enqueue(this.seal(RecordType.Close, Date.now(), [u64(stats.bytesLogged), u64(stats.bytesDropped)]));
      this.kick();
    }
    while (this.writing) await once(this.events, 'progress');
  }

  private async finish(): Promise<LogWriterStats> {
    await this.end();
    const stats = this.stats();
    try {
      if (this.failure === undefined) await this.handle?.sync();
    } finally {
      await this.handle?.close();
      this.handle = undefined;
      this.dataKey.fill(0);
      this.ended = true;
      this.onClosed();
      this.events.emit('closed');
    }
    if (this.failure !== undefined) {
      throw new DomainError('INTERNAL', `log ${this.logId}: write failed: ${errText(this.failure)}`, { cause: this.failure });
    }
    return stats;
  }

  private seal(type: RecordType, timeMs: number, body: Buffer[]): Buffer {
    const prefix = Buffer.alloc(RECORD_PREFIX_BYTES);
    prefix.writeUInt8(type, 0);
    prefix.writeBigUInt64BE(BigInt(Math.max(0, Math.floor(timeMs))), 1);
    return sealRecord(this.dataKey, this.headerDigest, this.seq++, [prefix, ...body]);
  }

  private enqueue(record: Buffer): void {
    this.queue.push(record);
    this.queuedBytes += record.length;
    this.peakQueuedBytes = Math.max(this.peakQueuedBytes, this.queuedBytes);
  }

  private kick(): void {
    if (this.writing || this.queue.length === 0 || this.handle === undefined) return;
    this.writing = true;
    void this.writeQueued();
  }

  private async writeQueued(): Promise<void> {
    try {
      while (this.queue.length > 0 && this.handle !== undefined) {
        const batch = this.queue;
        const bytes = batch.reduce((n, b) => n + b.length, 0);
        this.queue = [];
        await writevAll(this.handle, batch, bytes);
        this.fileSize += bytes;
        this.queuedBytes -= bytes;
        this.events.emit('progress');
      }
    } catch (err) {
      // Keep the workload running: from now on output is counted as dropped, and close() reports the error.
      this.failure = err;
      this.queue = [];
      this.queuedBytes = 0;
    } finally {
      this.writing = false;
      this.events.emit('progress');
    }
  }
}
