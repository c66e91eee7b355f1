// Node key-encryption keys (KEKs). A keyring is a directory of 32-byte AES-256 keys, one file per key id,
// plus a `kek-current` file naming the key new data is sealed under. Old keys stay so old backups and secrets
// remain readable by the key id they carry, until retire() deletes one nothing depends on any more.
// Key bytes live only in private fields and never reach a log.
//
// At rest a KEK is either in the clear (`<id>.key`, the default: whoever has the state dir has the keys) or
// sealed by a KeyProtector (`<id>.sealed`): a root key systemd hands over as a credential, or a remote KMS
// (src/crypto/kek-source.ts). Then the state dir alone opens nothing. docs/backup-format.md#keys.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';
import { GCM_NONCE_BYTES, GCM_TAG_BYTES, openBlob, sealBlob } from './aead';

export const KEY_BYTES = 32;
const KEY_FILE_SUFFIX = '.key';
const SEALED_FILE_SUFFIX = '.sealed';
const CURRENT_FILE = 'kek-current';
const WRAP_DOMAIN = 'tetrix/kek-wrap/v1';
const SEALED_FORMAT = 'tetrix-kek';
const AT_REST_DOMAIN = 'tetrix/kek-at-rest/v1';

/**
 * Seals KEKs for the disk under a key the state dir does not hold. `name` identifies that key without
 * revealing it (e.g. "root-key:root-…" or "vault-transit:transit/tetrix"); it is stored with each sealed KEK
 * so a node pointed at the wrong root key says so instead of failing to authenticate.
 */
export interface KeyProtector {
  readonly name: string;
  seal(keyId: string, key: Buffer, aad: Buffer): Promise<string>;
  open(keyId: string, sealed: string, aad: Buffer): Promise<Buffer>;
}

/** A sealed KEK on disk (`<id>.sealed`, JSON). */
interface SealedKeyFile {
  format: typeof SEALED_FORMAT;
  version: 1;
  keyId: string;
  protector: string;
  sealed: string;
}
const BOUND_WRAP_DOMAIN = 'tetrix/kek-wrap/v2';

export interface KeyRingOptions {
  /** The keyring directory, normally <stateDir>/keys. Created 0700 if missing. */
  dir: string;
  /** An operator-provided key file (32 raw bytes, 64 hex chars or base64); it becomes the current key. */
  keyFile?: string;
}

/** What a KEK seals: the key id it used and nonce || ciphertext || tag. */
export interface Sealed {
  keyId: string;
  blob: Buffer;
}

export class KeyRing {
  readonly #dir: string;
  readonly #keyFile: string | undefined;
  readonly #protector: KeyProtector | undefined;
  readonly #keys = new Map<string, Buffer>();
  #currentId = '';

  private constructor(dir: string, keyFile: string | undefined, protector?: KeyProtector) {
    this.#dir = dir;
    this.#keyFile = keyFile;
    this.#protector = protector;
  }

  /**
   * Opens (or on first start creates) a keyring whose KEKs are sealed by `protector` on disk. KEKs found in
   * the clear (a node that ran with plaintext keys before) are sealed and their plaintext files removed.
   */
  static async openProtected(opts: { dir: string; protector: KeyProtector }): Promise<KeyRing> {
    const ring = new KeyRing(path.resolve(opts.dir), undefined, opts.protector);
    ensurePrivateDir(ring.#dir);
    removeTemporaryFiles(ring.#dir);
    await ring.#loadSealed();
    await ring.#sealPlaintextKeys();
    const id = readCurrentId(ring.#dir);
    if (id === undefined) await ring.rotateKey();
    else if (!ring.#keys.has(id)) throw new DomainError('FAILED_PRECONDITION', `keyring ${ring.#dir}: current key ${id} has no key file`);
    else ring.#currentId = id;
    return ring;
  }

  /** How the KEKs are kept on disk: "plaintext" or the protector's name. */
  get protection(): string {
    return this.#protector?.name ?? 'plaintext';
  }

  /** Opens (or on first start creates) the keyring. Refuses key files others could read or write. */
  static open(opts: KeyRingOptions): KeyRing {
    const ring = new KeyRing(path.resolve(opts.dir), opts.keyFile && path.resolve(opts.keyFile));
    ensurePrivateDir(ring.#dir);
    removeTemporaryFiles(ring.#dir);
    ring.#loadAll();
    if (ring.#keyFile) ring.#adoptOperatorKey(ring.#keyFile);
    else ring.#loadOrCreateCurrent();
    return ring;
  }

  get dir(): string {
    return this.#dir;
  }

  current(): { id: string } {
    return { id: this.#currentId };
  }

  ids(): string[] {
    return [...this.#keys.keys()].sort();
  }

  has(keyId: string): boolean {
    return this.#keys.has(keyId) || this.#reloadFor(keyId);
  }

  /**
   * Wraps a data key under the current KEK (or keyId). `context` (e.g. a backup id) is bound in as AAD,
   * and so is `aad` when given (extra associated data a caller wants bound to the wrap).
   */
  wrap(dataKey: Buffer, context = '', keyId = this.#currentId, aad?: Buffer): { keyId: string; wrapped: Buffer } {
    if (dataKey.length !== KEY_BYTES) throw new DomainError('INVALID_ARGUMENT', `dataKey: must be ${KEY_BYTES} bytes`);
    const { blob } = this.seal(dataKey, wrapAad(keyId, context, aad), keyId);
    return { keyId, wrapped: blob };
  }

  /** Unwraps a data key. Missing key id: FAILED_PRECONDITION. Wrong key, context, aad or altered bytes: DATA_LOSS. */
  unwrap(keyId: string, wrapped: Buffer, context = '', aad?: Buffer): Buffer {
    return this.open({ keyId, blob: wrapped }, wrapAad(keyId, context, aad), 'wrapped data key');
  }

  /**
   * Wraps a data key bound to named facts (a backup's id, owner, manifest digest...): they are the AAD, so
   * the key unwraps only with every fact unchanged. A domain of its own: never confused with wrap().
   */
  wrapBound(dataKey: Buffer, facts: WrapFacts, keyId = this.#currentId): { keyId: string; wrapped: Buffer } {
    if (dataKey.length !== KEY_BYTES) throw new DomainError('INVALID_ARGUMENT', `dataKey: must be ${KEY_BYTES} bytes`);
    return { keyId, wrapped: this.seal(dataKey, boundWrapAad(keyId, facts), keyId).blob };
  }

  /** Unwraps what wrapBound wrapped with the same facts; any fact changed is DATA_LOSS. */
  unwrapBound(keyId: string, wrapped: Buffer, facts: WrapFacts): Buffer {
    return this.open({ keyId, blob: wrapped }, boundWrapAad(keyId, facts), 'wrapped data key');
  }

  /**
   * AES-256-GCM under a KEK (the current one unless keyId is given). Callers put a domain string in `aad`
   * so a value sealed for one purpose cannot be passed off as another.
   */
  seal(plaintext: Buffer, aad: Buffer, keyId = this.#currentId): Sealed {
    const key = this.#key(keyId);
    return { keyId, blob: sealBlob(key, aad, plaintext) };
  }

  open(sealed: Sealed, aad: Buffer, what = 'sealed value'): Buffer {
    const key = this.#key(sealed.keyId);
    const { blob } = sealed;
    if (blob.length < GCM_NONCE_BYTES + GCM_TAG_BYTES) throw new DomainError('DATA_LOSS', `${what}: too short`);
    const plain = openBlob(key, aad, blob);
    if (!plain) throw new DomainError('DATA_LOSS', `${what}: does not authenticate under key ${sealed.keyId}`);
    return plain;
  }

  /** Makes a fresh KEK current and returns its id; older keys stay for reading. Plaintext keyrings only. */
  rotate(): string {
    this.#refuseOperatorKeyRotation();
    if (this.#protector) throw new DomainError('FAILED_PRECONDITION', 'keyring: a protected keyring rotates with rotateKey()');
    const key = crypto.randomBytes(KEY_BYTES);
    const id = keyIdOf(key);
    this.#store(id, key);
    this.#setCurrent(id);
    return id;
  }

  /** rotate() for every kind of keyring: a protected one seals the new KEK (a KMS call) before it is used. */
  async rotateKey(): Promise<string> {
    if (!this.#protector) return this.rotate();
    const key = crypto.randomBytes(KEY_BYTES);
    const id = keyIdOf(key);
    await this.#storeSealed(id, key);
    this.#setCurrent(id);
    return id;
  }

  /**
   * Deletes a KEK for good. The caller (src/crypto/rotation.ts) has checked that nothing is sealed under it
   * any more. The current key cannot be retired.
   */
  retire(keyId: string): void {
    if (!this.#keys.has(keyId) && !this.#reloadFor(keyId)) throw new DomainError('NOT_FOUND', `key ${keyId} is not in this node's keyring`);
    if (keyId === this.#currentId) throw new DomainError('FAILED_PRECONDITION', `key ${keyId} is the current key; rotate first`);
    for (const suffix of [KEY_FILE_SUFFIX, SEALED_FILE_SUFFIX]) fs.rmSync(path.join(this.#dir, keyId + suffix), { force: true });
    syncDir(this.#dir);
    this.#keys.get(keyId)?.fill(0);
    this.#keys.delete(keyId);
  }

  #refuseOperatorKeyRotation(): void {
    if (this.#keyFile) {
      throw new DomainError('FAILED_PRECONDITION',
        `keyring: the current key comes from the key file ${this.#keyFile}; rotate by pointing the node at a new key file`);
    }
  }

  #key(keyId: string): Buffer {
    const key = this.#keys.get(keyId);
    if (key) return key;
    if (this.#reloadFor(keyId)) return this.#keys.get(keyId)!;
    throw new DomainError('FAILED_PRECONDITION', `key ${keyId} is not in this node's keyring`);
  }

  // Another process (tetrixctl) may have added a key since we opened; look once more before failing.
  // Sealed keys open asynchronously (a KMS call), so a protected keyring knows only what it loaded.
  #reloadFor(keyId: string): boolean {
    if (!isKeyId(keyId) || this.#protector) return false;
    const file = path.join(this.#dir, keyId + KEY_FILE_SUFFIX);
    if (!fs.existsSync(file)) return false;
    this.#keys.set(keyId, readKeyFileChecked(file, keyId));
    return true;
  }

  #loadAll(): void {
    for (const name of fs.readdirSync(this.#dir)) {
      if (!name.endsWith(KEY_FILE_SUFFIX)) continue;
      const id = name.slice(0, -KEY_FILE_SUFFIX.length);
      if (!isKeyId(id)) continue;
      this.#keys.set(id, readKeyFileChecked(path.join(this.#dir, name), id));
    }
  }

  async #loadSealed(): Promise<void> {
    for (const name of fs.readdirSync(this.#dir)) {
      if (!name.endsWith(SEALED_FILE_SUFFIX)) continue;
      const id = name.slice(0, -SEALED_FILE_SUFFIX.length);
      if (!isKeyId(id)) continue;
      const file = path.join(this.#dir, name);
      const sealed = parseSealedKeyFile(readPrivateFile(file, 1 << 16), file, id);
      if (sealed.protector !== this.#protector!.name) {
        throw new DomainError('FAILED_PRECONDITION',
          `key file ${file} is sealed by ${sealed.protector}, but this node's KEK source is ${this.#protector!.name}`);
      }
      const key = await this.#protector!.open(id, sealed.sealed, atRestAad(id));
      if (key.length !== KEY_BYTES || keyIdOf(key) !== id) throw new DomainError('DATA_LOSS', `key file ${file} does not hold key ${id}`);
      this.#keys.set(id, key);
    }
  }

  // A node moving from plaintext keys to a protected source: seal each, then remove the plaintext file.
  async #sealPlaintextKeys(): Promise<void> {
    for (const name of fs.readdirSync(this.#dir)) {
      if (!name.endsWith(KEY_FILE_SUFFIX)) continue;
      const id = name.slice(0, -KEY_FILE_SUFFIX.length);
      if (!isKeyId(id)) continue;
      const file = path.join(this.#dir, name);
      const key = readKeyFileChecked(file, id);
      if (!this.#keys.has(id)) await this.#storeSealed(id, key);
      fs.rmSync(file, { force: true });
      syncDir(this.#dir);
    }
  }

  async #storeSealed(id: string, key: Buffer): Promise<void> {
    const body: SealedKeyFile = {
      format: SEALED_FORMAT, version: 1, keyId: id, protector: this.#protector!.name,
      sealed: await this.#protector!.seal(id, key, atRestAad(id)),
    };
    writePrivateFileAtomic(this.#dir, id + SEALED_FILE_SUFFIX, JSON.stringify(body) + '\n');
    this.#keys.set(id, key);
  }

  #adoptOperatorKey(file: string): void {
    const key = parseKey(readPrivateFile(file), file);
    const id = keyIdOf(key);
    // Kept in the keyring too, so data sealed under it stays readable after the operator moves to a new file.
    if (!this.#keys.has(id)) this.#store(id, key);
    if (readCurrentId(this.#dir) !== id) writePrivateFileAtomic(this.#dir, CURRENT_FILE, id + '\n');
    this.#currentId = id;
  }

  #loadOrCreateCurrent(): void {
    const id = readCurrentId(this.#dir);
    if (id === undefined) {
      this.rotate();
      return;
    }
    if (!this.#keys.has(id)) {
      const sealed = fs.existsSync(path.join(this.#dir, id + SEALED_FILE_SUFFIX));
      throw new DomainError('FAILED_PRECONDITION', sealed
        ? `keyring ${this.#dir}: current key ${id} is sealed; kekSource must name the root key or KMS that sealed it`
        : `keyring ${this.#dir}: current key ${id} has no key file`);
    }
    this.#currentId = id;
  }

  #store(id: string, key: Buffer): void {
    writePrivateFileAtomic(this.#dir, id + KEY_FILE_SUFFIX, key.toString('hex') + '\n');
    this.#keys.set(id, key);
  }

  #setCurrent(id: string): void {
    writePrivateFileAtomic(this.#dir, CURRENT_FILE, id + '\n');
    this.#currentId = id;
  }

  toJSON(): object {
    return { dir: this.#dir, current: this.#currentId, keys: this.ids(), protection: this.protection };
  }
}

/** Key ids name a key without revealing it: a domain-separated SHA-256 of the key, truncated. */
export function keyIdOf(key: Buffer): string {
  const digest = crypto.createHash('sha256').update('tetrix/kek-id/v1\0').update(key).digest('hex');
  return 'kek-' + digest.slice(0, 16);
}

export function isKeyId(id: string): boolean {
  return /^kek-[0-9a-f]{16}$/.test(id);
}

// Without extra aad the bytes are exactly the v1 ones, so existing wraps still open.
function wrapAad(keyId: string, context: string, aad?: Buffer): Buffer {
  const base = Buffer.from(`${WRAP_DOMAIN}\0${keyId}\0${context}`);
  return aad && aad.length > 0 ? Buffer.concat([base, Buffer.from('\0'), aad]) : base;
}

function atRestAad(keyId: string): Buffer {
  return Buffer.from(`${AT_REST_DOMAIN}\0${keyId}`);
}

function parseSealedKeyFile(raw: Buffer, file: string, id: string): SealedKeyFile {
  let v: SealedKeyFile;
  try {
    v = JSON.parse(raw.toString('utf8')) as SealedKeyFile;
  } catch {
    throw new DomainError('DATA_LOSS', `key file ${file}: not JSON`);
  }
  if (!v || v.format !== SEALED_FORMAT || v.version !== 1 || v.keyId !== id || typeof v.protector !== 'string' || typeof v.sealed !== 'string') {
    throw new DomainError('DATA_LOSS', `key file ${file}: not a sealed key file for ${id}`);
  }
  return v;
}

/** Name/value pairs a bound wrap authenticates, in a fixed order. */
export type WrapFacts = ReadonlyArray<readonly [name: string, value: string]>;

// Every string length-prefixed (u32 BE), so no two fact lists encode alike whatever bytes the values hold.
function boundWrapAad(keyId: string, facts: WrapFacts): Buffer {
  const parts = [BOUND_WRAP_DOMAIN, keyId, ...facts.flat()].map((s) => Buffer.from(s, 'utf8'));
  return Buffer.concat(parts.flatMap((p) => [u32(p.length), p]));
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function ensurePrivateDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new DomainError('FAILED_PRECONDITION', `key directory ${dir} is not a directory`);
  checkPrivate(dir, st, 'key directory');
}

function checkPrivate(file: string, st: fs.Stats, what: string): void {
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(3, '0');
    throw new DomainError('FAILED_PRECONDITION',
      `${what} ${file} is accessible by group or others (mode ${mode}); chmod it to ${what === 'key directory' ? '700' : '600'}`);
  }
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new DomainError('FAILED_PRECONDITION', `${what} ${file} is owned by uid ${st.uid}, not by this process (uid ${uid})`);
  }
}

// Opened with O_NOFOLLOW and checked with fstat, so what is checked is what is read.
export function readPrivateFile(file: string, maxBytes = 4096, what = 'key file'): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new DomainError('FAILED_PRECONDITION', `${what} ${file}: cannot open (${code})`, { cause: err });
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new DomainError('FAILED_PRECONDITION', `${what} ${file} is not a regular file`);
    checkPrivate(file, st, what);
    if (st.size > maxBytes) throw new DomainError('FAILED_PRECONDITION', `${what} ${file} is too large`);
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function readKeyFileChecked(file: string, id: string): Buffer {
  const key = parseKey(readPrivateFile(file), file);
  if (keyIdOf(key) !== id) throw new DomainError('DATA_LOSS', `key file ${file} does not hold key ${id}`);
  return key;
}

/** Accepts 32 raw bytes, 64 hex characters or base64 of 32 bytes (a trailing newline is fine). */
export function parseKey(raw: Buffer, file: string): Buffer {
  if (raw.length === KEY_BYTES) return Buffer.from(raw);
  const text = raw.toString('latin1').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) return Buffer.from(text, 'base64');
  throw new DomainError('FAILED_PRECONDITION',
    `key file ${file}: expected 32 raw bytes, 64 hex characters or base64 of 32 bytes`);
}

function readCurrentId(dir: string): string | undefined {
  const file = path.join(dir, CURRENT_FILE);
  if (!fs.existsSync(file)) return undefined;
  const id = readPrivateFile(file).toString('utf8').trim();
  if (!isKeyId(id)) throw new DomainError('DATA_LOSS', `keyring ${dir}: ${CURRENT_FILE} does not name a key id`);
  return id;
}

// Write to a temporary file created 0600 (never wider, whatever the umask), fsync, rename, fsync the dir.
function writePrivateFileAtomic(dir: string, name: string, content: string): void {
  const tmp = path.join(dir, `.${name}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`);
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    fs.fchmodSync(fd, 0o600);
    fs.writeSync(fd, content);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path.join(dir, name));
  syncDir(dir);
}

function syncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function removeTemporaryFiles(dir: string): void {
  for (const name of fs.readdirSync(dir)) {
    // Only our own temporaries: the directory is shared with other node keys (prebuild's provenance.key).
    if (/^\.(kek-[0-9a-f]{16}\.(key|sealed)|kek-current)\.\d+\.[0-9a-f]{8}\.tmp$/.test(name)) fs.rmSync(path.join(dir, name), { force: true });
  }
}
