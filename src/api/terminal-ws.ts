// The browser terminal: a WebSocket on the workspace endpoint server, wss://terminal-<workspace-id>.<nodeDomain>,
// over the same session API as ExecWorkspace (docs/exec.md, "Browser terminals"). The endpoint server has
// checked the token (Authorization: Bearer, or the tetrix_token cookie); here the exec rule decides, audited
// with via: 'endpoint', and a browser's Origin must be this workspace's own (cross-site WebSocket hijacking:
// a cookie rides along on a handshake any page can start).
//   GET /exec?cmd=sh&cmd=-l&rows=24&cols=80[&cwd=/workspace]   a new terminal session
//   GET /attach/<session-id>[?rows=&cols=]                       re-attach (its recent output first)
// Binary frames carry the terminal's bytes both ways. Text frames carry JSON: from the client
// {"type":"resize","rows":R,"cols":C}, {"type":"signal","signal":"SIGINT"}, {"type":"detach"}; from us
// {"type":"started","session":ID,"replayed":B} first and {"type":"exit","exitCode":N,"signal":S,"unknown":B} last.
// Closing the socket detaches: a session outlives its browser tab.
import type http from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocketServer, type WebSocket, type RawData } from 'ws';
import { DomainError, invalidArgument } from '../errors';
import type { ExecSession, ExecSessions, SessionClient } from '../exec/sessions';
import type { TerminalEndpoint } from '../network/endpoints';
import type { AuditLog } from './audit';
import type { Principal } from './auth';
import { allowExec, execSignal, execStartSpec, sessionId, terminalSize, type ExecWorkspaces } from './exec-api';

const MAX_MESSAGE = 1 << 20;
/** Above this many bytes queued for the browser, the session's output waits. */
const HIGH_WATER = 1 << 20;

interface Opened {
  begin(client: SessionClient): ExecSession | Promise<ExecSession>;
}

function numberParam(url: URL, name: string): number {
  const v = url.searchParams.get(name);
  return v === null || v === '' ? 0 : Number.isInteger(Number(v)) ? Number(v) : NaN;
}

/** Only the workspace's own pages (or no browser at all) may open its terminal. */
function checkOrigin(req: http.IncomingMessage, workspaceId: string, nodeDomain: string): void {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  let host: string;
  try {
    const u = new URL(origin);
    if (u.protocol !== 'https:') throw new Error('not https');
    host = u.hostname.toLowerCase();
  } catch {
    throw new DomainError('PERMISSION_DENIED', 'terminal: origin not allowed');
  }
  const domain = nodeDomain.toLowerCase();
  const own = host === `terminal-${workspaceId}.${domain}` || new RegExp(`^\\d{1,5}-${workspaceId}\\.`).test(host) && host.endsWith(`.${domain}`);
  if (!own) throw new DomainError('PERMISSION_DENIED', 'terminal: origin not allowed');
}

function parseRequest(req: http.IncomingMessage, workspaceId: string, sessions: ExecSessions): Opened {
  const url = new URL(req.url ?? '/', 'https://terminal.invalid');
  const size = terminalSize('size', { rows: numberParam(url, 'rows'), cols: numberParam(url, 'cols') }, undefined);
  if (url.pathname === '/exec') {
    const argv = url.searchParams.getAll('cmd');
    const spec = execStartSpec({
      workspaceId, argv: argv.length ? argv : ['/bin/sh'], env: {}, workingDir: url.searchParams.get('cwd') ?? '', user: '',
      tty: true, size: size ?? { rows: 24, cols: 80 }, session: true,
    });
    return { begin: (client) => sessions.start(spec, client) };
  }
  const m = /^\/attach\/([^/]+)$/.exec(url.pathname);
  if (m) {
    const id = sessionId('session', decodeURIComponent(m[1]));
    sessions.find(workspaceId, id); // NOT_FOUND before the handshake
    return { begin: (client) => sessions.attach(workspaceId, id, client, size) };
  }
  throw new DomainError('NOT_FOUND', 'terminal: /exec or /attach/<session-id>');
}

export function createTerminalEndpoint(opts: { sessions: ExecSessions; workspaces: ExecWorkspaces; audit: AuditLog; nodeDomain: string; log: Logger }): TerminalEndpoint<Principal> {
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE });
  const audit: AuditLog = { record: (e) => opts.audit.record({ ...e, via: 'endpoint' }) };
  return {
    async open(principal, workspaceId, req, socket, head) {
      allowExec(principal, workspaceId, opts.workspaces, audit);
      checkOrigin(req, workspaceId, opts.nodeDomain);
      const opened = parseRequest(req, workspaceId, opts.sessions);
      await new Promise<void>((resolve) => {
        wss.handleUpgrade(req, socket as Parameters<WebSocketServer['handleUpgrade']>[1], head, (ws) => {
          serve(ws, opened, opts.log);
          resolve();
        });
      });
    },
  };
}

function serve(ws: WebSocket, opened: Opened, log: Logger): void {
  let session: ExecSession | undefined;
  let closed = false;
  const control = (msg: object): void => ws.send(JSON.stringify(msg));
  const client: SessionClient = {
    started: (id, replayed) => control({ type: 'started', session: id, replayed }),
    write: (_stream, data) => {
      if (closed) return true;
      ws.send(data, { binary: true });
      return ws.bufferedAmount < HIGH_WATER;
    },
    onDrain: (resume) => {
      // ws has no drain event of its own: the socket under it does.
      const poll = (): void => {
        if (closed || ws.bufferedAmount < HIGH_WATER) resume();
        else setTimeout(poll, 10);
      };
      poll();
    },
    exit: (status) => {
      if (closed) return;
      control({ type: 'exit', ...status });
      ws.close(1000, 'exited');
    },
    displaced: (reason) => ws.close(4000, reason.slice(0, 120)),
  };
  ws.on('message', (data: RawData, isBinary: boolean) => {
    if (!session) return;
    try {
      if (isBinary) session.write(Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]));
      else onControl(session, client, JSON.parse(data.toString()) as Record<string, unknown>, ws);
    } catch (err) {
      ws.close(4400, (err instanceof Error ? err.message : 'bad message').slice(0, 120));
    }
  });
  ws.on('close', () => {
    closed = true;
    session?.detach(client);
  });
  ws.on('error', () => ws.terminate());
  Promise.resolve()
    .then(() => opened.begin(client))
    .then(
      (s) => {
        session = s;
        if (closed) s.detach(client);
      },
      (err: unknown) => {
        log.warn({ err: (err as Error).message }, 'terminal: could not open the session');
        ws.close(4500, (err instanceof DomainError || (err as Error).name === 'NativeError' ? (err as Error).message : 'internal error').slice(0, 120));
      },
    );
}

function onControl(session: ExecSession, client: SessionClient, msg: Record<string, unknown>, ws: WebSocket): void {
  if (msg.type === 'resize') {
    const size = terminalSize('resize', { rows: Number(msg.rows), cols: Number(msg.cols) }, undefined);
    if (size) session.resize(size);
  } else if (msg.type === 'signal') {
    session.signal(execSignal(String(msg.signal)));
  } else if (msg.type === 'detach') {
    session.detach(client);
    ws.close(1000, 'detached');
  } else {
    throw invalidArgument('type', 'must be resize, signal or detach');
  }
}
