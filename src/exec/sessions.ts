// Exec processes and terminal sessions in running workspaces (docs/exec.md). A plain exec belongs to its
// call: the client going away hangs it up (SIGHUP to its process group) and it is reaped. A terminal
// session (tty + session) outlives its client: its output goes on into a replay ring while nobody is
// attached, a re-attach replays the ring and carries on, and one left detached and quiet for
// detachedTimeoutMs is hung up. Its pty master is parked in the workspace's init, so the next daemon
// (even after a kill -9) takes it back and the session goes on (native/exec.c parkSessions).
import crypto from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import tty from 'node:tty';
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { DomainError } from '../errors';
import type { ExecNative, ExitNative, ExitStatus, ExecResult, PtyReader } from '../native';
import type { Launched } from '../workspace/ports';
import type { WorkspaceRecord } from '../workspace/types';
import { readPidStartTime } from '../sandbox/proc';
import { ReplayBuffer, DEFAULT_REPLAY_BYTES } from './replay';
import { COALESCE_MS, onreadPipe, OutputPacer } from '../workspace/adapters/output-drain';

export type OutputStream = 'stdout' | 'stderr';

export interface ExecExitStatus {
  exitCode: number;          // -1 when signaled or unknown
  signal: string;
  unknown: boolean;          // ended while no daemon watched it as its parent
}

export interface TerminalSize {
  rows: number;
  cols: number;
}

/** What an exec runs, already validated (src/api/exec-api.ts). */
export interface ExecStartSpec {
  workspaceId: string;
  argv: string[];
  env: Record<string, string>;
  cwd: string;               // '' = the workspace's working dir
  uid: number;
  gid: number;
  tty?: TerminalSize;
  session: boolean;          // needs tty
}

/** The attached end: a gRPC call or a WebSocket. */
export interface SessionClient {
  started(sessionId: string, replayed: boolean): void;
  /** false: the client is full; output stops until onDrain's callback. */
  write(stream: OutputStream, data: Buffer): boolean;
  onDrain(resume: () => void): void;
  exit(status: ExecExitStatus): void;
  /** Another client took the session over, or it was closed: end this one with the reason. */
  displaced(reason: string): void;
}

export interface SessionInfo {
  sessionId: string;
  workspaceId: string;
  argv: string[];
  attached: boolean;
  createdMs: number;
  running: boolean;
  exit: ExecExitStatus | undefined;
  size: TerminalSize;
}

export interface ExecTargets {
  execTarget(id: string): { record: WorkspaceRecord; process: Launched };
  list(): WorkspaceRecord[];
}

export interface ExecSessionsOptions {
  workspaces: ExecTargets;
  native: Pick<ExecNative, 'ptyResize' | 'signalSession' | 'ptyReadStart' | 'ptyReadPause' | 'ptyReadResume' | 'ptyReadClose'> & Pick<ExitNative, 'watchExit' | 'closeFd' | 'pidfdOpen'>;
  log: Logger;
  detachedTimeoutMs: number;
  replayBytes?: number;
  /** How long an exited process's output may still drain (background children holding it). */
  drainGraceMs?: number;
  /** After SIGHUP, how long before SIGKILL. */
  hangupGraceMs?: number;
}

const DEFAULT_TERMINAL: TerminalSize = { rows: 24, cols: 80 };
const DRAIN_LIMIT_MS = 30_000;
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const SIGNALS = os.constants.signals as Record<string, number>;

/** What init holds of a parked session, beside its master. */
interface ParkedMeta {
  v: 1;
  id: string;
  pid: number;
  startTime: string;
  argv: string[];
  createdMs: number;
  rows: number;
  cols: number;
}

export class ExecSession {
  readonly id = `s-${crypto.randomBytes(8).toString('hex')}`;
  client: SessionClient | undefined;
  exit: ExecExitStatus | undefined;
  size: TerminalSize;
  private ring: ReplayBuffer | undefined;
  private idle: NodeJS.Timeout | undefined;
  private killTimer: NodeJS.Timeout | undefined;
  private pidfd: number;
  private readonly outputs: OutputSource[] = [];
  private input: Writable | undefined;
  private outputsOpen = 0;
  private exitSeen: ExitStatus | undefined;
  private finished = false;
  private paused = false;
  private lastOutputAt = 0;
  private exitedAt = 0;
  readonly ended: Promise<void>;
  private markEnded!: () => void;

  constructor(
    private readonly owner: ExecSessions,
    readonly workspaceId: string,
    readonly argv: string[],
    readonly kept: boolean,
    readonly createdMs: number,
    readonly pid: number,
    readonly startTime: string,
    pidfd: number,
    readonly masterFd: number | undefined,
    size: TerminalSize | undefined,
    id?: string,
  ) {
    if (id) (this as { id: string }).id = id;
    this.pidfd = pidfd;
    this.size = size ?? DEFAULT_TERMINAL;
    this.ended = new Promise((resolve) => (this.markEnded = resolve));
    if (kept) this.ring = new ReplayBuffer(owner.replayBytes);
  }

  get running(): boolean {
    return this.exitSeen === undefined;
  }

  /** Wires the process's stdio and exit; output flows from here on, read as fast as `pacer` allows. */
  wire(streams: ExecStreams, pacer: OutputPacer): void {
    if (streams.master) {
      // Written through libuv's tty stream, read by native/exec.c's pty reader (see ptyReadStart).
      this.input = streams.master;
      streams.master.on('error', () => undefined); // EIO once no slave is left: the reader says the end
      this.readFrom(paced(ptySource(this.owner.o.native, this.masterFd!), pacer), 'stdout');
    } else {
      this.input = streams.stdin;
      streams.stdin!.on('error', () => undefined); // EPIPE once the process is gone
      this.readFrom(paced(pipeSource(streams.stdoutFd!), pacer), 'stdout');
      this.readFrom(paced(pipeSource(streams.stderrFd!), pacer), 'stderr');
    }
    this.owner.o.native.watchExit(this.pidfd, (status) => this.onExit(status));
  }

  private readFrom(source: OutputSource, name: OutputStream): void {
    this.outputs.push(source);
    this.outputsOpen++;
    source.start(
      (chunk) => this.onOutput(name, chunk),
      () => {
        this.outputsOpen--;
        this.maybeFinish();
      },
    );
  }

  private onOutput(name: OutputStream, chunk: Buffer): void {
    this.lastOutputAt = Date.now();
    this.ring?.push(chunk);
    if (!this.client) {
      this.armIdle(); // output while detached is activity
      return;
    }
    if (!this.client.write(name, chunk) && !this.paused) {
      // Flow control: the pty or pipe fills and the writer blocks, so daemon memory stays flat.
      this.paused = true;
      for (const s of this.outputs) s.pause();
      const client = this.client;
      client.onDrain(() => {
        if (this.client !== client) return;
        this.resume();
      });
    }
  }

  private resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.lastOutputAt = Date.now(); // time spent waiting on the client is not quiet
    for (const s of this.outputs) s.resume();
  }

  /** Attaches client (displacing the one there), replaying the ring first for a session. */
  attach(client: SessionClient, size: TerminalSize | undefined): void {
    const previous = this.client;
    this.client = client;
    if (previous) previous.displaced('the session was attached by another client');
    clearTimeout(this.idle);
    const replay = this.ring?.contents();
    client.started(this.id, replay !== undefined);
    if (replay && replay.length > 0) client.write('stdout', replay);
    if (size && size.rows > 0 && size.cols > 0) this.resize(size);
    this.resume();
    if (this.finished) this.deliverExit();
  }

  detach(client: SessionClient): void {
    if (this.client !== client) return;
    this.client = undefined;
    this.resume(); // detached: keep reading into the ring
    if (this.finished) this.owner.forget(this);
    else this.armIdle();
  }

  /** Taken back after a restart: nobody is attached, so the idle clock runs. */
  startDetached(): void {
    this.armIdle();
  }

  write(data: Buffer): boolean {
    if (!this.input || this.input.destroyed || !this.running) return true;
    return this.input.write(data);
  }

  onInputDrain(resume: () => void): void {
    if (!this.input || this.input.destroyed) return resume();
    this.input.once('drain', resume);
  }

  closeStdin(): void {
    if (this.masterFd === undefined) this.input?.end();
  }

  resize(size: TerminalSize): void {
    if (this.masterFd === undefined || !this.running) return;
    this.size = size;
    this.owner.o.native.ptyResize(this.masterFd, size.rows, size.cols);
  }

  signal(name: string): void {
    if (!this.running) return;
    const signum = SIGNALS[name];
    if (signum === undefined) throw new DomainError('INVALID_ARGUMENT', `signal: unknown signal ${name}`);
    try {
      this.owner.o.native.signalSession(this.pidfd, this.pid, signum);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ESRCH') throw err;
    }
  }

  /** SIGHUP to the process group, SIGKILL after the grace; resolves once it ended. */
  hangUp(): Promise<void> {
    if (this.running) {
      this.signal('SIGHUP');
      clearTimeout(this.killTimer);
      this.killTimer = setTimeout(() => this.signal('SIGKILL'), this.owner.hangupGraceMs);
    }
    return this.ended;
  }

  private armIdle(): void {
    if (!this.kept || this.client) return;
    clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      if (this.client) return;
      this.owner.o.log.info({ workspace: this.workspaceId, session: this.id }, 'closing a detached idle session');
      if (this.finished) this.owner.forget(this);
      else void this.hangUp();
    }, this.owner.o.detachedTimeoutMs);
    this.idle.unref();
  }

  private onExit(status: ExitStatus): void {
    this.exitSeen = status;
    this.exitedAt = Date.now();
    clearTimeout(this.killTimer);
    this.owner.o.native.closeFd(this.pidfd);
    this.pidfd = -1;
    this.armDrainGrace();
    this.maybeFinish();
  }

  /** What is still in the pipes or the pty comes out first: they are closed once they have been quiet for
   *  drainGraceMs (background children holding them), or DRAIN_LIMIT_MS after the exit however chatty.
   *  Time the output waits on a slow client counts for neither. */
  private armDrainGrace(): void {
    const grace = setTimeout(() => {
      if (this.finished) return;
      const now = Date.now();
      if (this.paused) this.exitedAt += this.owner.drainGraceMs;
      const quiet = now - this.lastOutputAt >= this.owner.drainGraceMs;
      if (!this.paused && (quiet || now - this.exitedAt >= DRAIN_LIMIT_MS)) {
        for (const s of this.outputs) s.destroy();
        return;
      }
      this.armDrainGrace();
    }, this.owner.drainGraceMs);
    grace.unref();
  }

  private maybeFinish(): void {
    if (this.finished || this.exitSeen === undefined || this.outputsOpen > 0) return;
    this.finished = true;
    const s = this.exitSeen;
    this.exit = {
      exitCode: s.exitCode ?? -1,
      signal: s.signal ?? '',
      unknown: !s.reaped,
    };
    this.input?.destroy();
    this.owner.ended(this);
    this.markEnded();
    if (this.client) this.deliverExit();
    else if (this.kept) this.armIdle(); // an exited session stays listed (and re-attachable) for a while
    else this.owner.forget(this);
  }

  private deliverExit(): void {
    const client = this.client!;
    this.client = undefined;
    client.exit(this.exit!);
    this.owner.forget(this);
  }

  parked(): { meta: string; fd: number } | undefined {
    if (!this.kept || this.masterFd === undefined || !this.running) return undefined;
    const meta: ParkedMeta = {
      v: 1, id: this.id, pid: this.pid, startTime: this.startTime, argv: this.argv, createdMs: this.createdMs,
      rows: this.size.rows, cols: this.size.cols,
    };
    return { meta: JSON.stringify(meta), fd: this.masterFd };
  }

  info(): SessionInfo {
    return {
      sessionId: this.id, workspaceId: this.workspaceId, argv: this.argv, attached: this.client !== undefined,
      createdMs: this.createdMs, running: !this.finished, exit: this.exit, size: this.size,
    };
  }

  dispose(): void {
    clearTimeout(this.idle);
    clearTimeout(this.killTimer);
  }
}

export class ExecSessions {
  private readonly sessions = new Map<string, ExecSession>();
  readonly replayBytes: number;
  readonly drainGraceMs: number;
  readonly hangupGraceMs: number;

  constructor(readonly o: ExecSessionsOptions) {
    this.replayBytes = o.replayBytes ?? DEFAULT_REPLAY_BYTES;
    this.drainGraceMs = o.drainGraceMs ?? 1000;
    this.hangupGraceMs = o.hangupGraceMs ?? 5000;
  }

  /** Starts the process and attaches client to it. */
  async start(spec: ExecStartSpec, client: SessionClient): Promise<ExecSession> {
    if (spec.session && !spec.tty) throw new DomainError('INVALID_ARGUMENT', 'session: a session needs a tty');
    const { record, process } = this.o.workspaces.execTarget(spec.workspaceId);
    // A prebuild's signed provenance says its tasks, and nothing else, made its snapshot (docs/prebuilds.md).
    if (record.spec.kind === 'PREBUILD') throw new DomainError('FAILED_PRECONDITION', `workspace "${spec.workspaceId}" is a prebuild: only its tasks run in it`);
    const result = await process.exec({
      workspaceId: spec.workspaceId,
      seccompProfile: record.spec.seccompProfile,
      argv: spec.argv,
      env: sessionEnv(record.spec.env, spec),
      cwd: spec.cwd || record.spec.workingDir || '/',
      uid: spec.uid,
      gid: spec.gid,
      ...(spec.tty ? { tty: spec.tty } : {}),
      dieWithDaemon: !spec.session,
    });
    const session = new ExecSession(this, spec.workspaceId, spec.argv, spec.session, Date.now(), result.pid,
      readPidStartTime(result.pid), result.pidfd, result.masterFd, spec.tty);
    this.sessions.set(session.id, session);
    session.attach(client, undefined);
    session.wire(streamsOf(result), OutputPacer.forCpu(record.spec.resources.cpuMillis, Date.now()));
    this.o.log.info({ workspace: spec.workspaceId, session: session.id, tty: spec.tty !== undefined, kept: spec.session }, 'exec started');
    if (spec.session) this.park(spec.workspaceId);
    return session;
  }

  /** A session of workspaceId, or NOT_FOUND (the caller was already allowed into the workspace). */
  find(workspaceId: string, sessionId: string): ExecSession {
    const s = this.sessions.get(sessionId);
    if (!s || s.workspaceId !== workspaceId || !s.kept) {
      throw new DomainError('NOT_FOUND', `session "${sessionId}" not found in workspace "${workspaceId}"`);
    }
    return s;
  }

  attach(workspaceId: string, sessionId: string, client: SessionClient, size: TerminalSize | undefined): ExecSession {
    const s = this.find(workspaceId, sessionId);
    s.attach(client, size);
    return s;
  }

  list(workspaceId: string): SessionInfo[] {
    return [...this.sessions.values()].filter((s) => s.kept && s.workspaceId === workspaceId).map((s) => s.info());
  }

  /** A process ended: its master leaves init's park. */
  ended(s: ExecSession): void {
    this.o.log.info({ workspace: s.workspaceId, session: s.id, exit: s.exit }, 'exec ended');
    if (s.kept) this.park(s.workspaceId);
  }

  forget(s: ExecSession): void {
    s.dispose();
    this.sessions.delete(s.id);
  }

  /** What init holds becomes exactly the running sessions' masters. */
  private park(workspaceId: string): void {
    let process: Launched;
    try {
      process = this.o.workspaces.execTarget(workspaceId).process;
    } catch {
      return; // stopping or gone: its sessions end with it
    }
    const parked = [...this.sessions.values()].filter((s) => s.workspaceId === workspaceId).map((s) => s.parked()).filter((p) => p !== undefined);
    try {
      process.parkSessions(parked);
    } catch (err) {
      this.o.log.warn({ workspace: workspaceId, err: (err as Error).message }, 'sessions not parked in init: they will not survive a daemon restart');
    }
  }

  /** After a restart: the sessions whose masters init held, re-adopted detached. */
  recover(): void {
    for (const record of this.o.workspaces.list()) {
      if (record.status.state !== 'RUNNING') continue;
      let process: Launched;
      try {
        process = this.o.workspaces.execTarget(record.spec.id).process;
      } catch {
        continue;
      }
      let parked;
      try {
        parked = process.takeParkedSessions();
      } catch (err) {
        this.o.log.warn({ workspace: record.spec.id, err: (err as Error).message }, 'no parked sessions to take back');
        continue;
      }
      for (const p of parked) this.adopt(record, p.meta, p.fd);
      this.park(record.spec.id);
    }
  }

  private adopt(record: WorkspaceRecord, metaText: string, fd: number): void {
    const { native, log } = this.o;
    const workspaceId = record.spec.id;
    let meta: ParkedMeta;
    try {
      meta = JSON.parse(metaText) as ParkedMeta;
    } catch {
      native.closeFd(fd);
      return;
    }
    let pidfd: number;
    try {
      pidfd = native.pidfdOpen(meta.pid);
    } catch {
      native.closeFd(fd);
      return;
    }
    // The pid must still be the session's leader, not a recycled number.
    if (readPidStartTime(meta.pid) !== meta.startTime) {
      native.closeFd(pidfd);
      native.closeFd(fd);
      return;
    }
    const s = new ExecSession(this, workspaceId, meta.argv, true, meta.createdMs, meta.pid, meta.startTime, pidfd, fd,
      { rows: meta.rows, cols: meta.cols }, meta.id);
    this.sessions.set(s.id, s);
    s.wire({ master: new tty.ReadStream(fd) }, OutputPacer.forCpu(record.spec.resources.cpuMillis, Date.now()));
    s.startDetached();
    log.info({ workspace: workspaceId, session: s.id }, 'terminal session taken back from init');
  }

}

/** One output of a process: a pipe or a pty master (native/exec.c's reader). pause() takes effect before
 *  the next read, even when called from onData. */
interface OutputSource {
  start(onData: (chunk: Buffer) => void, onEnd: () => void): void;
  pause(): void;
  resume(): void;
  destroy(): void;
}

/** A read at least this large is bulk output, not a trickle: the next read waits only for the budget. A pty
 *  hands over at most 4095 bytes per read (n_tty's buffer), so resting after each would cap it at 160 KiB/s.
 *  A trickle still rests: the read right after a bulk one finds little and waits. */
const BULK_READ_BYTES = 2048;

/**
 * An output read no more often than the workspace's pacer allows (December 2026 review, item 7: the cost of
 * draining follows the workspace's CPU share, as for its log in src/workspace/adapters/output-drain.ts).
 * After each chunk the source rests (a small one for COALESCE_MS, so a trickle of writes piles up into one
 * read); it reads again once the rest is over and nobody paused it meanwhile.
 */
function paced(source: OutputSource, pacer: OutputPacer): OutputSource {
  let held = false;
  let resting: NodeJS.Timeout | undefined;
  return {
    start: (onData, onEnd) => source.start((chunk) => {
      source.pause();
      clearTimeout(resting);
      resting = setTimeout(() => {
        resting = undefined;
        if (!held) source.resume();
      }, pacer.delayAfter(chunk.length, Date.now(), chunk.length >= BULK_READ_BYTES ? 0 : COALESCE_MS));
      onData(chunk);
    }, () => {
      clearTimeout(resting);
      onEnd();
    }),
    pause: () => {
      held = true;
      source.pause();
    },
    resume: () => {
      held = false;
      if (!resting) source.resume();
    },
    destroy: () => {
      clearTimeout(resting);
      source.destroy();
    },
  };
}

/** A pipe whose pause stops libuv reading at once (see onreadPipe). */
function pipeSource(fd: number): OutputSource {
  let socket: net.Socket | undefined;
  let stopped = false;
  return {
    start: (onData, onEnd) => {
      socket = onreadPipe(fd, (data) => {
        onData(data);
        return !stopped;
      });
      socket.on('error', () => undefined);
      socket.once('end', () => socket?.destroy());
      socket.once('close', onEnd);
    },
    pause: () => {
      stopped = true;
    },
    resume: () => {
      if (!stopped) return;
      stopped = false;
      socket?.resume();
    },
    destroy: () => socket?.destroy(),
  };
}

function ptySource(native: ExecSessionsOptions['native'], masterFd: number): OutputSource {
  let reader: PtyReader | undefined;
  let ended: (() => void) | undefined;
  const finish = (): void => {
    if (reader) native.ptyReadClose(reader);
    reader = undefined;
    const end = ended;
    ended = undefined;
    end?.();
  };
  return {
    start: (onData, onEnd) => {
      ended = onEnd;
      reader = native.ptyReadStart(masterFd, (chunk) => (chunk ? onData(chunk) : finish()));
    },
    pause: () => reader && native.ptyReadPause(reader),
    resume: () => reader && native.ptyReadResume(reader),
    destroy: finish,
  };
}

interface ExecStreams {
  master?: tty.ReadStream;
  stdin?: net.Socket;
  stdoutFd?: number;
  stderrFd?: number;
}

function streamsOf(r: ExecResult): ExecStreams {
  if (r.masterFd !== undefined) return { master: new tty.ReadStream(r.masterFd) };
  return { stdin: new net.Socket({ fd: r.stdinFd!, readable: false, writable: true }), stdoutFd: r.stdoutFd!, stderrFd: r.stderrFd! };
}

/** A login-like base, the workspace's own env over it, the request's over that (as `docker exec -e`). */
function sessionEnv(workspaceEnv: Record<string, string>, spec: ExecStartSpec): Record<string, string> {
  const base: Record<string, string> = { PATH: DEFAULT_PATH, HOME: spec.uid === 0 ? '/root' : '/' };
  if (spec.tty) base.TERM = 'xterm-256color';
  return { ...base, ...workspaceEnv, ...spec.env };
}
