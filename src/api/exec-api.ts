// ExecService: exec and terminal sessions (src/exec). Validates, applies the access rule with its `exec`
// action (audited), and bridges the bidirectional stream to a session. No session logic lives here.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { DomainError, invalidArgument } from '../errors';
import type { ExecServiceHandlers } from '../generated/tetrix/agent/v1/ExecService';
import type { ExecInput__Output } from '../generated/tetrix/agent/v1/ExecInput';
import type { ExecOutput } from '../generated/tetrix/agent/v1/ExecOutput';
import type { ExecStart__Output } from '../generated/tetrix/agent/v1/ExecStart';
import type { TerminalSize__Output } from '../generated/tetrix/agent/v1/TerminalSize';
import type { ExecSession, ExecSessions, ExecStartSpec, SessionClient, TerminalSize } from '../exec/sessions';
import type { WorkspaceSpec } from '../workspace/types';
import type { AuditLog } from './audit';
import { authorizeWorkspaceAccess, callerOf, type Principal } from './auth';
import { UndecodableRequest, unary } from './handlers';
import { toServiceError } from './errors';
import { argv, dirInside, env, workspaceId } from './validate';

const SESSION_ID = /^s-[0-9a-f]{16}$/;
const USER = /^(\d{1,5})(?::(\d{1,5}))?$/;
const MAX_ID = 65535; // the workspace maps 65536 ids
export const EXEC_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGKILL', 'SIGUSR1', 'SIGUSR2', 'SIGWINCH', 'SIGCONT', 'SIGSTOP'];

export interface ExecWorkspaces {
  find(id: string): { spec: WorkspaceSpec } | undefined;
}

function user(value: string): { uid: number; gid: number } {
  if (value === '') return { uid: 0, gid: 0 };
  const m = USER.exec(value);
  if (!m) throw invalidArgument('start.user', 'must be "UID" or "UID:GID" (numbers inside the workspace); names are not looked up');
  const uid = Number(m[1]);
  const gid = m[2] === undefined ? uid : Number(m[2]);
  if (uid > MAX_ID || gid > MAX_ID) throw invalidArgument('start.user', `ids must be 0..${MAX_ID}`);
  return { uid, gid };
}

export function terminalSize(field: string, raw: TerminalSize__Output | null | undefined, fallback: TerminalSize | undefined): TerminalSize | undefined {
  const rows = raw?.rows ?? 0;
  const cols = raw?.cols ?? 0;
  if (rows === 0 && cols === 0) return fallback;
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1 || rows > 65535 || cols > 65535) throw invalidArgument(field, 'rows and cols must both be 1..65535');
  return { rows, cols };
}

export function execStartSpec(req: ExecStart__Output): ExecStartSpec {
  const id = workspaceId('start.workspace_id', req.workspaceId);
  const { uid, gid } = user(req.user);
  if (req.session && !req.tty) throw invalidArgument('start.session', 'a session needs a tty (start.tty)');
  return {
    workspaceId: id,
    argv: argv('start.argv', req.argv, true),
    env: env('start.env', req.env),
    cwd: req.workingDir === '' ? '' : dirInside('start.working_dir', req.workingDir),
    uid,
    gid,
    ...(req.tty ? { tty: terminalSize('start.size', req.size, { rows: 24, cols: 80 })! } : {}),
    session: req.session,
  };
}

export function sessionId(field: string, value: string): string {
  if (!SESSION_ID.test(value)) throw invalidArgument(field, 'is not a session id (s- and 16 hex digits)');
  return value;
}

export function execSignal(value: string): string {
  if (!EXEC_SIGNALS.includes(value)) throw invalidArgument('signal', `must be one of ${EXEC_SIGNALS.join(', ')}`);
  return value;
}

/** The access rule with its `exec` action; same refusal for someone else's workspace and an unknown one. */
export function allowExec(principal: Principal | undefined, id: string, workspaces: ExecWorkspaces, audit: AuditLog): void {
  authorizeWorkspaceAccess(principal, { id, record: workspaces.find(id)?.spec }, 'exec', audit);
  if (!workspaces.find(id)) throw new DomainError('NOT_FOUND', `workspace "${id}" not found`);
}

type ExecCall = grpc.ServerDuplexStream<ExecInput__Output | UndecodableRequest, ExecOutput>;

export function execHandlers(sessions: ExecSessions, workspaces: ExecWorkspaces, audit: AuditLog, log: Logger): ExecServiceHandlers {
  return {
    ExecWorkspace: (call: ExecCall) => new ExecCallBridge(call, sessions, workspaces, audit, log).run(),
    ListSessions: unary(log, 'ListSessions', async (req, ctx) => {
      const id = workspaceId('workspace_id', req.workspaceId);
      allowExec(ctx.principal, id, workspaces, audit);
      return {
        sessions: sessions.list(id).map((s) => ({
          sessionId: s.sessionId, workspaceId: s.workspaceId, argv: s.argv, attached: s.attached,
          createdUnixMs: String(s.createdMs), running: s.running, size: s.size,
          ...(s.exit ? { exit: s.exit } : {}),
        })),
      };
    }),
  } as ExecServiceHandlers;
}

/** One ExecWorkspace call: the first message opens the session, the rest drive it. */
class ExecCallBridge {
  private session: ExecSession | undefined;
  private client: SessionClient | undefined;
  private first = true;
  private done = false;

  constructor(
    private readonly call: ExecCall,
    private readonly sessions: ExecSessions,
    private readonly workspaces: ExecWorkspaces,
    private readonly audit: AuditLog,
    private readonly log: Logger,
  ) {}

  run(): void {
    const { call } = this;
    call.on('data', (msg: ExecInput__Output | UndecodableRequest) => {
      try {
        this.onMessage(msg);
      } catch (err) {
        this.fail(err);
      }
    });
    call.on('end', () => this.session?.closeStdin()); // the client's half-close is stdin's EOF
    call.on('cancelled', () => this.clientGone());
    call.on('error', () => this.clientGone());
  }

  private onMessage(msg: ExecInput__Output | UndecodableRequest): void {
    if (this.done) return;
    if (msg instanceof UndecodableRequest) throw msg.error('ExecWorkspace');
    if (this.first) {
      this.first = false;
      this.call.pause(); // nothing else is read before the session exists
      this.open(msg).then(() => this.call.resume(), (err: unknown) => this.fail(err));
      return;
    }
    const s = this.session!;
    switch (msg.input) {
      case 'stdin':
        if (!s.write(msg.stdin!)) {
          this.call.pause();
          s.onInputDrain(() => this.call.resume());
        }
        return;
      case 'resize': {
        const size = terminalSize('resize', msg.resize, undefined);
        if (size) s.resize(size);
        return;
      }
      case 'signal':
        s.signal(execSignal(msg.signal!));
        return;
      case 'detach':
        if (!s.kept) throw invalidArgument('detach', 'only a session can be detached (start.session)');
        s.detach(this.client!);
        this.finish();
        return;
      default:
        throw invalidArgument('input', 'start and attach go only in the first message');
    }
  }

  private async open(msg: ExecInput__Output): Promise<void> {
    const principal = callerOf(this.call);
    const client = this.makeClient();
    this.client = client;
    if (msg.input === 'start') {
      const spec = execStartSpec(msg.start!);
      allowExec(principal, spec.workspaceId, this.workspaces, this.audit);
      this.session = await this.sessions.start(spec, client);
    } else if (msg.input === 'attach') {
      const id = workspaceId('attach.workspace_id', msg.attach!.workspaceId);
      const sid = sessionId('attach.session_id', msg.attach!.sessionId);
      allowExec(principal, id, this.workspaces, this.audit);
      this.session = this.sessions.attach(id, sid, client, terminalSize('attach.size', msg.attach!.size, undefined));
    } else {
      throw invalidArgument('input', 'the first message must be start or attach');
    }
    if (this.done) this.clientGone(); // cancelled while the process was being made
  }

  private makeClient(): SessionClient {
    const { call } = this;
    return {
      started: (id, replayed) => void call.write({ started: { sessionId: id, replayed } }),
      write: (stream, data) => (this.done ? true : call.write(stream === 'stdout' ? { stdout: data } : { stderr: data })),
      onDrain: (resume) => {
        if (this.done) return resume();
        call.once('drain', resume);
      },
      exit: (status) => {
        if (this.done) return;
        call.write({ exit: status });
        this.finish();
      },
      displaced: (reason) => this.fail(new DomainError('ABORTED', reason)),
    };
  }

  /** The client went away: a plain exec is hung up and reaped, a session is only detached. Either way
   *  its output is read on (into the ring, or away) so nothing waits on a client that is gone. */
  private clientGone(): void {
    this.done = true;
    const s = this.session;
    if (!s || !this.client) return;
    s.detach(this.client);
    if (!s.kept) void s.hangUp();
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.call.end();
  }

  private fail(err: unknown): void {
    if (this.done) return;
    const s = this.session;
    if (s && this.client) {
      s.detach(this.client);
      if (!s.kept) void s.hangUp();
    }
    this.done = true;
    this.call.emit('error', toServiceError(err, this.log, 'ExecWorkspace'));
  }
}
