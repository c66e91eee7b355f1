// What the storage room offers the lifecycle and what it needs from the layers beside it.

/** A workspace's volume limits: its size and how many files it may hold (ext4 inodes). */
export interface VolumeLimits {
  bytes: number;
  inodes: number;
}

/** What a volume holds against its limits (statfs of the mounted volume; the last seen when closed). */
export interface DiskUsage {
  usedBytes: number;
  limitBytes: number;   // what the filesystem can hold for the workspace (its size less ext4's metadata)
  usedInodes: number;
  limitInodes: number;
  encrypted: boolean;
}

/**
 * Where a workspace's volume key lives at rest: sealed under the node's KEK in the state database
 * (src/workspace/store.ts disk_key_sealed), so a key rotation re-wraps it. Never in the clear.
 */
export interface DiskKeyStore {
  /** Seals and persists the key; it is durable when this returns. */
  put(workspaceId: string, key: Buffer): void;
  /** The unwrapped key (the caller wipes it), or undefined when it was erased or never made. */
  get(workspaceId: string): Buffer | undefined;
  /** Deletes the sealed key for good, the database's write-ahead log included (crypto-erase). */
  erase(workspaceId: string): void;
}

/** The subset of a pino logger this room uses. */
export interface StorageLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}
