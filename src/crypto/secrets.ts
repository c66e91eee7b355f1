// Small secrets at rest (workspace environment values, tokens): AES-256-GCM directly under a KEK, in a
// compact string for the state database: `tx1.<keyId>.<base64url(nonce || ciphertext || tag)>`.
// The optional `aad` binds a secret to where it belongs (e.g. "workspace:<id>:env:<NAME>"), so a sealed
// value copied into another row does not open there.
import { DomainError } from '../errors';
import { isKeyId, KeyRing } from './keys';

const PREFIX = 'tx1';
const DOMAIN = 'tetrix/secret/v1';

function secretAad(keyId: string, aad: string): Buffer {
  return Buffer.from(`${DOMAIN}\0${keyId}\0${aad}`);
}

export function sealSecret(keyring: KeyRing, plaintext: Buffer | string, aad = ''): string {
  const keyId = keyring.current().id;
  const data = typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext;
  const { blob } = keyring.seal(data, secretAad(keyId, aad), keyId);
  return `${PREFIX}.${keyId}.${blob.toString('base64url')}`;
}

/** DATA_LOSS when the value is malformed or altered; FAILED_PRECONDITION when its key is not here. */
export function openSecret(keyring: KeyRing, sealed: string, aad = ''): Buffer {
  const { keyId, blob } = parseSealed(sealed);
  return keyring.open({ keyId, blob }, secretAad(keyId, aad), 'sealed secret');
}

/** The key id a sealed secret names (to find values still sealed under an old key). */
export function sealedKeyId(sealed: string): string {
  return parseSealed(sealed).keyId;
}

/**
 * The key id of every sealed value inside `text` (a JSON row, a column), found by its format alone: a census
 * of what still depends on a key needs no knowledge of where each secret lives or of its aad.
 */
export function sealedKeyIdsIn(text: string): string[] {
  return [...text.matchAll(/(?<![A-Za-z0-9_-])tx1\.(kek-[0-9a-f]{16})\.[A-Za-z0-9_-]+/g)].map((m) => m[1]);
}

/** Re-seals under the current key; returns the input unchanged when it already is. */
export function resealSecret(keyring: KeyRing, sealed: string, aad = ''): string {
  if (sealedKeyId(sealed) === keyring.current().id) return sealed;
  return sealSecret(keyring, openSecret(keyring, sealed, aad), aad);
}

function parseSealed(sealed: string): { keyId: string; blob: Buffer } {
  const parts = typeof sealed === 'string' ? sealed.split('.') : [];
  if (parts.length !== 3 || parts[0] !== PREFIX || !isKeyId(parts[1]) || !/^[A-Za-z0-9_-]+$/.test(parts[2])) {
    // Never echo the value itself: it may be a plaintext secret stored by mistake.
    throw new DomainError('DATA_LOSS', 'sealed secret: not in the tx1 format');
  }
  return { keyId: parts[1], blob: Buffer.from(parts[2], 'base64url') };
}
