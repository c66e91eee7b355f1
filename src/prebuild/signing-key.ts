// The node's Ed25519 provenance signing key. Generated once, at first start, into
// <stateDir>/keys/provenance.key (PKCS#8 PEM, 0600, directory 0700). Its public half is published
// (GetNodeInfo) so anyone can check the DSSE envelopes this node signs; the private half never leaves
// this module: callers get a sign() function, not the key.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, KeyObject } from 'node:crypto';
import { constants as fsConstants, promises as fs } from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';

export const PROVENANCE_KEY_FILE = 'provenance.key';

export interface ProvenanceSigningKey {
  /** Lowercase hex sha256 of the public key's SubjectPublicKeyInfo DER. */
  readonly keyId: string;
  /** The public key as SPKI PEM ("-----BEGIN PUBLIC KEY-----"). */
  readonly publicKeyPem: string;
  /** Ed25519 signature (64 bytes) over data. */
  sign(data: Buffer): Buffer;
}

/** sha256 of the SPKI DER of an Ed25519 public key, lowercase hex. Accepts a PEM or a KeyObject. */
export function provenanceKeyId(publicKey: string | KeyObject): string {
  const key = typeof publicKey === 'string' ? parsePublicKeyPem(publicKey) : publicKey;
  return createHash('sha256').update(key.export({ format: 'der', type: 'spki' })).digest('hex');
}

/** Parses an Ed25519 public key PEM; INVALID_ARGUMENT for anything else. */
export function parsePublicKeyPem(pem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new DomainError('INVALID_ARGUMENT', 'publicKeyPem: not a PEM public key', { cause: err });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new DomainError('INVALID_ARGUMENT', `publicKeyPem: an ed25519 key is required, got ${key.asymmetricKeyType}`);
  }
  return key;
}

/**
 * Loads the node's signing key from <stateDir>/keys, creating it on first start. Refuses (FAILED_PRECONDITION)
 * a key file or key directory that group or others can access, a key that is not a regular file, or one
 * owned by another user: a key others could read is no longer this node's alone.
 */
export async function loadOrCreateSigningKey(stateDir: string): Promise<ProvenanceSigningKey> {
  const dir = path.join(stateDir, 'keys');
  await ensurePrivateDir(dir);
  const file = path.join(dir, PROVENANCE_KEY_FILE);
  let pem = await readPrivateFile(file);
  if (pem === undefined) {
    await writeNewKey(dir, file);
    pem = await readPrivateFile(file);
    if (pem === undefined) throw new DomainError('INTERNAL', `${file}: vanished right after it was created`);
  }
  return signingKeyFromPem(pem, file);
}

/** Wraps an Ed25519 PKCS#8 PEM private key. `origin` names it in errors (never the key itself). */
export function signingKeyFromPem(privateKeyPem: string, origin = 'provenance key'): ProvenanceSigningKey {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: privateKeyPem, format: 'pem' });
  } catch (err) {
    throw new DomainError('DATA_LOSS', `${origin}: not a PEM private key`, { cause: err });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new DomainError('FAILED_PRECONDITION', `${origin}: an ed25519 key is required, got ${privateKey.asymmetricKeyType}`);
  }
  const publicKey = createPublicKey(privateKey);
  const publicKeyPem = publicKey.export({ format: 'pem', type: 'spki' }).toString();
  const keyId = provenanceKeyId(publicKey);
  // A frozen object with a closure: util.inspect/JSON.stringify of it show the public half only.
  return Object.freeze({
    keyId,
    publicKeyPem,
    sign: (data: Buffer): Buffer => sign(null, data, privateKey),
  });
}

async function ensurePrivateDir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await fs.lstat(dir);
  if (!st.isDirectory()) throw new DomainError('FAILED_PRECONDITION', `${dir}: not a directory`);
  checkOwnerAndMode(dir, st.uid, st.mode);
}

/** The file's content, or undefined when it does not exist. Opened without following symlinks. */
async function readPrivateFile(file: string): Promise<string | undefined> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new DomainError('FAILED_PRECONDITION', `${file}: is a symlink; refusing it`);
    throw new DomainError('FAILED_PRECONDITION', `${file}: open: ${code ?? String(err)}`, { cause: err });
  }
  try {
    // fstat on the open fd: the checks apply to the very file we read.
    const st = await handle.stat();
    if (!st.isFile()) throw new DomainError('FAILED_PRECONDITION', `${file}: not a regular file`);
    checkOwnerAndMode(file, st.uid, st.mode);
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}

function checkOwnerAndMode(file: string, uid: number, mode: number): void {
  if ((mode & 0o077) !== 0) {
    throw new DomainError('FAILED_PRECONDITION',
      `${file}: mode ${(mode & 0o777).toString(8).padStart(4, '0')} lets group or others in; refusing it (want 0600 files in a 0700 dir)`);
  }
  const me = process.getuid?.();
  if (me !== undefined && uid !== me) {
    throw new DomainError('FAILED_PRECONDITION', `${file}: owned by uid ${uid}, not by this process (uid ${me}); refusing it`);
  }
}

/**
 * Writes a fresh key without ever exposing a partial or world-readable file: write 0600 to a temp name,
 * fsync, then link() into place (fails if another start won the race, and then we load theirs).
 */
async function writeNewKey(dir: string, file: string): Promise<void> {
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  const tmp = path.join(dir, `.${PROVENANCE_KEY_FILE}.${process.pid}.${Date.now()}.tmp`);
  const handle = await fs.open(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
  try {
    await handle.writeFile(pem);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fs.link(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    await fs.unlink(tmp);
  }
  const dirHandle = await fs.open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}
