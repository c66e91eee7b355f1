// native/fscrypt.c: fscrypt v2 keys and policies for workspace volumes (src/storage/).
import type { NativePart } from './part';

export type FscryptKeyStatus = 'absent' | 'present' | 'incompletely-removed';

export interface FscryptPolicy {
  identifier: Buffer;
  contentsMode: number;   // 1 = AES-256-XTS (linux/fscrypt.h FSCRYPT_MODE_*)
  filenamesMode: number;  // 4 = AES-256-CTS
  flags: number;
}

export interface FscryptNative {
  /** FS_IOC_ADD_ENCRYPTION_KEY on dir's filesystem; returns the key's 16-byte identifier. */
  fscryptAddKey(dir: string, key: Buffer): Buffer;
  /** A v2 policy (AES-256-XTS / AES-256-CTS, names padded to 32) on an empty directory. */
  fscryptSetPolicy(dir: string, identifier: Buffer): void;
  /** dir's policy, or null when it has none. */
  fscryptPolicyOf(dir: string): FscryptPolicy | null;
  fscryptKeyStatus(dir: string, identifier: Buffer): FscryptKeyStatus;
  /** Removes the key for every user; NativeError EBUSY when files still open keep their keys, ENOKEY when absent. */
  fscryptRemoveKey(dir: string, identifier: Buffer): Promise<void>;
}

export const fscryptPart: NativePart<FscryptNative> = {
  file: 'native/fscrypt.c',
  functions: { fscryptAddKey: true, fscryptSetPolicy: true, fscryptPolicyOf: true, fscryptKeyStatus: true, fscryptRemoveKey: true },
};
