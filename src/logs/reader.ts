// Reading one log record by record, each authenticated before it is returned.
import { createHash } from 'node:crypto';
import { constants as fsConstants, promises as fs } from 'node:fs';
import { GCM_TAG_BYTES } from '../crypto/aead';
import { openRecord, RECORD_LENGTH_BYTES } from '../crypto/records';
import { DomainError } from '../errors';
import { dataLoss, errText, keyFileOf, MAX_SEALED_RECORD, readHeader, readKeyFile, RECORD_PREFIX_BYTES, RecordType, wrapContext } from './format';
import type { LogSealer } from './types';

interface RawRecord {
  type: RecordType;
  timeMs: number;
  body: Buffer;
}

export class LogReader {
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
    const len = await this.readAt(this.position, RECORD_LENGTH_BYTES, limit);
    if (!len) return undefined;
    const sealedLength = len.readUInt32BE(0);
    if (sealedLength < RECORD_PREFIX_BYTES + GCM_TAG_BYTES || sealedLength > MAX_SEALED_RECORD) {
      throw dataLoss(this.logId, `record ${this.seq} has an impossible length ${sealedLength}`);
    }
    const sealed = await this.readAt(this.position + RECORD_LENGTH_BYTES, sealedLength, limit);
    if (!sealed) return undefined;
    const plain = this.unseal(sealed);
    this.position += RECORD_LENGTH_BYTES + sealedLength;
    return { type: plain.readUInt8(0) as RecordType, timeMs: Number(plain.readBigUInt64BE(1)), body: plain.subarray(RECORD_PREFIX_BYTES) };
  }

  async close(): Promise<void> {
    this.dataKey.fill(0);
    await this.handle.close();
  }

  private unseal(sealed: Buffer): Buffer {
    const plain = openRecord(this.dataKey, this.headerDigest, this.seq, sealed);
    if (!plain) throw dataLoss(this.logId, `record ${this.seq} failed authentication (tampered, reordered or corrupt)`);
    this.seq++;
    return plain;
  }

  /** Exactly n bytes at pos if they lie below limit and are in the file; otherwise undefined. */
  private async readAt(pos: number, n: number, limit: number): Promise<Buffer | undefined> {
    if (pos + n > limit) return undefined;
    const buf = Buffer.alloc(n);
    const { bytesRead } = await this.handle.read(buf, 0, n, pos);
    return bytesRead === n ? buf : undefined;
  }
}
