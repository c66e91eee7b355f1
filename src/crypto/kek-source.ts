// Where the node's KEKs come from (config `kekSource`), and what each choice protects:
//   state-dir                 KEKs in the clear in <stateDir>/keys: the state dir alone opens everything.
//   file:/PATH                KEKs sealed under a root key read from PATH (another disk, a token, a tmpfs).
//   systemd-credential:NAME   KEKs sealed under a root key systemd decrypts at service start (TPM2 or host key)
//                             into $CREDENTIALS_DIRECTORY/NAME (LoadCredentialEncrypted=, systemd.exec(5)).
//   kms https://…/keys/NAME   KEKs sealed by Vault Transit; the node holds only a token (kmsTokenFile).
// The root key and the token are read, never copied: nothing below writes them anywhere. docs/operations.md#keys.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';
import { GCM_NONCE_BYTES, GCM_TAG_BYTES, openBlob, sealBlob } from './aead';
import type { KekSource, SecretFileRef } from '../config/config';
import { KeyRing, parseKey, readPrivateFile, type KeyProtector } from './keys';
import { VaultTransit } from './vault-transit';


/** Opens the node's keyring in <stateDir>/keys with the configured protection. */
export async function openNodeKeyRing(source: KekSource, stateDir: string, env: NodeJS.ProcessEnv = process.env): Promise<{ keyring: KeyRing; close(): void }> {
  const dir = path.join(stateDir, 'keys');
  switch (source.kind) {
    case 'state-dir':
      return { keyring: KeyRing.open({ dir }), close: () => undefined };
    case 'file':
    case 'systemd-credential': {
      const rootKey = parseKey(readSecretFile(source, env, 'root key'), describeRef(source));
      return { keyring: await KeyRing.openProtected({ dir, protector: rootKeyProtector(rootKey) }), close: () => rootKey.fill(0) };
    }
    case 'kms': {
      const token = (): string => {
        const value = readSecretFile(source.tokenFile, env, 'kms token').toString('utf8').trim();
        if (value === '') throw new DomainError('FAILED_PRECONDITION', `kmsTokenFile ${describeRef(source.tokenFile)}: empty`);
        return value;
      };
      token(); // a missing or unsafe token file is refused before anything else
      const ca = readCaFile(source.caFile);
      const vault = new VaultTransit({ keyUrl: source.url, token, ca });
      try {
        return { keyring: await KeyRing.openProtected({ dir, protector: vaultProtector(vault) }), close: () => vault.close() };
      } catch (err) {
        vault.close();
        throw err;
      }
    }
  }
}

/** AES-256-GCM under a local root key. Its id (not the key) is stored with each sealed KEK. */
export function rootKeyProtector(rootKey: Buffer): KeyProtector {
  const id = 'root-' + crypto.createHash('sha256').update('tetrix/root-key-id/v1\0').update(rootKey).digest('hex').slice(0, 16);
  return {
    name: `root-key:${id}`,
    seal: async (_keyId, key, aad) => {
      return sealBlob(rootKey, aad, key).toString('base64');
    },
    open: async (keyId, sealed, aad) => {
      const blob = Buffer.from(sealed, 'base64');
      if (blob.length < GCM_NONCE_BYTES + GCM_TAG_BYTES) throw new DomainError('DATA_LOSS', `sealed key ${keyId}: too short`);
      const plain = openBlob(rootKey, aad, blob);
      if (!plain) throw new DomainError('DATA_LOSS', `sealed key ${keyId}: does not authenticate under ${id}`);
      return plain;
    },
  };
}

export function vaultProtector(vault: VaultTransit): KeyProtector {
  return {
    name: `vault-transit:${vault.keyName}`,
    seal: (_keyId, key, aad) => vault.encrypt(key, aad),
    open: (_keyId, sealed, aad) => vault.decrypt(sealed, aad),
  };
}

/** The file a reference names: a path, or systemd's $CREDENTIALS_DIRECTORY/NAME. */
export function secretFilePath(ref: SecretFileRef, env: NodeJS.ProcessEnv = process.env): string {
  if (ref.kind === 'file') return ref.path;
  const dir = env.CREDENTIALS_DIRECTORY;
  if (!dir) {
    throw new DomainError('FAILED_PRECONDITION',
      `systemd credential ${ref.name}: $CREDENTIALS_DIRECTORY is not set (run under systemd with LoadCredentialEncrypted=${ref.name}:...)`);
  }
  return path.join(dir, ref.name);
}

function readSecretFile(ref: SecretFileRef, env: NodeJS.ProcessEnv, what: string): Buffer {
  return readPrivateFile(secretFilePath(ref, env), 4096, what);
}

// A CA certificate is public: any mode will do.
function readCaFile(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new DomainError('FAILED_PRECONDITION', `kmsCaFile ${file}: cannot read (${(err as NodeJS.ErrnoException).code})`, { cause: err });
  }
}

function describeRef(ref: SecretFileRef): string {
  return ref.kind === 'file' ? ref.path : `systemd credential ${ref.name}`;
}
