// native/aead.c: AES-256-GCM sealed into a caller's buffer (the repository's packs), in crypto/aead.ts's format.
import type { NativePart } from './part';

export interface AeadNative {
  /** ciphertext || tag of the parts (concatenated) under key and nonce, written at out[offset..]; returns its
   *  length. Throws a RangeError, writing nothing, when it does not fit. Opened by crypto/aead.ts openGcm. */
  gcmSealInto(key: Buffer, nonce: Buffer, aad: Buffer, parts: readonly Buffer[], out: Buffer, offset: number): number;
}

export const aeadPart: NativePart<AeadNative> = {
  file: 'native/aead.c',
  functions: { gcmSealInto: true },
};
