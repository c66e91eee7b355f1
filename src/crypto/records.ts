// Sealed records: a sequence of variable-length records, each `u32 len | AES-256-GCM(plaintext) | tag`, that
// a reader can open one at a time while the writer is still appending (the log store, src/logs/). Record n is
// sealed with nonce = 0x00000000 || u64 n and the sequence's one AAD, so records cannot be reordered, dropped
// from the middle or moved to another sequence without failing authentication. The backup STREAM
// (./stream.ts) does not fit here: its segments are fixed-size, so a live reader would wait a whole segment.
import { GCM_NONCE_BYTES, openGcm, sealGcm } from './aead';

export const RECORD_LENGTH_BYTES = 4;

function recordNonce(seq: number): Buffer {
  const nonce = Buffer.alloc(GCM_NONCE_BYTES);
  nonce.writeBigUInt64BE(BigInt(seq), 4);
  return nonce;
}

/** `u32 len | ciphertext | tag` of record seq (the parts concatenated). */
export function sealRecord(key: Buffer, aad: Buffer, seq: number, parts: readonly Buffer[]): Buffer {
  const sealed = sealGcm(key, recordNonce(seq), aad, parts);
  const len = Buffer.alloc(RECORD_LENGTH_BYTES);
  len.writeUInt32BE(sealed.length, 0);
  return Buffer.concat([len, sealed]);
}

/** The plaintext of record seq (`ciphertext | tag`, its length already read), or undefined when it does not authenticate. */
export function openRecord(key: Buffer, aad: Buffer, seq: number, sealed: Buffer): Buffer | undefined {
  return openGcm(key, recordNonce(seq), aad, sealed);
}
