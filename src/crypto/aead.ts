// The node's one AES-256-GCM seal and open. Every sealed format builds on these two: the backup STREAM
// (./stream.ts), the log records (./records.ts) and the nonce-prefixed blobs of the keyring (./keys.ts,
// ./kek-source.ts). Each format chooses its nonce and AAD; nothing here picks one for it.
import crypto from 'node:crypto';

export const GCM_NONCE_BYTES = 12;
export const GCM_TAG_BYTES = 16;

/** ciphertext || tag of the parts (concatenated) under key, nonce and aad. */
export function sealGcm(key: Buffer, nonce: Buffer, aad: Buffer, parts: readonly Buffer[]): Buffer {
  const cipher = crypto.createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = parts.map((p) => cipher.update(p));
  cipher.final();
  return Buffer.concat([...body, cipher.getAuthTag()]);
}

/** The plaintext of ciphertext || tag, or undefined when it does not authenticate (or is shorter than a tag). */
export function openGcm(key: Buffer, nonce: Buffer, aad: Buffer, sealed: Buffer): Buffer | undefined {
  if (sealed.length < GCM_TAG_BYTES) return undefined;
  const decipher = crypto.createDecipheriv('aes-256-gcm', key, nonce);
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - GCM_TAG_BYTES));
  const plain = decipher.update(sealed.subarray(0, sealed.length - GCM_TAG_BYTES));
  try {
    decipher.final();
  } catch {
    return undefined;
  }
  return plain;
}

/** nonce || ciphertext || tag with a fresh random nonce: for values sealed once under a long-lived key. */
export function sealBlob(key: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
  const nonce = crypto.randomBytes(GCM_NONCE_BYTES);
  return Buffer.concat([nonce, sealGcm(key, nonce, aad, [plaintext])]);
}

/** The plaintext of a sealBlob(), or undefined when it is too short or does not authenticate. */
export function openBlob(key: Buffer, aad: Buffer, blob: Buffer): Buffer | undefined {
  if (blob.length < GCM_NONCE_BYTES + GCM_TAG_BYTES) return undefined;
  return openGcm(key, blob.subarray(0, GCM_NONCE_BYTES), aad, blob.subarray(GCM_NONCE_BYTES));
}
