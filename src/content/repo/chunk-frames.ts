// How the snapshot runner hands new chunks on: each becomes a frame (zstd when that saves at least 3%)
// for the daemon to seal. Compression is the walk's largest cost (2.5 of 5.4 s of CPU for 1 GiB), so in
// the runner it runs on a worker thread of its own, which also does the writes to the daemon: the walk,
// the chunker and the ids keep the main thread and the two halves overlap (docs/backup-format.md,
// "Benchmark"). In-process (tests), frames are made inline.
//
// Frame: 0x01, id(32), u32be plaintext length, u8 encoding (0 raw, 1 zstd), u32be length, bytes.
import fs from 'node:fs';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import * as zstd from 'zstd-napi';
import type { ArchiveSink } from '../archive-runner';
import { blockingDescription, TURN_EVERY_MS, turnEvery, writeFully } from '../archive-runner';
import { ENC_RAW, ENC_ZSTD } from './repository';
import { ID_BYTES } from './tree-stream';

export const FRAME_HEADER = 1 + ID_BYTES + 4 + 1 + 4;

/** Where snapshotWalk puts the chunks the repository does not hold yet. */
export interface ChunkOutput {
  /** `plain` is only valid during the call. */
  put(id: Buffer, plain: Buffer): void;
  /** Resolves when more may be put. */
  ready(): Promise<void> | undefined;
  /** After the last put: resolves once every frame was written and the output closed. */
  end(): Promise<void>;
}

// Frames queued for the worker at most: enough to keep it busy through a large file's chunks.
const IN_FLIGHT_BYTES = 16 << 20;

/** One frame's two parts, compressed with `cmp`. */
function frameOf(cmp: zstd.Compressor, id: Uint8Array, plain: Uint8Array): [Buffer, Uint8Array] {
  const packed = cmp.compress(plain);
  const raw = packed.length >= plain.length - (plain.length >> 5); // saves under 3%: not worth a decode
  const payload = raw ? plain : packed;
  const head = Buffer.allocUnsafe(FRAME_HEADER);
  head[0] = 1;
  head.set(id, 1);
  head.writeUInt32BE(plain.length, 1 + ID_BYTES);
  head[1 + ID_BYTES + 4] = raw ? ENC_RAW : ENC_ZSTD;
  head.writeUInt32BE(payload.length, 1 + ID_BYTES + 5);
  return [head, payload];
}

function compressor(): zstd.Compressor {
  const cmp = new zstd.Compressor();
  cmp.setParameters({ compressionLevel: 1, checksumFlag: false });
  return cmp;
}

/** Frames made on this thread into `sink`. */
export function inlineChunkOutput(sink: ArchiveSink): ChunkOutput {
  const cmp = compressor();
  return {
    put: (id, plain) => {
      const [head, payload] = frameOf(cmp, id, plain);
      sink.write(head);
      sink.write(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength));
    },
    ready: () => sink.ready(),
    end: () => sink.end(),
  };
}

type ToWorker = { type: 'chunk'; buf: ArrayBuffer } | { type: 'end' };
type FromWorker = { type: 'written'; bytes: number } | { type: 'ended' } | { type: 'error'; message: string };

/** Frames made and written to `fd` by a worker thread; end() closes `fd`. */
export function workerChunkOutput(fd: number): ChunkOutput {
  const worker = new Worker(__filename, { workerData: { fd } });
  let inFlight = 0;
  let failed: Error | undefined;
  let wake: (() => void) | undefined;
  let ended = false;
  const settle = (): void => { const w = wake; wake = undefined; w?.(); };
  worker.on('message', (m: FromWorker) => {
    if (m.type === 'written') inFlight -= m.bytes;
    else if (m.type === 'ended') ended = true;
    else failed = new Error(`snapshot runner: ${m.message}`);
    settle();
  });
  worker.on('error', (err) => { failed = err; settle(); });
  worker.on('exit', () => { failed ??= new Error('snapshot runner: compression worker exited'); settle(); });
  // Also when the worker keeps up: the walk's progress timer and the worker's replies need turns of their own.
  const turn = turnEvery(TURN_EVERY_MS);
  const waitUntil = async (done: () => boolean): Promise<void> => {
    while (!done()) {
      if (failed) throw failed;
      await new Promise<void>((resolve) => { wake = resolve; });
    }
  };
  return {
    put: (id, plain) => {
      if (failed) throw failed;
      // A copy the worker owns: the chunker reuses `plain`'s memory after this call.
      const buf = new ArrayBuffer(ID_BYTES + plain.length);
      const view = new Uint8Array(buf);
      view.set(id, 0);
      view.set(plain, ID_BYTES);
      inFlight += buf.byteLength;
      worker.postMessage({ type: 'chunk', buf } satisfies ToWorker, [buf]);
    },
    ready: () => {
      const turning = turn();
      if (!turning && !failed && inFlight < IN_FLIGHT_BYTES) return undefined;
      return (async () => {
        await turning;
        await waitUntil(() => inFlight < IN_FLIGHT_BYTES);
      })();
    },
    end: async () => {
      worker.postMessage({ type: 'end' } satisfies ToWorker);
      await waitUntil(() => ended);
      worker.removeAllListeners('exit');
      await worker.terminate();
      fs.closeSync(fd);
    },
  };
}

function runWorker(fd: number): void {
  const cmp = compressor();
  const port = parentPort!;
  const out = blockingDescription(fd, fs.constants.O_WRONLY);
  port.on('message', (m: ToWorker) => {
    try {
      if (m.type === 'end') {
        if (out !== fd) fs.closeSync(out);
        port.postMessage({ type: 'ended' } satisfies FromWorker);
        return;
      }
      const all = new Uint8Array(m.buf);
      const [head, payload] = frameOf(cmp, all.subarray(0, ID_BYTES), all.subarray(ID_BYTES));
      writeFully(out, head);
      writeFully(out, payload);
      port.postMessage({ type: 'written', bytes: m.buf.byteLength } satisfies FromWorker);
    } catch (err) {
      port.postMessage({ type: 'error', message: (err as Error).message } satisfies FromWorker);
    }
  });
}

if (!isMainThread && (workerData as { fd?: unknown } | null)?.fd !== undefined) runWorker((workerData as { fd: number }).fd);
