// A workspace's stdout and stderr: anonymous pipes (native/output.c), drained by the daemon into the
// sealed log store (src/logs/) at a cost that follows the workspace's CPU share (./output-drain.ts).
//
// Why init holds a second read end of each: a pipe whose last reader goes away raises SIGPIPE in the
// writer. The workspace's init (PID 1, not dumpable) keeps one and never reads it, so a daemon restart,
// even kill -9, never kills a workload that prints; its writes block once the pipe is full, until the next
// daemon takes the read ends back from init with pidfd_getfd(2) and drains them into a new log segment
// (<id>.1, <id>.2, ...). Nothing host-side has a name: readlink of fds 1 and 2 shows "pipe:[N]", and the
// daemon never opens by path what the workspace writes to (December 2026 review, item 8).
// A prebuild's tasks reach the log through pipes init gets over the task channel (src/prebuild/tasks.ts):
// the daemon holds their read ends and drains them with the same pacer.
import type { Logger } from 'pino';
import { DomainError } from '../../errors';
import type { LogChunkRecord, LogStore, LogWriter } from '../../logs';
import { serveTasks, type TaskEvent } from '../../prebuild/tasks';
import type { NativeAddon } from '../../native';
import { drainPipe, OUTPUT_PIPE_BYTES, OutputPacer } from './output-drain';
import type { OpenedOutput, WorkspaceLogs } from '../ports';
import type { WorkspaceSpec } from '../types';

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
    private readonly log: Logger,
  ) {}

  /** Before spawn: the pipes, the workspace's ends (and init's), and a new log capturing both streams (and each task's).
   *  A prebuild also gets init's end of its task channel (tasksFd, among fds: the caller closes it after spawn). */
  async open(spec: WorkspaceSpec, _uidBase: number): Promise<OpenedOutput> {
    // A reused id starts a fresh history: the previous incarnation was torn down.
    await this.removeSegments(spec.id);
    const pipes: Array<{ readFd: number; writeFd: number; keepFd: number }> = [];
    const channel = spec.tasks.length > 0 ? this.native.socketPair() : undefined;
    try {
      for (let i = 0; i < STREAMS.length; i++) pipes.push(this.native.outputPipe(OUTPUT_PIPE_BYTES));
      await this.capture(spec, 0, pipes.map((p) => p.readFd), channel?.[0]);
    } catch (err) {
      for (const p of pipes) for (const fd of [p.readFd, p.writeFd, p.keepFd]) this.native.closeFd(fd);
      if (channel) channel.forEach((fd) => this.native.closeFd(fd));
      throw err;
    }
    const [out, err] = pipes;
    const fds = [...pipes.flatMap((p) => [p.writeFd, p.keepFd]), ...(channel ? [channel[1]] : [])];
    return { stdoutFd: out.writeFd, stderrFd: err.writeFd, outputReadFds: [out.keepFd, err.keepFd], fds, ...(channel ? { tasksFd: channel[1] } : {}) };
  }

  /** After a daemon restart: init hands back the read ends, and the output goes on into the next segment.
   *  A prebuild's task channel and pipes died with the last daemon (the service ends such a prebuild). */
  async reattach(spec: WorkspaceSpec, takePipes: () => [number, number]): Promise<void> {
    let segment = 1;
    while (segment < MAX_SEGMENTS && (await this.exists(segmentId(spec.id, segment)))) segment++;
    const readFds: number[] = [];
    try {
      readFds.push(...takePipes());
      await this.capture(spec, segment, readFds);
    } catch (err) {
      for (const fd of readFds) this.native.closeFd(fd);
      throw err;
    }
  }

  /** After the workload exits: everything it wrote and the CLOSE record are in the log, which readers now
   *  see whole. The fsync waits for closeWhenDrained. */
  async endWhenDrained(workspaceId: string): Promise<void> {
    const capture = this.captures.get(workspaceId);
    if (!capture) return;
    // The pipes end by themselves once the last write end (the workspace's) closes.
    await capture.done;
    await capture.writer.end();
  }

  /** endWhenDrained, then the log fsynced and closed. */
  async closeWhenDrained(workspaceId: string): Promise<void> {
    const capture = this.captures.get(workspaceId);
    if (!capture) return;
    await this.endWhenDrained(workspaceId);
    await capture.writer.close();
    this.captures.delete(workspaceId);
  }

  /** Logs outlive teardown (retention is swept separately). */
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

  /** A new segment for both pipes (readFds: stdout's and stderr's read ends, owned once the log exists) and a
   *  prebuild's task channel. */
  private async capture(spec: WorkspaceSpec, segment: number, readFds: number[], taskChannel?: number): Promise<void> {
    const writer = await this.store.create(segmentId(spec.id, segment), {
      workspaceId: spec.id,
      ownerId: spec.ownerId,
      teamId: spec.teamId,
      kind: spec.kind,
    });
    // One pacer for every stream: the budget is the workspace's, not each pipe's.
    const pacer = OutputPacer.forCpu(spec.resources.cpuMillis, Date.now());
    const drain = (fd: number, stream: (typeof STREAMS)[number], task: string): Promise<void> =>
      drainPipe(fd, writer, { stream, task }, pacer).catch((err: unknown) => {
        this.log.warn({ workspace: spec.id, stream, task, err: err instanceof Error ? err.message : String(err) }, 'output capture ended early');
      });
    const copies = STREAMS.map((stream, i) => drain(readFds[i], stream, ''));
    if (taskChannel !== undefined) copies.push(this.captureTasks(spec, taskChannel, drain));
    this.captures.set(spec.id, { writer, done: Promise.all(copies).then(() => undefined) });
  }

  /** A prebuild's task channel until init closes it, and each task's output until its pipes end. */
  private async captureTasks(spec: WorkspaceSpec, channelFd: number, drain: (fd: number, stream: (typeof STREAMS)[number], task: string) => Promise<void>): Promise<void> {
    const outputs: Promise<void>[] = [];
    try {
      await serveTasks(spec.tasks, channelFd, this.native, {
        onEvent: (event) => this.onTaskEvent(spec.id, event),
        onOutput: (i, stdoutFd, stderrFd) => outputs.push(drain(stdoutFd, 'stdout', spec.tasks[i].name), drain(stderrFd, 'stderr', spec.tasks[i].name)),
      });
    } finally {
      await Promise.all(outputs);
    }
  }

  private async exists(logId: string): Promise<boolean> {
    return (await this.meta(logId)) !== undefined;
  }

  private async removeSegments(workspaceId: string): Promise<void> {
    for (let segment = 0; segment < MAX_SEGMENTS && (await this.exists(segmentId(workspaceId, segment))); segment++) {
      await this.store.remove(segmentId(workspaceId, segment));
    }
  }
}
