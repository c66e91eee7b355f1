// The sealed log store every workspace's output goes to (docs/logs.md).
export { LogStore } from './store';
export { LogWriter } from './writer';
export { CUT_SHORT_MARKER, droppedMarker, truncationMarker } from './format';
export type { LogChunkRecord, LogInfo, LogMeta, LogSealer, LogStoreOptions, LogStream, LogWriterStats, WrappedDataKey } from './types';
