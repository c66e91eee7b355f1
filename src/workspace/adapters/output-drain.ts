// Draining a workspace's stdout and stderr pipes into its log, at a cost to the daemon that follows what the
// workspace is given (December 2026 review, item 7: a workload held to 0.1 CPU spamming one-byte writes
// made the daemon burn a core, since every write woke it for a read, a seal and a log write).
//
// - Coalescing: after each read the pipe rests COALESCE_MS before the next, so a write loop wakes the daemon
//   at most 1000 / COALESCE_MS times a second per stream; one read (up to OUTPUT_PIPE_BYTES, the pipe's
//   capacity) then takes everything that piled up, and it becomes one sealed record, not one per write.
//   The first output after a quiet spell is read at once.
// - Pacing: the bytes a workspace may log per second follow its CPU share (BYTES_PER_CPU_SECOND per core,
//   shared by its two streams). Over that, the pipe is read less often; once it is full the workload's
//   writes block (backpressure), as they would on a slow terminal. Nothing is dropped for it.
import { closeSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import type { LogStream, LogWriter } from '../../logs';

/** Capacity of each output pipe, and the size of one read. */
export const OUTPUT_PIPE_BYTES = 256 * 1024;
/** Least time between two reads of one pipe. */
export const COALESCE_MS = 25;
/** What one core's worth of workspace may log per second: sealing and writing it costs the daemon a few
 *  percent of a core (bench/output). */
export const BYTES_PER_CPU_SECOND = 8 * 1024 * 1024;
/** The burst a quiet workspace may log at once: this many seconds of its rate. */
const BURST_SECONDS = 1;

/** A token bucket over a workspace's logged bytes. Pure: the caller passes the clock. */
export class OutputPacer {
  private tokens: number;
  private lastMs: number;

  constructor(readonly bytesPerSecond: number, readonly burstBytes: number, nowMs: number) {
    if (!(bytesPerSecond > 0 && burstBytes > 0)) throw new RangeError('OutputPacer: rate and burst must be positive');
    this.tokens = burstBytes;
    this.lastMs = nowMs;
  }

  /** The pacer for a workspace's cpuMillis (1000 = a core; 0 = no limit, paced as the whole node). */
  static forCpu(cpuMillis: number, nowMs: number): OutputPacer {
    const millis = cpuMillis > 0 ? cpuMillis : os.availableParallelism() * 1000;
    const rate = (BYTES_PER_CPU_SECOND * millis) / 1000;
    return new OutputPacer(rate, Math.max(rate * BURST_SECONDS, OUTPUT_PIPE_BYTES), nowMs);
  }

  /** After a read of `bytes` at nowMs: how long the pipe rests before the next read (at least restMs). */
  delayAfter(bytes: number, nowMs: number, restMs = COALESCE_MS): number {
    const elapsed = Math.max(0, nowMs - this.lastMs);
    this.lastMs = nowMs;
    this.tokens = Math.min(this.burstBytes, this.tokens + (elapsed * this.bytesPerSecond) / 1000) - bytes;
    const owedMs = this.tokens < 0 ? (-this.tokens * 1000) / this.bytesPerSecond : 0;
    return Math.max(restMs, Math.ceil(owedMs));
  }
}

// One read buffer for every pipe of every workspace (and exec), not 256 KiB each: libuv fills it and runs the
// onread callback synchronously, on the one loop thread, before any other read, and the callback copies the
// bytes out.
let sharedReadBuffer: Buffer | undefined;
const readBuffer = (): Buffer => (sharedReadBuffer ??= Buffer.allocUnsafe(OUTPUT_PIPE_BYTES));

/**
 * A socket over a pipe's read end, read with onread: libuv reads into the shared buffer, and onChunk's false
 * stops reading (readStop) until socket.resume(), so a paused pipe costs no wakeup at all, however often
 * the workload writes (a paused Readable would read on until its buffer is full).
 */
export function onreadPipe(fd: number, onChunk: (data: Buffer) => boolean): net.Socket {
  // (Node's Socket constructor takes onread as connect() does; @types/node declares it for connect only.)
  const options: net.SocketConstructorOpts & net.ConnectOpts = {
    fd,
    readable: true,
    writable: false,
    onread: { buffer: readBuffer(), callback: (n: number, buf: Uint8Array): boolean => onChunk(Buffer.from(buf.subarray(0, n))) },
  };
  return new net.Socket(options);
}

/**
 * Copies one output pipe into the log until EOF (every write end closed: the workspace is gone). Owns fd and
 * closes it. Past the log's cap, or once the log is closed, it goes on reading (and the log counts or drops):
 * the workload is paced, never stalled for good.
 */
export function drainPipe(fd: number, writer: LogWriter, origin: { stream: LogStream; task: string }, pacer: OutputPacer): Promise<void> {
  return new Promise((resolve, reject) => {
    let rest: NodeJS.Timeout | undefined;
    let ended = false;
    const finish = (err?: Error): void => {
      if (ended) return;
      ended = true;
      clearTimeout(rest);
      socket.destroy();
      if (err) reject(err);
      else resolve();
    };
    const resumeAfter = (ms: number): void => {
      rest = setTimeout(() => {
        if (!ended) socket.resume();
      }, ms);
    };
    const onRead = (data: Buffer): void => {
      const nowMs = Date.now();
      const room = writer.closed || writer.append({ timeMs: nowMs, stream: origin.stream, task: origin.task, data });
      const ms = pacer.delayAfter(data.length, nowMs);
      if (room) resumeAfter(ms);
      else void writer.drained().then(() => resumeAfter(ms), () => resumeAfter(ms));
    };
    let socket: net.Socket;
    try {
      socket = onreadPipe(fd, (data) => {
        onRead(data);
        return false;
      });
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    socket.once('end', () => finish());
    socket.once('error', (err) => finish(err));
  });
}
