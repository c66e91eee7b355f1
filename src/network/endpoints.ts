// The workspace endpoint server: the only way into a workspace's ports from outside the node.
// One HTTPS listener (TLS 1.3, no plaintext twin) carries HTTP/1.1 and upgrades (WebSocket); the host
// name `<port>-<workspace-id>.<node domain>` picks the workspace and port; every request and every upgrade
// must carry the owner's token (Authorization: Bearer, or the tetrix_token cookie). Who may pass is decided
// by the injected guard (src/api/auth.ts createEndpointGuard), where the workspace is by the injected
// resolver (the networking layer), so this file knows HTTP and sockets only. See docs/security-transport.md.
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TLS_MIN_VERSION } from '../crypto/pki';
import { DomainError } from '../errors';

export interface EndpointTarget {
  readonly host: string;   // the workspace's address, reachable from the node
  readonly port: number;
  readonly ownerId: string;
  readonly running: boolean;
}

/** Where a workspace port lives; undefined for an unknown workspace or a port it does not expose. */
export type EndpointResolver = (workspaceId: string, port: number) => Promise<EndpointTarget | undefined>;

/** The access checks; each throws DomainError (UNAUTHENTICATED, PERMISSION_DENIED) to refuse. */
export interface EndpointGuard<P> {
  authenticate(token: string | undefined, workspaceId: string): P | Promise<P>;
  authorize(principal: P, workspaceId: string, port: number, route: EndpointTarget | undefined): void;
}

/** The workspace's terminal WebSocket (terminal-<workspace-id>.<nodeDomain>, src/api/terminal-ws.ts): it
 *  decides on the authenticated principal (a DomainError refuses the upgrade), then takes the socket over. */
export interface TerminalEndpoint<P> {
  open(principal: P, workspaceId: string, req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void>;
}

export interface EndpointServerOptions<P> {
  readonly nodeDomain: string;               // endpoints are <port>-<workspace-id>.<nodeDomain>
  readonly tls: tls.SecureContextOptions;     // cert + key for *.<nodeDomain>
  readonly resolve: EndpointResolver;
  readonly guard: EndpointGuard<P>;
  readonly terminal?: TerminalEndpoint<P>;
  readonly log?: Pick<Logger, 'warn' | 'debug'>;
}

export const TOKEN_COOKIE = 'tetrix_token';
const WORKSPACE_ID = '[a-z0-9][a-z0-9-]{0,62}'; // as StartWorkspaceRequest.id

// One body for unknown, stopped, not exposed and not yours: the response must not tell them apart.
const FORBIDDEN_BODY = 'forbidden: no such endpoint, or not yours\n';
const UNAUTHENTICATED_BODY = 'unauthenticated: a valid token is required\n';
const NOT_AN_ENDPOINT_BODY = 'not found: not a workspace endpoint name\n';

// RFC 9110 7.6.1: meaningful for one hop only.
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'];

export interface EndpointRoute {
  readonly port: number;
  readonly workspaceId: string;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** `8080-abc.node.example[:443]` -> { port: 8080, workspaceId: 'abc' }; anything else undefined. */
export function parseEndpointHost(host: string | undefined, nodeDomain: string): EndpointRoute | undefined {
  if (!host) return undefined;
  const name = host.toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
  const m = new RegExp(`^(\\d{1,5})-(${WORKSPACE_ID})\\.${escapeRegExp(nodeDomain.toLowerCase())}$`).exec(name);
  if (!m) return undefined;
  const port = Number(m[1]);
  if (port < 1 || port > 65535) return undefined;
  return { port, workspaceId: m[2] as string };
}

/** `terminal-abc.node.example[:443]` -> 'abc' (the workspace's terminal WebSocket); anything else undefined. */
export function parseTerminalHost(host: string | undefined, nodeDomain: string): string | undefined {
  const name = (host ?? '').toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
  return new RegExp(`^terminal-(${WORKSPACE_ID})\\.${escapeRegExp(nodeDomain.toLowerCase())}$`).exec(name)?.[1];
}

export interface FoundToken {
  readonly token: string;
  readonly from: 'header' | 'cookie';
}

function cookieValue(cookieHeader: string | undefined, name: string): string | undefined {
  for (const part of (cookieHeader ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** The token of a request: an `Authorization: Bearer` header first, else the tetrix_token cookie. */
export function findToken(headers: http.IncomingHttpHeaders): FoundToken | undefined {
  const auth = /^Bearer\s+(\S+)\s*$/i.exec(headers.authorization ?? '');
  if (auth) return { token: auth[1] as string, from: 'header' };
  const cookie = cookieValue(headers.cookie, TOKEN_COOKIE);
  return cookie ? { token: cookie, from: 'cookie' } : undefined;
}

function withoutTokenCookie(cookieHeader: string): string {
  return cookieHeader
    .split(';')
    .filter((part) => part.split('=')[0]?.trim() !== TOKEN_COOKIE)
    .join(';')
    .trim();
}

/** The request headers the workspace sees: no hop-by-hop headers and never the user's token, which the
 *  workspace could otherwise replay against this node's API. */
function forwardedHeaders(req: http.IncomingMessage, found: FoundToken | undefined, keepUpgrade: boolean): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined || name.startsWith('x-forwarded-')) continue;
    if (HOP_BY_HOP.includes(name) && !(keepUpgrade && (name === 'connection' || name === 'upgrade'))) continue;
    if (name === 'authorization' && found?.from === 'header') continue;
    if (name === 'cookie') {
      const rest = withoutTokenCookie(String(value));
      if (rest) out.cookie = rest;
      continue;
    }
    out[name] = value;
  }
  out['x-forwarded-for'] = req.socket.remoteAddress ?? '';
  out['x-forwarded-proto'] = 'https';
  if (req.headers.host) out['x-forwarded-host'] = req.headers.host;
  return out;
}

function responseHeaders(up: http.IncomingMessage): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(up.headers)) {
    if (value === undefined || HOP_BY_HOP.includes(name)) continue;
    if (name === 'set-cookie') {
      // A workspace may not plant or overwrite the node's token cookie.
      const kept = (value as string[]).filter((c) => c.split('=')[0]?.trim() !== TOKEN_COOKIE);
      if (kept.length > 0) out[name] = kept;
      continue;
    }
    out[name] = value;
  }
  return out;
}

type Refusal = { status: number; body: string };

function refusalFor(err: unknown): Refusal {
  if (err instanceof DomainError && err.code === 'UNAUTHENTICATED') return { status: 401, body: UNAUTHENTICATED_BODY };
  return { status: 403, body: FORBIDDEN_BODY };
}

function refuseRequest(res: http.ServerResponse, r: Refusal): void {
  res.writeHead(r.status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(r.body),
    'cache-control': 'no-store',
    ...(r.status === 401 ? { 'www-authenticate': 'Bearer' } : {}),
  });
  res.end(r.body);
}

function refuseUpgrade(socket: Duplex, r: Refusal): void {
  const reason = http.STATUS_CODES[r.status] ?? '';
  socket.end(
    `HTTP/1.1 ${r.status} ${reason}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(r.body)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${r.body}`,
  );
}

export class EndpointServer<P> {
  private readonly server: https.Server;
  private readonly spliced = new Set<Duplex>();

  constructor(private readonly opts: EndpointServerOptions<P>) {
    this.server = https.createServer({ ...opts.tls, minVersion: TLS_MIN_VERSION, ALPNProtocols: ['http/1.1'] });
    this.server.on('request', (req, res) => this.onRequest(req, res).catch((err) => this.failed(err, res)));
    this.server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) =>
      this.onUpgrade(req, socket, head).catch((err) => this.failed(err, socket)),
    );
    this.server.on('tlsClientError', (err) => this.opts.log?.debug({ err: err.message }, 'endpoints: TLS handshake failed'));
  }

  /** Starts listening; returns the bound address (port 0 picks one). */
  listen(port: number, host?: string): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve(this.server.address() as net.AddressInfo);
      });
    });
  }

  /** New certificate and key for new connections; open ones keep theirs. */
  setSecureContext(options: tls.SecureContextOptions): void {
    // Node's setSecureContext resets every option it is not given, so the TLS floor goes in each time.
    this.server.setSecureContext({ ...options, minVersion: TLS_MIN_VERSION });
  }

  /** Stops listening and ends every connection, proxied and upgraded. */
  close(): Promise<void> {
    for (const s of this.spliced) s.destroy();
    this.spliced.clear();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    return closed;
  }

  private failed(err: unknown, conn: http.ServerResponse | Duplex): void {
    this.opts.log?.warn({ err: (err as Error).message }, 'endpoints: request failed');
    conn.destroy();
  }

  /** Authenticates, resolves and authorizes; returns the target, or the refusal to send. */
  private async admit(req: http.IncomingMessage): Promise<{ target: EndpointTarget; found?: FoundToken } | Refusal> {
    const route = parseEndpointHost(req.headers.host, this.opts.nodeDomain);
    if (!route) return { status: 404, body: NOT_AN_ENDPOINT_BODY };
    const found = findToken(req.headers);
    try {
      // The token first: without one, nothing is looked up, so nothing can be learned.
      const principal = await this.opts.guard.authenticate(found?.token, route.workspaceId);
      const target = await this.opts.resolve(route.workspaceId, route.port);
      this.opts.guard.authorize(principal, route.workspaceId, route.port, target);
      if (!target) return { status: 403, body: FORBIDDEN_BODY }; // a guard that let "unknown" pass
      return { target, found };
    } catch (err) {
      if (!(err instanceof DomainError)) this.opts.log?.warn({ err: (err as Error).message }, 'endpoints: admission failed');
      return refusalFor(err);
    }
  }

  /** The token first, as for a port; then the terminal's own decision. */
  private async openTerminal(req: http.IncomingMessage, socket: Duplex, head: Buffer, workspaceId: string): Promise<void> {
    try {
      const principal = await this.opts.guard.authenticate(findToken(req.headers)?.token, workspaceId);
      await this.opts.terminal!.open(principal, workspaceId, req, socket, head);
    } catch (err) {
      if (!(err instanceof DomainError)) this.opts.log?.warn({ err: (err as Error).message }, 'endpoints: terminal failed');
      if (!socket.destroyed) refuseUpgrade(socket, refusalFor(err));
    }
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const admitted = await this.admit(req);
    if ('status' in admitted) return refuseRequest(res, admitted);
    const { target, found } = admitted;
    const upstream = http.request({
      host: target.host,
      port: target.port,
      method: req.method,
      path: req.url,
      headers: forwardedHeaders(req, found, false),
      agent: false, // no pooled sockets: an address may belong to another workspace tomorrow
    });
    upstream.on('response', (up) => {
      res.writeHead(up.statusCode ?? 502, up.statusMessage, responseHeaders(up));
      up.pipe(res);
    });
    upstream.on('error', (err) => {
      this.opts.log?.debug({ err: err.message }, 'endpoints: upstream failed');
      if (!res.headersSent) refuseRequest(res, { status: 502, body: 'bad gateway: the workspace did not answer\n' });
      else res.destroy();
    });
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  }

  private async onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy());
    const terminal = this.opts.terminal && parseTerminalHost(req.headers.host, this.opts.nodeDomain);
    if (terminal) return this.openTerminal(req, socket, head, terminal);
    const admitted = await this.admit(req);
    if ('status' in admitted) return refuseUpgrade(socket, admitted);
    const { target, found } = admitted;
    const upstream = net.connect(target.port, target.host);
    this.spliced.add(socket);
    this.spliced.add(upstream);
    const teardown = (): void => {
      socket.destroy();
      upstream.destroy();
      this.spliced.delete(socket);
      this.spliced.delete(upstream);
    };
    upstream.on('error', (err) => {
      this.opts.log?.debug({ err: err.message }, 'endpoints: upstream failed');
      teardown();
    });
    socket.on('close', teardown);
    upstream.on('close', teardown);
    upstream.on('connect', () => {
      upstream.write(requestHead(req, forwardedHeaders(req, found, true)));
      if (head.length > 0) upstream.write(head);
      socket.pipe(upstream);
      upstream.pipe(socket);
    });
  }
}

function requestHead(req: http.IncomingMessage, headers: http.OutgoingHttpHeaders): string {
  const lines = [`${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1`];
  for (const [name, value] of Object.entries(headers)) {
    for (const v of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${String(v)}`);
  }
  return `${lines.join('\r\n')}\r\n\r\n`;
}
