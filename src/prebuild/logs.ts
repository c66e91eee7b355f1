// Per-workspace (and per-prebuild) output logs, encrypted at rest. File format: docs/provenance.md#logs.
//
//   header   "TXLOG001" | u16 len | keyId | u16 len | wrapped data key | u16 len | logId      (plain)
//   records  u32 len | AES-256-GCM(ciphertext | 16-byte tag)                                 (sealed)
//
// Each log has its own random data key, wrapped by the node's keyring (the sealer). Record n is sealed with
// nonce = 0x00000000 | u64 n and AAD = sha256(header): records cannot be reordered, dropped from the
// middle, moved to another log, or paired with another header without failing authentication.
// Record 0 is OPEN (metadata), the last is CLOSE; a log without CLOSE was cut short (daemon stopped).
//
// A key rotation re-wraps the data key into `<logId>.tlog-key` ("TXLKEY01" | u16 len | keyId | u16 len |
// wrapped | u16 len | logId), which then takes the header's place: the header (and so every record's AAD)
// is never rewritten, and a log being written is re-wrapped like any other.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { closeSync, constants as fsConstants, createReadStream, existsSync, linkSync, openSync, promises as fs, unlinkSync, writeSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { DomainError } from '../errors';

export type LogStream = 'stdout' | 'stderr';

export interface LogChunkRecord {
  timeMs: number;
  stream: LogStream;
  /** Prebuilds: the task that wrote it; '' for a regular workspace. */
  task: string;
  data: Buffer;
}

export interface WrappedDataKey {
  keyId: string;
  wrapped: Buffer;
}

/**
 * Wraps per-log data keys under the node KEK. src/crypto/keys.ts's KeyRing fits as is. `context` names the
 * log ("tetrix/log/v1:<logId>") and is bound in as AAD, so a wrapped key cannot be moved to another log.
 */
export interface LogSealer {
  wrap(dataKey: Buffer, context: string): WrappedDataKey | Promise<WrappedDataKey>;
  unwrap(keyId: string, wrapped: Buffer, context: string): Buffer | Promise<Buffer>;
}

export interface LogStoreOptions {
  /** Directory of the logs, e.g. <stateDir>/logs; created 0700. */
  dir: string;
  sealer: LogSealer;
  /** Output bytes kept per log; after that a truncation marker, then output is counted and dropped. */
  maxBytesPerLog: number;
  /** Largest data payload of one record; bigger chunks are split. Default 64 KiB. */
  maxRecordData?: number;
  /** Sealed bytes a writer may queue before capture() stops reading until the disk catches up. Default 4 MiB. */
  maxQueuedBytes?: number;
}

/** Free-form, non-secret facts stored sealed in the OPEN record, e.g. ownerId/teamId/kind for authorization. */
export type LogMeta = Record<string, string>;

export interface LogInfo {
  logId: string;
  meta: LogMeta;
  createdMs: number;
  /** True while a writer in this process still appends to it. */
  open: boolean;
}

export interface LogWriterStats {
  /** Output bytes stored. */
  bytesLogged: number;
  /** Output bytes counted and dropped after the cap (or after a write error). */
  bytesDropped: number;
  truncated: boolean;
  /** Most sealed bytes ever waiting for the disk: stays near maxQueuedBytes however fast the workload writes. */
  peakQueuedBytes: number;
}

export const truncationMarker = (afterBytes: number): string => `[tetrix: log truncated after ${afterBytes} bytes]\n`;
export const droppedMarker = (bytes: number): string => `[tetrix: ${bytes} further bytes dropped]\n`;
export const CUT_SHORT_MARKER = '[tetrix: log ends without its close record: the node stopped while writing it]\n';

// A workspace id, optionally with a segment number (<id>.1: output after a daemon restart).
const LOG_ID = /^[a-z0-9][a-z0-9-]{0,62}(\.[1-9][0-9]{0,2})?$/;
const LOG_SUFFIX = '.tlog';
const KEY_SUFFIX = '.tlog-key';
const MAGIC = Buffer.from('TXLOG001');
const KEY_MAGIC = Buffer.from('TXLKEY01');
const TAG_BYTES = 16;
const MAX_HEADER_FIELD = 4096;
const MAX_SEALED_RECORD = 1 << 20;

enum RecordType { Open = 0, Chunk = 1, Truncated = 2, Close = 3 }

// ---------------------------------------------------------------------------------------------------------
// The store

export class LogStore {
  private readonly writers = new Map<string, LogWriter>();
  private readonly maxRecordData: number;
  private readonly maxQueuedBytes: number;

  constructor(private readonly options: LogStoreOptions) {
    this.maxRecordData = options.maxRecordData ?? 64 * 1024;
    this.maxQueuedBytes = options.maxQueuedBytes ?? 4 * 1024 * 1024;
    if (!(options.maxBytesPerLog >= 0)) throw new DomainError('INVALID_ARGUMENT', 'maxBytesPerLog: must be >= 0');
    if (!(this.maxRecordData > 0 && this.maxRecordData <= MAX_SEALED_RECORD / 2)) {
      throw new DomainError('INVALID_ARGUMENT', 'maxRecordData: must be in (0, 512 KiB]');
    }
  }

  /** Creates the log directory (0700). Call once before use. */
  async init(): Promise<void> {
    await fs.mkdir(this.options.dir, { recursive: true, mode: 0o700 });
  }

  /** Starts a new log; ALREADY_EXISTS if one with this id exists (even closed: logs are never reopened). */
  async create(logId: string, meta: LogMeta = {}): Promise<LogWriter> {
    const file = this.file(logId);
    if (this.writers.has(logId)) throw new DomainError('ALREADY_EXISTS', `log ${logId}: already open`);
    checkMeta(meta);
    const dataKey = randomBytes(32);
    const { keyId, wrapped } = await this.options.sealer.wrap(dataKey, wrapContext(logId));
    const header = encodeHeader(keyId, wrapped, logId);
    const writer = new LogWriter(logId, dataKey, header, this.options.maxBytesPerLog, this.maxRecordData, this.maxQueuedBytes,
      () => this.writers.delete(logId));
    const first = Buffer.concat([header, writer.sealOpenRecord(meta)]);
    writer.fileSize = first.length;
    // Reserved before the file appears, so a follower never sees a log without its writer.
    if (this.writers.has(logId)) {
      dataKey.fill(0);
      throw new DomainError('ALREADY_EXISTS', `log ${logId}: already open`);
    }
    this.writers.set(logId, writer);
    try {
      publishFile(file, first);
      await writer.openFile(file);
    } catch (err) {
      this.writers.delete(logId);
      dataKey.fill(0);
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new DomainError('ALREADY_EXISTS', `log ${logId}: already exists`);
      throw err;
    }
    return writer;
  }

  isOpen(logId: string): boolean {
    return this.writers.has(logId);
  }

  /** The log's OPEN record (authenticated); NOT_FOUND if there is no such log. */
  async info(logId: string): Promise<LogInfo> {
    const file = this.file(logId);
    // Most lookups are for a log that does not exist (a new workspace id): answered without opening it.
    if (!existsSync(file)) throw new DomainError('NOT_FOUND', `log ${logId}: not found`);
    const reader = await LogReader.open(file, logId, this.options.sealer);
    try {
      const open = await reader.next(Infinity);
      if (!open || open.type !== RecordType.Open) throw dataLoss(logId, 'first record is not OPEN');
      return { logId, ...decodeOpen(open.body, logId), open: this.writers.has(logId) };
    } finally {
      await reader.close();
    }
  }

  /**
   * The log's chunks from the start. With follow, waits for new chunks while a writer in this process has the
   * log open, and ends when it closes (or when signal aborts). Markers (truncation, dropped bytes) come as
   * chunks whose data is the marker text. NOT_FOUND if there is no such log; DATA_LOSS on a tampered record.
   */
  async *read(logId: string, options: { follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<LogChunkRecord> {
    const reader = await LogReader.open(this.file(logId), logId, this.options.sealer);
    try {
      const open = await reader.next(this.readLimit(logId));
      if (!open || open.type !== RecordType.Open) throw dataLoss(logId, 'first record is not OPEN');
      for (;;) {
        if (options.signal?.aborted) return;
        // The writer as of now: if it closes while we read, the next pass reads the rest without a limit.
        const writer = this.writers.get(logId);
        const rec = await reader.next(writer ? writer.fileSize : Infinity);
        if (rec) {
          const chunk = decodeChunk(rec.type, rec.timeMs, rec.body, logId);
          if (chunk) yield chunk;
          if (rec.type === RecordType.Close) return;
          continue;
        }
        if (writer) {
          if (!options.follow) return;
          await writer.progressBeyond(reader.position, options.signal);
          continue;
        }
        // No writer and no CLOSE: the node stopped while writing it (or its tail was cut off).
        yield { timeMs: Date.now(), stream: 'stderr', task: '', data: Buffer.from(CUT_SHORT_MARKER) };
        return;
      }
    } finally {
      await reader.close();
    }
  }

  /** Deletes a log that is not open. NOT_FOUND if absent, FAILED_PRECONDITION while a writer has it. */
  async remove(logId: string): Promise<void> {
    const file = this.file(logId);
    if (this.writers.has(logId)) throw new DomainError('FAILED_PRECONDITION', `log ${logId}: still being written`);
    try {
      await fs.unlink(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DomainError('NOT_FOUND', `log ${logId}: not found`);
      throw err;
    }
    await fs.unlink(keyFileOf(file)).catch(() => undefined);
  }

  /** How many logs each key id wraps a data key of (the re-wrapped key where there is one). */
  async keyUsage(): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    for (const logId of await this.logIds()) {
      const wrap = await this.currentWrap(logId).catch(() => undefined);
      if (wrap) counts.set(wrap.keyId, (counts.get(wrap.keyId) ?? 0) + 1);
    }
    return counts;
  }

  /**
   * Re-wraps every log's data key that is not under currentKeyId (open logs too: the writer keeps its key in
   * memory and never reads the header again). Returns how many were re-wrapped. A log whose key does not
   * unwrap (damaged, or its key long gone) is left as it is: keyUsage() still counts it against its key.
   */
  async rewrap(currentKeyId: string): Promise<number> {
    let count = 0;
    for (const logId of await this.logIds()) {
      const wrap = await this.currentWrap(logId).catch(() => undefined);
      if (!wrap || wrap.keyId === currentKeyId) continue;
      const unwrapped = await (async () => this.options.sealer.unwrap(wrap.keyId, wrap.wrapped, wrapContext(logId)))().catch((err: unknown) => {
        if (err instanceof DomainError && (err.code === 'DATA_LOSS' || err.code === 'FAILED_PRECONDITION')) return undefined;
        throw err;
      });
      if (!unwrapped) continue;
      const dataKey = Buffer.from(unwrapped);
      try {
        const next = await this.options.sealer.wrap(dataKey, wrapContext(logId));
        await writeKeyFile(keyFileOf(this.file(logId)), next.keyId, next.wrapped, logId);
      } finally {
        dataKey.fill(0);
      }
      count++;
    }
    return count;
  }

  private async logIds(): Promise<string[]> {
    return (await fs.readdir(this.options.dir))
      .filter((name) => name.endsWith(LOG_SUFFIX) && LOG_ID.test(name.slice(0, -LOG_SUFFIX.length)))
      .map((name) => name.slice(0, -LOG_SUFFIX.length));
  }

  private async currentWrap(logId: string): Promise<WrappedDataKey> {
    const file = this.file(logId);
    const handle = await fs.open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    try {
      return (await readKeyFile(keyFileOf(file), logId)) ?? (await readHeader(handle, logId));
    } finally {
      await handle.close();
    }
  }

  /** Retention: removes logs not open and last written more than retentionMs ago. Returns their ids. */
  async sweep(retentionMs: number, nowMs = Date.now()): Promise<string[]> {
    const removed: string[] = [];
    const names = await fs.readdir(this.options.dir);
    for (const name of names) {
      // A re-wrapped key whose log is gone (removed while a rotation ran).
      if (name.endsWith(KEY_SUFFIX) && !names.includes(name.slice(0, -KEY_SUFFIX.length) + LOG_SUFFIX)) {
        await fs.unlink(path.join(this.options.dir, name)).catch(() => undefined);
      }
    }
    for (const name of names) {
      const isLog = name.endsWith(LOG_SUFFIX) && LOG_ID.test(name.slice(0, -LOG_SUFFIX.length));
      const isTemp = name.startsWith('.') && name.endsWith('.tmp');
      if (!isLog && !isTemp) continue;
      const id = name.slice(0, -LOG_SUFFIX.length);
      if (isLog && this.writers.has(id)) continue;
      const full = path.join(this.options.dir, name);
      const st = await fs.lstat(full).catch(() => undefined);
      if (!st || nowMs - st.mtimeMs <= retentionMs) continue;
      await fs.unlink(full).catch(() => undefined);
      if (isLog) await fs.unlink(keyFileOf(full)).catch(() => undefined);
      if (isLog) removed.push(id);
    }
    return removed;
  }

  /** Only bytes the writer has finished writing: a follower must not read a record half-written. */
  private readLimit(logId: string): number {
    return this.writers.get(logId)?.fileSize ?? Infinity;
  }

  private file(logId: string): string {
    if (!LOG_ID.test(logId)) throw new DomainError('INVALID_ARGUMENT', 'logId: must be a workspace id, optionally with a .N segment');
    return path.join(this.options.dir, logId + LOG_SUFFIX);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writing

export class LogWriter {
  private readonly events = new EventEmitter();
  private handle: fs.FileHandle | undefined;
  private seq = 0;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private writing = false;
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
    return this.closing !== undefined;
  }

  stats(): LogWriterStats {
    return { bytesLogged: this.bytesLogged, bytesDropped: this.bytesDropped, truncated: this.truncated, peakQueuedBytes: this.peakQueuedBytes };
  }

  /**
   * Seals and queues one chunk (split at maxRecordData). Never waits: returns false when the queue is above
   * its bound, and the caller should await drained() before appending more. Past the cap it only counts.
   */
  append(chunk: LogChunkRecord): boolean {
    if (this.closing) throw new DomainError('FAILED_PRECONDITION', `log ${this.logId}: closed`);
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
        if (this.closing) continue; // keep draining: a closed log must not block the workload
        if (!this.append({ timeMs: Date.now(), stream: origin.stream, task: origin.task, data })) await this.drained();
      }
    } catch (err) {
      throw new DomainError('INTERNAL', `log ${this.logId}: reading ${origin.task || 'workload'} ${origin.stream}: ${errText(err)}`, { cause: err });
    } finally {
      if (typeof source === 'number') readable.destroy();
    }
  }

  /**
   * Writes a CLOSE record, flushes, fsyncs and closes the file, and wipes the data key. Followers end after
   * CLOSE. Rejects (INTERNAL) if a write failed earlier; the log then ends where the failure happened.
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

  private async finish(): Promise<LogWriterStats> {
    const stats = this.stats();
    if (this.failure === undefined) {
      this.enqueue(this.seal(RecordType.Close, Date.now(), [u64(stats.bytesLogged), u64(stats.bytesDropped)]));
      this.kick();
    }
    while (this.writing) await once(this.events, 'progress');
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
    const nonce = Buffer.alloc(12);
    nonce.writeBigUInt64BE(BigInt(this.seq++), 4);
    const cipher = createCipheriv('aes-256-gcm', this.dataKey, nonce);
    cipher.setAAD(this.headerDigest);
    const prefix = Buffer.alloc(9);
    prefix.writeUInt8(type, 0);
    prefix.writeBigUInt64BE(BigInt(Math.max(0, Math.floor(timeMs))), 1);
    const parts = [Buffer.alloc(4), cipher.update(prefix), ...body.map((b) => cipher.update(b)), cipher.final(), cipher.getAuthTag()];
    const record = Buffer.concat(parts);
    record.writeUInt32BE(record.length - 4, 0);
    return record;
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

// ---------------------------------------------------------------------------------------------------------
// Reading

interface RawRecord {
  type: RecordType;
  timeMs: number;
  body: Buffer;
}

class LogReader {
  position: number;
  private seq = 0;

  private constructor(
    private readonly handle: fs.FileHandle,
    private readonly logId: string,
    private readonly dataKey: Buffer,
    private readonly headerDigest: Buffer,
    headerLength: number,
  ) {
    this.position = headerLength;
  }

  static async open(file: string, logId: string, sealer: LogSealer): Promise<LogReader> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DomainError('NOT_FOUND', `log ${logId}: not found`);
      throw err;
    }
    try {
      const header = await readHeader(handle, logId);
      const wrap = (await readKeyFile(keyFileOf(file), logId)) ?? header;
      let dataKey: Buffer;
      try {
        dataKey = Buffer.from(await sealer.unwrap(wrap.keyId, wrap.wrapped, wrapContext(logId)));
      } catch (err) {
        if (err instanceof DomainError && err.code !== 'DATA_LOSS') throw err;
        throw dataLoss(logId, `data key does not unwrap: ${errText(err)}`, err);
      }
      if (dataKey.length !== 32) throw dataLoss(logId, 'data key has the wrong length');
      const digest = createHash('sha256').update(header.bytes).digest();
      return new LogReader(handle, logId, dataKey, digest, header.bytes.length);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** The next complete record below limit, or undefined when there is none (yet). */
  async next(limit: number): Promise<RawRecord | undefined> {
    const len = await this.readAt(this.position, 4, limit);
    if (!len) return undefined;
    const sealedLength = len.readUInt32BE(0);
    if (sealedLength < 9 + TAG_BYTES || sealedLength > MAX_SEALED_RECORD) {
      throw dataLoss(this.logId, `record ${this.seq} has an impossible length ${sealedLength}`);
    }
    const sealed = await this.readAt(this.position + 4, sealedLength, limit);
    if (!sealed) return undefined;
    const plain = this.unseal(sealed);
    this.position += 4 + sealedLength;
    return { type: plain.readUInt8(0) as RecordType, timeMs: Number(plain.readBigUInt64BE(1)), body: plain.subarray(9) };
  }

  async close(): Promise<void> {
    this.dataKey.fill(0);
    await this.handle.close();
  }

  private unseal(sealed: Buffer): Buffer {
    const nonce = Buffer.alloc(12);
    nonce.writeBigUInt64BE(BigInt(this.seq), 4);
    const decipher = createDecipheriv('aes-256-gcm', this.dataKey, nonce);
    decipher.setAAD(this.headerDigest);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    try {
      const plain = Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - TAG_BYTES)), decipher.final()]);
      this.seq++;
      return plain;
    } catch (err) {
      throw dataLoss(this.logId, `record ${this.seq} failed authentication (tampered, reordered or corrupt)`, err);
    }
  }

  /** Exactly n bytes at pos if they lie below limit and are in the file; otherwise undefined. */
  private async readAt(pos: number, n: number, limit: number): Promise<Buffer | undefined> {
    if (pos + n > limit) return undefined;
    const buf = Buffer.alloc(n);
    const { bytesRead } = await this.handle.read(buf, 0, n, pos);
    return bytesRead === n ? buf : undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Encoding

function encodeHeader(keyId: string, wrapped: Buffer, logId: string): Buffer {
  return encodeFields(MAGIC, [Buffer.from(keyId, 'utf8'), wrapped, Buffer.from(logId, 'utf8')]);
}

async function readHeader(handle: fs.FileHandle, logId: string): Promise<{ keyId: string; wrapped: Buffer; bytes: Buffer }> {
  const max = MAGIC.length + 3 * (2 + MAX_HEADER_FIELD);
  const buf = Buffer.alloc(max);
  const { bytesRead } = await handle.read(buf, 0, max, 0);
  const data = buf.subarray(0, bytesRead);
  if (data.length < MAGIC.length || !data.subarray(0, MAGIC.length).equals(MAGIC)) throw dataLoss(logId, 'not a tetrix log (bad magic)');
  const fields = decodeFields(data, MAGIC.length, logId);
  const off = fields.reduce((end, f) => end + 2 + f.length, MAGIC.length);
  if (fields[2].toString('utf8') !== logId) throw dataLoss(logId, 'header names another log');
  return { keyId: fields[0].toString('utf8'), wrapped: Buffer.from(fields[1]), bytes: Buffer.from(data.subarray(0, off)) };
}

const keyFileOf = (logFile: string): string => logFile.slice(0, -LOG_SUFFIX.length) + KEY_SUFFIX;

/** The re-wrapped data key of a log, or undefined when it has none (its header's wrap holds). */
async function readKeyFile(file: string, logId: string): Promise<WrappedDataKey | undefined> {
  let data: Buffer;
  try {
    data = await fs.readFile(file, { flag: fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  if (!data.subarray(0, KEY_MAGIC.length).equals(KEY_MAGIC)) throw dataLoss(logId, 're-wrapped key file has a bad magic');
  const fields = decodeFields(data, KEY_MAGIC.length, logId);
  if (fields[2].toString('utf8') !== logId) throw dataLoss(logId, 're-wrapped key file names another log');
  return { keyId: fields[0].toString('utf8'), wrapped: Buffer.from(fields[1]) };
}

/** Written whole under a temporary name, fsynced, renamed over the old one: never half a key. */
async function writeKeyFile(file: string, keyId: string, wrapped: Buffer, logId: string): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await fs.open(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
  try {
    await writeAll(handle, encodeFields(KEY_MAGIC, [Buffer.from(keyId, 'utf8'), wrapped, Buffer.from(logId, 'utf8')]));
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.rename(tmp, file);
  const dir = await fs.open(path.dirname(file), fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  await dir.sync().finally(() => dir.close());
}

function encodeFields(magic: Buffer, fields: Buffer[]): Buffer {
  const parts: Buffer[] = [magic];
  for (const f of fields) {
    if (f.length > MAX_HEADER_FIELD) throw new DomainError('INTERNAL', 'log header field too long');
    const len = Buffer.alloc(2);
    len.writeUInt16BE(f.length);
    parts.push(len, f);
  }
  return Buffer.concat(parts);
}

function decodeFields(data: Buffer, start: number, logId: string): Buffer[] {
  let off = start;
  const fields: Buffer[] = [];
  for (let i = 0; i < 3; i++) {
    if (off + 2 > data.length) throw dataLoss(logId, 'header cut short');
    const len = data.readUInt16BE(off);
    if (len > MAX_HEADER_FIELD || off + 2 + len > data.length) throw dataLoss(logId, 'header cut short');
    fields.push(data.subarray(off + 2, off + 2 + len));
    off += 2 + len;
  }
  return fields;
}

function originBytes(stream: LogStream, task: Buffer): Buffer {
  const b = Buffer.alloc(3);
  b.writeUInt8(stream === 'stderr' ? 1 : 0, 0);
  b.writeUInt16BE(Math.min(task.length, 0xffff), 1);
  return Buffer.concat([b, task.subarray(0, 0xffff)]);
}

function decodeOrigin(body: Buffer, logId: string): { stream: LogStream; task: string; rest: Buffer } {
  if (body.length < 3) throw dataLoss(logId, 'chunk record too short');
  const taskLen = body.readUInt16BE(1);
  if (body.length < 3 + taskLen) throw dataLoss(logId, 'chunk record too short');
  return {
    stream: body.readUInt8(0) === 1 ? 'stderr' : 'stdout',
    task: body.subarray(3, 3 + taskLen).toString('utf8'),
    rest: body.subarray(3 + taskLen),
  };
}

function decodeChunk(type: RecordType, timeMs: number, body: Buffer, logId: string): LogChunkRecord | undefined {
  switch (type) {
    case RecordType.Chunk: {
      const o = decodeOrigin(body, logId);
      return { timeMs, stream: o.stream, task: o.task, data: o.rest };
    }
    case RecordType.Truncated: {
      const o = decodeOrigin(body, logId);
      const after = o.rest.length === 8 ? Number(o.rest.readBigUInt64BE(0)) : 0;
      return { timeMs, stream: o.stream, task: o.task, data: Buffer.from(truncationMarker(after)) };
    }
    case RecordType.Close: {
      if (body.length !== 16) throw dataLoss(logId, 'close record malformed');
      const dropped = Number(body.readBigUInt64BE(8));
      return dropped > 0 ? { timeMs, stream: 'stderr', task: '', data: Buffer.from(droppedMarker(dropped)) } : undefined;
    }
    default:
      throw dataLoss(logId, `unexpected record type ${type}`);
  }
}

function decodeOpen(body: Buffer, logId: string): { meta: LogMeta; createdMs: number } {
  try {
    const v = JSON.parse(body.toString('utf8')) as { meta: LogMeta; createdMs: number };
    return { meta: v.meta, createdMs: v.createdMs };
  } catch (err) {
    throw dataLoss(logId, 'open record malformed', err);
  }
}

function checkMeta(meta: LogMeta): void {
  for (const [k, v] of Object.entries(meta)) {
    if (typeof v !== 'string') throw new DomainError('INVALID_ARGUMENT', `meta.${k}: must be a string`);
  }
  if (JSON.stringify(meta).length > 16 * 1024) throw new DomainError('INVALID_ARGUMENT', 'meta: larger than 16 KiB');
}

function wrapContext(logId: string): string {
  return `tetrix/log/v1:${logId}`;
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

// ---------------------------------------------------------------------------------------------------------
// Files and fds

/**
 * Writes the complete first bytes under a temp name, then link()s into place: O_EXCL, never a partial header.
 * Synchronous: a few hundred bytes on the local state dir, on every workspace start, where five thread-pool
 * round trips (open, write, close, link, unlink) cost more than the calls.
 */
function publishFile(file: string, bytes: Buffer): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openSync(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
  try {
    for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, file);
  } finally {
    unlinkSync(tmp);
  }
}

async function writevAll(handle: fs.FileHandle, bufs: Buffer[], total: number): Promise<void> {
  const { bytesWritten } = await handle.writev(bufs);
  if (bytesWritten < total) await writeAll(handle, Buffer.concat(bufs).subarray(bytesWritten));
}

async function writeAll(handle: fs.FileHandle, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length;) {
    const { bytesWritten } = await handle.write(buf, off, buf.length - off, null);
    off += bytesWritten;
  }
}

/**
 * A pipe fd becomes a net.Socket: libuv polls it with epoll, so an idle pipe holds no threadpool thread
 * (fs.createReadStream on a pipe would park a threadpool thread in read(2)). Regular files fall back to fs.
 */
function readableFromFd(fd: number): Readable {
  try {
    return new net.Socket({ fd, readable: true, writable: false });
  } catch {
    return createReadStream('', { fd, highWaterMark: 64 * 1024, autoClose: true });
  }
}

function dataLoss(logId: string, why: string, cause?: unknown): DomainError {
  return new DomainError('DATA_LOSS', `log ${logId}: ${why}`, cause === undefined ? undefined : { cause });
}

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ?? (e instanceof Error ? e.message : String(err));
}
