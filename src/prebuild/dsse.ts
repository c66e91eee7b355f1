// DSSE v1 (Dead Simple Signing Envelope): https://github.com/secure-systems-lab/dsse (protocol.md,
// envelope.md). The signature covers PAE(payloadType, payload), never the JSON envelope, so nothing here
// depends on JSON canonicalization; the envelope is only transport.
import { KeyObject, verify as verifySignature } from 'node:crypto';
import { DomainError } from '../errors';
import { parsePublicKeyPem, provenanceKeyId } from './signing-key';

/** payloadType for an in-toto Statement (in-toto attestation spec v1, envelope.md). */
export const IN_TOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';

export interface DsseSignature {
  /** Unauthenticated hint only (DSSE: MUST NOT be used for security decisions). */
  keyid?: string;
  /** base64 of the raw signature bytes. */
  sig: string;
}

export interface DsseEnvelope {
  /** base64 of the serialized body. */
  payload: string;
  payloadType: string;
  signatures: DsseSignature[];
}

export interface DsseSigner {
  readonly keyId: string;
  sign(data: Buffer): Buffer;
}

const SP = Buffer.from(' ');

/**
 * Pre-Authentication Encoding:
 *   "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
 * LEN is the byte length in ASCII decimal without leading zeros; type is UTF-8. Built from bytes, so a
 * non-ASCII type counts its UTF-8 bytes, not its characters.
 */
export function preAuthEncoding(payloadType: string, payload: Buffer): Buffer {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([
    Buffer.from('DSSEv1'), SP,
    Buffer.from(String(type.length)), SP, type, SP,
    Buffer.from(String(payload.length)), SP, payload,
  ]);
}

/** Signs payload under payloadType; one signature, standard base64. */
export function signEnvelope(payloadType: string, payload: Buffer, signer: DsseSigner): DsseEnvelope {
  const sig = signer.sign(preAuthEncoding(payloadType, payload));
  return {
    payload: payload.toString('base64'),
    payloadType,
    signatures: [{ keyid: signer.keyId, sig: sig.toString('base64') }],
  };
}

export interface VerifiedEnvelope {
  payloadType: string;
  payload: Buffer;
  /** keyId (sha256 of SPKI) of the key that verified. */
  keyId: string;
}

/**
 * Verifies an envelope (object or JSON text) against one trusted Ed25519 public key, following the DSSE
 * protocol: decode (reject on failure), verify every signature against PAE (accept if one verifies: a
 * (1, 1) threshold), then reject an unsupported payloadType. keyid hints are ignored for the decision.
 * Throws DomainError DATA_LOSS with a message starting "dsse malformed:", "dsse signature:" or
 * "dsse payloadType:".
 */
export function verifyEnvelope(
  envelope: unknown,
  publicKey: string | KeyObject,
  acceptedPayloadTypes: readonly string[] = [IN_TOTO_PAYLOAD_TYPE],
): VerifiedEnvelope {
  const key = typeof publicKey === 'string' ? parsePublicKeyPem(publicKey) : publicKey;
  const env = parseEnvelope(envelope);
  const payload = decodeBase64(env.payload, 'payload');
  const pae = preAuthEncoding(env.payloadType, payload);
  const verified = env.signatures.some((s, i) => {
    const sig = decodeBase64(s.sig, `signatures[${i}].sig`);
    return verifySignature(null, pae, key, sig);
  });
  const keyId = provenanceKeyId(key);
  if (!verified) {
    throw new DomainError('DATA_LOSS', `dsse signature: no signature verifies with key ${keyId}`);
  }
  if (!acceptedPayloadTypes.includes(env.payloadType)) {
    throw new DomainError('DATA_LOSS', `dsse payloadType: ${JSON.stringify(env.payloadType)} is not one of ${acceptedPayloadTypes.join(', ')}`);
  }
  return { payloadType: env.payloadType, payload, keyId };
}

/** Checks the envelope's shape; accepts the JSON text, its bytes, or the parsed object. */
export function parseEnvelope(input: unknown): DsseEnvelope {
  let obj = input;
  if (typeof input === 'string' || Buffer.isBuffer(input)) {
    try {
      obj = JSON.parse(input.toString());
    } catch (err) {
      throw malformed('not JSON', err);
    }
  }
  if (!isObject(obj)) throw malformed('not a JSON object');
  if (typeof obj.payload !== 'string') throw malformed('payload must be a string');
  if (typeof obj.payloadType !== 'string') throw malformed('payloadType must be a string');
  if (!Array.isArray(obj.signatures) || obj.signatures.length === 0) throw malformed('signatures must be a non-empty array');
  const signatures = obj.signatures.map((s: unknown, i: number): DsseSignature => {
    if (!isObject(s) || typeof s.sig !== 'string') throw malformed(`signatures[${i}].sig must be a string`);
    if (s.keyid !== undefined && s.keyid !== null && typeof s.keyid !== 'string') throw malformed(`signatures[${i}].keyid must be a string`);
    return typeof s.keyid === 'string' ? { keyid: s.keyid, sig: s.sig } : { sig: s.sig };
  });
  return { payload: obj.payload, payloadType: obj.payloadType, signatures };
}

// DSSE: "Either standard or URL-safe base64 encodings are allowed ... verifiers MUST accept either."
// Buffer.from(s, 'base64') takes both but silently skips stray characters, so check the alphabet first.
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

function decodeBase64(text: string, field: string): Buffer {
  if (!BASE64.test(text) || text.replace(/=+$/, '').length % 4 === 1) throw malformed(`${field} is not base64`);
  return Buffer.from(text, 'base64');
}

function malformed(why: string, cause?: unknown): DomainError {
  return new DomainError('DATA_LOSS', `dsse malformed: ${why}`, cause === undefined ? undefined : { cause });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
