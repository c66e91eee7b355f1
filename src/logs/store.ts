// Per-workspace (and per-prebuild) output logs, encrypted at rest. Format: ./format.ts and docs/logs.md.
//
// Each log has its own random data key, wrapped by the node's keyring (the sealer); its records are sealed
// with src/crypto/records.ts. A key rotation re-wraps the data key beside the log (rewrap()).
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';
import { publishFile } from './files';
import {
  checkMeta, CUT_SHORT_MARKER, dataLoss, decodeChunk, decodeOpen, encodeHeader, KEY_SUFFIX, keyFileOf, LOG_ID, LOG_SUFFIX,
  MAX_SEALED_RECORD, readHeader, readKeyFile, RecordType, wrapContext, writeKeyFile,
} from './format';
import { LogReader } from './reader';
import { LogWriter } from './writer';
import type { LogChunkRecord, LogInfo, LogMeta, LogStoreOptions, WrappedDataKey } from './types';

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
