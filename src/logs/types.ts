// The log store's types: what it stores, what it is given, what it reports. Format: docs/logs.md.

export type LogStream = 'stdout' | 'stderr';

export interface LogChunkRecord {
  timeMs: number;
  stream: LogStream;
  /** Prebuilds: the task that wrote it; '' for a regular workspace. */
  task: string;
  data: Buffer;
}

export interface WrappedDataKey {
  keyId: string;
  wrapped: Buffer;
}

/**
 * Wraps per-log data keys under the node KEK. src/crypto/keys.ts's KeyRing fits as is. `context` names the
 * log ("tetrix/log/v1:<logId>") and is bound in as AAD, so a wrapped key cannot be moved to another log.
 */
export interface LogSealer {
  wrap(dataKey: Buffer, context: string): WrappedDataKey | Promise<WrappedDataKey>;
  unwrap(keyId: string, wrapped: Buffer, context: string): Buffer | Promise<Buffer>;
}

export interface LogStoreOptions {
  /** Directory of the logs, e.g. <stateDir>/logs; created 0700. */
  dir: string;
  sealer: LogSealer;
  /** Output bytes kept per log; after that a truncation marker, then output is counted and dropped. */
  maxBytesPerLog: number;
  /** Largest data payload of one record; bigger chunks are split. Default 64 KiB. */
  maxRecordData?: number;
  /** Sealed bytes a writer may queue before capture() stops reading until the disk catches up. Default 4 MiB. */
  maxQueuedBytes?: number;
}

/** Free-form, non-secret facts stored sealed in the OPEN record, e.g. ownerId/teamId/kind for authorization. */
export type LogMeta = Record<string, string>;

export interface LogInfo {
  logId: string;
  meta: LogMeta;
  createdMs: number;
  /** True while a writer in this process still appends to it. */
  open: boolean;
}

export interface LogWriterStats {
  /** Output bytes stored. */
  bytesLogged: number;
  /** Output bytes counted and dropped after the cap (or after a write error). */
  bytesDropped: number;
  truncated: boolean;
  /** Most sealed bytes ever waiting for the disk: stays near maxQueuedBytes however fast the workload writes. */
  peakQueuedBytes: number;
}
