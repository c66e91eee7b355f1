// Verifying a snapshot's provenance: what `tetrixctl verify <snapshot>` runs. Order matters: nothing in the
// payload is trusted (not even parsed) until the signature over PAE(payloadType, payload) verifies.
import { createHash } from 'node:crypto';
import { DomainError } from '../errors';
import { IN_TOTO_PAYLOAD_TYPE, verifyEnvelope } from './dsse';
import type { ObjectStorage } from '../content/storage';
import { checkSlsaV1Statement, IN_TOTO_STATEMENT_V1, readProvenanceEnvelope, SLSA_PROVENANCE_V1, SlsaProvenanceStatement } from './provenance';

export interface VerifySnapshotProvenanceInput {
  /** The stored envelope: JSON text, its bytes, or the parsed object. */
  envelope: unknown;
  /** The node's Ed25519 public key (SPKI PEM), as GetNodeInfo returns it. */
  publicKeyPem: string;
  /** sha256 (lowercase hex) of the stored snapshot bytes, computed by the caller (see snapshotSha256). */
  snapshotSha256: string;
}

/**
 * Returns the verified statement, or throws DomainError DATA_LOSS whose message names the failed check:
 *   "dsse malformed: ..."            the envelope is not a DSSE envelope
 *   "dsse signature: ..."            no signature verifies with the key (tampered payload/type/sig, other key)
 *   "dsse payloadType: ..."          signed, but not an in-toto payload
 *   "provenance malformed: ..."      not JSON, or not an in-toto Statement v1 with SLSA v1 fields
 *   "provenance predicateType: ..."  a Statement, but not SLSA Provenance v1
 *   "provenance subject: ..."        no subject carries the snapshot's sha256
 * INVALID_ARGUMENT when the public key or snapshotSha256 argument itself is unusable.
 */
export function verifySnapshotProvenance(input: VerifySnapshotProvenanceInput): SlsaProvenanceStatement {
  const digest = input.snapshotSha256;
  if (!/^[0-9a-f]{64}$/.test(digest)) {
    throw new DomainError('INVALID_ARGUMENT', 'snapshotSha256: must be 64 lowercase hex digits');
  }
  const { payload } = verifyEnvelope(input.envelope, input.publicKeyPem, [IN_TOTO_PAYLOAD_TYPE]);
  const statement = parseStatement(payload);
  const subjects = statement.subject;
  if (!subjects.some((s) => s.digest?.sha256 === digest)) {
    const claimed = subjects.map((s) => s.digest?.sha256 ?? '(none)').join(', ');
    throw new DomainError('DATA_LOSS', `provenance subject: the snapshot's sha256 ${digest} matches no subject (claimed: ${claimed})`);
  }
  return statement;
}

/**
 * `tetrixctl verify <snapshot>`: hashes the stored snapshot object, reads the envelope stored beside it and
 * verifies both against the node key. NOT_FOUND (from storage) when either object is missing.
 */
export async function verifyStoredSnapshotProvenance(input: {
  storage: Pick<ObjectStorage, 'get' | 'sha256'>;
  snapshotObject: string;
  publicKeyPem: string;
}): Promise<SlsaProvenanceStatement> {
  const envelope = await readProvenanceEnvelope(input.storage, input.snapshotObject);
  const digest = await input.storage.sha256(input.snapshotObject);
  return verifySnapshotProvenance({ envelope, publicKeyPem: input.publicKeyPem, snapshotSha256: digest });
}

function parseStatement(payload: Buffer): SlsaProvenanceStatement {
  let obj: unknown;
  try {
    obj = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw new DomainError('DATA_LOSS', 'provenance malformed: payload is not JSON', { cause: err });
  }
  const head = obj as { _type?: unknown; predicateType?: unknown } | null;
  // Named separately from "malformed": a valid Statement of another kind is a different failure.
  if (typeof head === 'object' && head !== null && head._type === IN_TOTO_STATEMENT_V1 && head.predicateType !== SLSA_PROVENANCE_V1) {
    throw new DomainError('DATA_LOSS', `provenance predicateType: ${JSON.stringify(head.predicateType)} is not ${SLSA_PROVENANCE_V1}`);
  }
  return checkSlsaV1Statement(obj);
}

/** sha256 (lowercase hex) of a snapshot given as bytes or as a stream of chunks (e.g. a storage read stream). */
export async function snapshotSha256(source: Buffer | AsyncIterable<Buffer | Uint8Array>): Promise<string> {
  const hash = createHash('sha256');
  if (Buffer.isBuffer(source)) return hash.update(source).digest('hex');
  for await (const chunk of source) hash.update(chunk);
  return hash.digest('hex');
}
