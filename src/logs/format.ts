// The on-disk format of a log (docs/logs.md):
//
//   header   "TXLOG001" | u16 len | keyId | u16 len | wrapped data key | u16 len | logId      (plain)
//   records  sealed records (src/crypto/records.ts) under the log's data key, AAD = sha256(header)
//
// A record's plaintext is u8 type | u64 timeMs | body. Record 0 is OPEN (metadata), the last is CLOSE; a log
// without CLOSE was cut short (daemon stopped). A key rotation re-wraps the data key into `<logId>.tlog-key`
// ("TXLKEY01" | u16 len | keyId | u16 len | wrapped | u16 len | logId), which then takes the header's place:
// the header (and so every record's AAD) is never rewritten.
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, promises as fs } from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';
import { writeAll } from './files';
import type { LogChunkRecord, LogMeta, LogStream, WrappedDataKey } from './types';

export const truncationMarker = (afterBytes: number): string => `[tetrix: log truncated after ${afterBytes} bytes]\n`;
export const droppedMarker = (bytes: number): string => `[tetrix: ${bytes} further bytes dropped]\n`;
export const CUT_SHORT_MARKER = '[tetrix: log ends without its close record: the node stopped while writing it]\n';

// A workspace id, optionally with a segment number (<id>.1: output after a daemon restart).
export const LOG_ID = /^[a-z0-9][a-z0-9-]{0,62}(\.[1-9][0-9]{0,2})?$/;
export const LOG_SUFFIX = '.tlog';
export const KEY_SUFFIX = '.tlog-key';
export const MAGIC = Buffer.from('TXLOG001');
export const KEY_MAGIC = Buffer.from('TXLKEY01');
export const MAX_HEADER_FIELD = 4096;
export const MAX_SEALED_RECORD = 1 << 20;
/** u8 type | u64 timeMs: the plaintext's prefix in every record. */
export const RECORD_PREFIX_BYTES = 9;

export enum RecordType { Open = 0, Chunk = 1, Truncated = 2, Close = 3 }

export function encodeHeader(keyId: string, wrapped: Buffer, logId: string): Buffer {
  return encodeFields(MAGIC, [Buffer.from(keyId, 'utf8'), wrapped, Buffer.from(logId, 'utf8')]);
}

export async function readHeader(handle: fs.FileHandle, logId: string): Promise<{ keyId: string; wrapped: Buffer; bytes: Buffer }> {
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

export const keyFileOf = (logFile: string): string => logFile.slice(0, -LOG_SUFFIX.length) + KEY_SUFFIX;

/** The re-wrapped data key of a log, or undefined when it has none (its header's wrap holds). */
export async function readKeyFile(file: string, logId: string): Promise<WrappedDataKey | undefined> {
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
export async function writeKeyFile(file: string, keyId: string, wrapped: Buffer, logId: string): Promise<void> {
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

export function originBytes(stream: LogStream, task: Buffer): Buffer {
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

export function decodeChunk(type: RecordType, timeMs: number, body: Buffer, logId: string): LogChunkRecord | undefined {
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

export function decodeOpen(body: Buffer, logId: string): { meta: LogMeta; createdMs: number } {
  try {
    const v = JSON.parse(body.toString('utf8')) as { meta: LogMeta; createdMs: number };
    return { meta: v.meta, createdMs: v.createdMs };
  } catch (err) {
    throw dataLoss(logId, 'open record malformed', err);
  }
}

export function checkMeta(meta: LogMeta): void {
  for (const [k, v] of Object.entries(meta)) {
    if (typeof v !== 'string') throw new DomainError('INVALID_ARGUMENT', `meta.${k}: must be a string`);
  }
  if (JSON.stringify(meta).length > 16 * 1024) throw new DomainError('INVALID_ARGUMENT', 'meta: larger than 16 KiB');
}

export function wrapContext(logId: string): string {
  return `tetrix/log/v1:${logId}`;
}

export function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

export function dataLoss(logId: string, why: string, cause?: unknown): DomainError {
  return new DomainError('DATA_LOSS', `log ${logId}: ${why}`, cause === undefined ? undefined : { cause });
}

export function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ?? (e instanceof Error ? e.message : String(err));
}
