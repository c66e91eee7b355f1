// A workspace's stdout and stderr: FIFOs in its directory, read by the daemon into the sealed log
// store (src/prebuild/logs.ts). A prebuild's tasks reach the log through pipes init gets over the task
// channel (src/prebuild/tasks.ts): the daemon holds their read ends and never opens a path the
// workspace can write.
//
// Why FIFOs opened O_RDWR for the workspace's end: a pipe whose last reader goes away raises SIGPIPE in
// the writer. With an O_RDWR end the workspace itself always holds a reader, so a daemon restart never
// kills a workload that prints; its writes block once the pipe is full, until the next daemon reopens
// the FIFO by name and drains it into a new log segment (<id>.1, <id>.2, ...).
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { DomainError } from '../errors';
import type { LogChunkRecord, LogStore, LogWriter } from '../prebuild/logs';
import { serveTasks, type TaskEvent } from '../prebuild/tasks';
import type { NativeAddon } from '../sandbox/native';
import type { WorkspaceLogs } from './ports';
import type { WorkspaceSpec } from './types';

const STREAMS = ['stdout', 'stderr'] as const;
const MAX_SEGMENTS = 1000;

interface Capture {
  writer: LogWriter;
  done: Promise<void>;
}

export const segmentId = (workspaceId: string, segment: number): string => (segment === 0 ? workspaceId : `${workspaceId}.${segment}`);

export class WorkspaceOutput implements WorkspaceLogs {
  private readonly captures = new Map<string, Capture>();
  /** Prebuilds: where each task's start and end are reported (the lifecycle listens). */
  onTaskEvent: (workspaceId: string, event: TaskEvent) => void = () => undefined;

  constructor(
    private readonly store: LogStore,
    private readonly native: NativeAddon,
    private readonly dirOf: (workspaceId: string) => string,
    private readonly log: Logger,
  ) {}

  /** Before spawn: the FIFOs, the workspace's ends, and a new log capturing both streams (and each task's).
   *  A prebuild also gets init's end of its task channel (tasksFd, among fds: the caller closes it after spawn). */
  async open(spec: WorkspaceSpec, _uidBase: number): Promise<{ stdoutFd: number; stderrFd: number; fds: number[]; tasksFd?: number }> {
    // A reused id starts a fresh history: the previous incarnation was torn down.
    await this.removeSegments(spec.id);
    const fds: number[] = [];
    for (const stream of STREAMS) {
      const fifo = this.fifoPath(spec.id, stream);
      fs.rmSync(fifo, { force: true });
      this.native.mkfifo(fifo, 0o600);
      fds.push(fs.openSync(fifo, fs.constants.O_RDWR));
    }
    const channel = spec.tasks.length > 0 ? this.native.socketPair() : undefined;
    if (channel) fds.push(channel[1]);
    await this.capture(spec, 0, channel?.[0]).catch((err: unknown) => {
      if (channel) channel.forEach((fd) => this.native.closeFd(fd));
      throw err;
    });
    return { stdoutFd: fds[0], stderrFd: fds[1], fds, ...(channel ? { tasksFd: channel[1] } : {}) };
  }

  /** After a daemon restart: a running workspace's output goes on into the next segment. A prebuild's task
   *  channel and pipes died with the last daemon (the service ends such a prebuild). */
  async reattach(spec: WorkspaceSpec): Promise<void> {
    let segment = 1;
    while (segment < MAX_SEGMENTS && (await this.exists(segmentId(spec.id, segment)))) segment++;
    await this.capture(spec, segment);
  }

  /** After the workload exits: everything it wrote is in the log, which is then closed. */
  async closeWhenDrained(workspaceId: string): Promise<void> {
    const capture = this.captures.get(workspaceId);
    if (!capture) return;
    // The workspace is gone: a FIFO nothing ever opened (after a failure) must still end.
    for (const fifo of this.fifos(workspaceId)) this.poke(fifo);
    await capture.done;
    await capture.writer.close();
    this.captures.delete(workspaceId);
  }

  /** Logs outlive teardown (retention is swept separately); only the FIFOs go with the directory. */
  async remove(workspaceId: string): Promise<void> {
    await this.closeWhenDrained(workspaceId);
  }

  /** Every chunk of every segment in order; with follow, until the live segment closes. */
  async *read(workspaceId: string, opts: { follow: boolean; signal?: AbortSignal }): AsyncGenerator<LogChunkRecord> {
    for (let segment = 0; segment < MAX_SEGMENTS; segment++) {
      const id = segmentId(workspaceId, segment);
      if (!(await this.exists(id))) return;
      const last = !(await this.exists(segmentId(workspaceId, segment + 1)));
      yield* this.store.read(id, { follow: opts.follow && last, ...(opts.signal ? { signal: opts.signal } : {}) });
    }
  }

  /** The facts a log was opened with (owner, team, kind), for the access decision. */
  async meta(workspaceId: string): Promise<Record<string, string> | undefined> {
    try {
      return (await this.store.info(workspaceId)).meta;
    } catch (err) {
      if (err instanceof DomainError && (err.code === 'NOT_FOUND' || err.code === 'INVALID_ARGUMENT')) return undefined;
      throw err;
    }
  }

  private async capture(spec: WorkspaceSpec, segment: number, taskChannel?: number): Promise<void> {
    const writer = await this.store.create(segmentId(spec.id, segment), {
      workspaceId: spec.id,
      ownerId: spec.ownerId,
      teamId: spec.teamId,
      kind: spec.kind,
    });
    const sources = STREAMS.map((stream) => ({ fifo: this.fifoPath(spec.id, stream), stream, task: '' }));
    const copies = sources.map(({ fifo, stream, task }) =>
      writer.capture(this.openReader(fifo, segment > 0), { stream, task }).catch((err: unknown) => {
        this.log.warn({ workspace: spec.id, stream, task, err: err instanceof Error ? err.message : String(err) }, 'output capture ended early');
      }),
    );
    if (taskChannel !== undefined) copies.push(this.captureTasks(spec, writer, taskChannel));
    this.captures.set(spec.id, { writer, done: Promise.all(copies).then(() => undefined) });
  }

  /** A prebuild's task channel until init closes it, and each task's output until its pipes end. */
  private async captureTasks(spec: WorkspaceSpec, writer: LogWriter, channelFd: number): Promise<void> {
    const outputs: Promise<void>[] = [];
    const copy = (fd: number, stream: (typeof STREAMS)[number], task: string): Promise<void> =>
      writer.capture(fd, { stream, task }).catch((err: unknown) => {
        this.log.warn({ workspace: spec.id, stream, task, err: err instanceof Error ? err.message : String(err) }, 'task output capture ended early');
      });
    try {
      await serveTasks(spec.tasks, channelFd, this.native, {
        onEvent: (event) => this.onTaskEvent(spec.id, event),
        onOutput: (i, stdoutFd, stderrFd) => outputs.push(copy(stdoutFd, 'stdout', spec.tasks[i].name), copy(stderrFd, 'stderr', spec.tasks[i].name)),
      });
    } finally {
      await Promise.all(outputs);
    }
  }

  /**
   * A non-blocking reader. Linux reports hang-up on a FIFO only once a writer has come and gone since
   * it was opened; after a restart (reattached) the writer may already be gone, so be that writer once.
   */
  private openReader(fifo: string, reattached: boolean): number {
    const fd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    if (reattached) this.poke(fifo);
    return fd;
  }

  private poke(fifo: string): void {
    try {
      fs.closeSync(fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK));
    } catch {
      // no reader (already drained and closed) or gone: nothing to wake
    }
  }

  private fifos(workspaceId: string): string[] {
    return STREAMS.map((s) => this.fifoPath(workspaceId, s));
  }

  private async exists(logId: string): Promise<boolean> {
    return (await this.meta(logId)) !== undefined;
  }

  private async removeSegments(workspaceId: string): Promise<void> {
    for (let segment = 0; segment < MAX_SEGMENTS && (await this.exists(segmentId(workspaceId, segment))); segment++) {
      await this.store.remove(segmentId(workspaceId, segment));
    }
  }

  private fifoPath(workspaceId: string, stream: string): string {
    return path.join(this.dirOf(workspaceId), `${stream}.fifo`);
  }
}
