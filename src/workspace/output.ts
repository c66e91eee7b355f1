// A workspace's stdout and stderr: anonymous pipes (native/output.c), drained by the daemon into the
// sealed log store (src/prebuild/logs.ts) at a cost that follows the workspace's CPU share (./output-drain.ts).
//
// Why init holds a second read end of each: a pipe whose last reader goes away raises SIGPIPE in the
// writer. The workspace's init (PID 1, not dumpable) keeps one and never reads it, so a daemon restart,
// even kill -9, never kills a workload that prints; its writes block once the pipe is full, until the next
// daemon takes the read ends back from init with pidfd_getfd(2) and drains them into a new log segment
// (<id>.1, <id>.2, ...). Nothing host-side has a name: readlink of fds 1 and 2 shows "pipe:[N]", and the
// daemon never opens by path what the workspace writes to (December 2026 review, item 8).
// Prebuilds' task output comes through FIFOs in <ws>/io instead (src/prebuild/tasks.ts).
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { DomainError } from '../errors';
import type { LogChunkRecord, LogStore, LogWriter } from '../prebuild/logs';
import { createTaskFifos, parseTaskEvent, type TaskEvent } from '../prebuild/tasks';
import type { NativeAddon } from '../sandbox/native';
import { drainPipe, OUTPUT_PIPE_BYTES, OutputPacer } from './output-drain';
import type { OpenedOutput, WorkspaceLogs } from './ports';
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

  /** Prebuilds' task FIFOs, bound into the workspace at /.tetrix/io. */
  ioDir(workspaceId: string): string {
    return path.join(this.dirOf(workspaceId), 'io');
  }

  /** Before spawn: the pipes, the workspace's ends (and init's), and a new log capturing both streams (and each task's). */
  async open(spec: WorkspaceSpec, uidBase: number): Promise<OpenedOutput> {
    // A reused id starts a fresh history: the previous incarnation was torn down.
    await this.removeSegments(spec.id);
    const pipes: Array<{ readFd: number; writeFd: number; keepFd: number }> = [];
    try {
      for (let i = 0; i < STREAMS.length; i++) pipes.push(this.native.outputPipe(OUTPUT_PIPE_BYTES));
      if (spec.tasks.length > 0) createTaskFifos(this.ioDir(spec.id), spec.tasks.length, uidBase, (p, m) => this.native.mkfifo(p, m));
      await this.capture(spec, 0, pipes.map((p) => p.readFd));
    } catch (err) {
      for (const p of pipes) for (const fd of [p.readFd, p.writeFd, p.keepFd]) this.native.closeFd(fd);
      throw err;
    }
    const [out, err] = pipes;
    return { stdoutFd: out.writeFd, stderrFd: err.writeFd, outputReadFds: [out.keepFd, err.keepFd], fds: pipes.flatMap((p) => [p.writeFd, p.keepFd]) };
  }

  /** After a daemon restart: init hands back the read ends, and the output goes on into the next segment. */
  async reattach(spec: WorkspaceSpec, pidfd: number): Promise<void> {
    let segment = 1;
    while (segment < MAX_SEGMENTS && (await this.exists(segmentId(spec.id, segment)))) segment++;
    const { STDOUT_READ_FD, STDERR_READ_FD } = this.native.constants;
    const readFds: number[] = [];
    try {
      for (const fd of [STDOUT_READ_FD, STDERR_READ_FD]) readFds.push(this.native.takeOutputPipe(pidfd, fd));
      await this.capture(spec, segment, readFds);
    } catch (err) {
      for (const fd of readFds) this.native.closeFd(fd);
      throw err;
    }
  }

  /** After the workload exits: everything it wrote is in the log, which is then closed. */
  async closeWhenDrained(workspaceId: string): Promise<void> {
    const capture = this.captures.get(workspaceId);
    if (!capture) return;
    // The workspace is gone: a task FIFO no task ever opened (after a failure) must still end. The pipes
    // end by themselves once the last write end closes.
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

  /** A new segment for both pipes (readFds: stdout's and stderr's read ends, owned once the log exists) and the tasks' FIFOs. */
  private async capture(spec: WorkspaceSpec, segment: number, readFds: number[]): Promise<void> {
    const writer = await this.store.create(segmentId(spec.id, segment), {
      workspaceId: spec.id,
      ownerId: spec.ownerId,
      teamId: spec.teamId,
      kind: spec.kind,
    });
    const endedEarly = (stream: string, task: string) => (err: unknown): void => {
      this.log.warn({ workspace: spec.id, stream, task, err: err instanceof Error ? err.message : String(err) }, 'output capture ended early');
    };
    // One pacer for both streams: the budget is the workspace's, not each pipe's.
    const pacer = OutputPacer.forCpu(spec.resources.cpuMillis, Date.now());
    const taskSources = spec.tasks.flatMap((t, i) => STREAMS.map((stream) => ({ fifo: path.join(this.ioDir(spec.id), `${i}.${stream.slice(3)}`), stream, task: t.name })));
    const copies = taskSources.map(({ fifo, stream, task }) => writer.capture(this.openReader(fifo, segment > 0), { stream, task }).catch(endedEarly(stream, task)));
    // Last, once nothing above can throw: from here the drains own readFds.
    copies.push(...STREAMS.map((stream, i) => drainPipe(readFds[i], writer, { stream, task: '' }, pacer).catch(endedEarly(stream, ''))));
    if (spec.tasks.length > 0) copies.push(this.followTasks(spec, segment > 0));
    this.captures.set(spec.id, { writer, done: Promise.all(copies).then(() => undefined) });
  }

  /** The runner's status lines, until it exits. */
  private async followTasks(spec: WorkspaceSpec, reattached: boolean): Promise<void> {
    const socket = new net.Socket({ fd: this.openReader(path.join(this.ioDir(spec.id), 'status'), reattached), readable: true, writable: false });
    let pending = '';
    for await (const chunk of socket) {
      pending += (chunk as Buffer).toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        const event = parseTaskEvent(line, spec.tasks.length);
        if (event) this.onTaskEvent(spec.id, event);
      }
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
    const io = this.ioDir(workspaceId);
    return fs.existsSync(io) ? fs.readdirSync(io).map((f) => path.join(io, f)) : [];
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
