// Who is calling, and may they touch this workspace. Three parts:
//  - TokenVerifier: the control plane's user tokens (JWT, EdDSA/Ed25519, verified with jose) checked against
//    its public key, with a bounded lifetime;
//  - authorizeWorkspaceAccess: the one decision point for every user-facing workspace action;
//  - createAuthInterceptor / principalOf: the gRPC side, one interceptor per listening port, and
//    createEndpointGuard: the same checks for the workspace endpoint server.
// Every decision is written to the audit log. See docs/security-transport.md.
import * as grpc from '@grpc/grpc-js';
import crypto from 'node:crypto';
import { errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyOptions } from 'jose';
import { DomainError } from '../errors';
import type { AuditLog } from './audit';
import type { OperatorIdentity } from '../crypto/pki';
import { DEFAULT_OPERATOR_IDENTITY, operatorNameOf, parseOperatorIdentity, peerIdentityOf, type PeerVerdict } from './tls';
import type { PeerCertificate } from 'node:tls';

export type Principal =
  | { readonly kind: 'user'; readonly userId: string; readonly teams: readonly string[] }
  | { readonly kind: 'operator'; readonly name: string };

export function describePrincipal(p: Principal | undefined): string {
  if (!p) return 'anonymous';
  return p.kind === 'user' ? `user:${p.userId}` : `operator:${p.name}`;
}

// ---------------------------------------------------------------------------------------------------------
// Tokens

export const DEFAULT_CLOCK_SKEW_SECONDS = 30;
/** The longest a token may live (exp - iat) unless configured otherwise: the control plane's are short. */
export const DEFAULT_TOKEN_LIFETIME_SECONDS = 3600;
const MAX_TOKEN_BYTES = 8192;
const MAX_ID_LENGTH = 256;

export interface TokenVerifierOptions {
  /** The control plane's Ed25519 public key(s), PEM (SPKI). Several during a key rotation. */
  readonly publicKeys: string | readonly string[];
  /** This node's id: a token's `aud` must name it. */
  readonly audience: string;
  /** Tolerance for clocks that disagree, applied to exp, nbf and iat. Default 30 s. */
  readonly clockSkewSeconds?: number;
  /** The longest lifetime (exp - iat) a token may claim. Default 1 h. */
  readonly maxLifetimeSeconds?: number;
  /** For tests: the current time in ms. */
  readonly now?: () => number;
}

export type UserPrincipal = Principal & { kind: 'user' };

const unauthenticated = (why: string): DomainError => new DomainError('UNAUTHENTICATED', `token: ${why}`);

// Strict base64url: decoders are lenient (skip bad characters, accept padding), so decode and re-encode
// and insist on the same text, so one token has exactly one spelling.
function decodeSegment(segment: string, what: string): Buffer {
  const bytes = Buffer.from(segment, 'base64url');
  if (bytes.toString('base64url') !== segment) throw unauthenticated(`malformed ${what}`);
  return bytes;
}

function parseJsonObject(bytes: Buffer, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw unauthenticated(`malformed ${what}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw unauthenticated(`malformed ${what}`);
  return value as Record<string, unknown>;
}

const isId = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= MAX_ID_LENGTH;

// jose's refusals, in words that name the claim (never jose's message: it may quote the payload).
const CLAIM_REFUSALS: Record<string, string> = {
  'aud:missing': 'not for this node (aud)',
  'aud:check_failed': 'not for this node (aud)',
  'exp:missing': 'missing expiry (exp)',
  'exp:check_failed': 'expired (exp)',
  'iat:missing': 'missing issued-at (iat)',
  'nbf:check_failed': 'not yet valid (nbf)',
  'sub:missing': 'missing subject (sub)',
};

function refusalOf(err: unknown): DomainError {
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return unauthenticated('algorithm not accepted');
  if (err instanceof joseErrors.JWTClaimValidationFailed || err instanceof joseErrors.JWTExpired) {
    return unauthenticated(CLAIM_REFUSALS[`${err.claim}:${err.reason}`] ?? `malformed ${err.claim}`);
  }
  if (err instanceof joseErrors.JWTInvalid) return unauthenticated('malformed payload');
  return unauthenticated('malformed token');
}

function positiveSeconds(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new DomainError('INVALID_ARGUMENT', `tokens: ${name} must be a positive whole number of seconds`);
  }
  return value;
}

/**
 * Verifies the control plane's user tokens: compact JWS, `alg: EdDSA` (Ed25519) only, with `exp` and
 * `iat` required and a bounded lifetime. The signature and the registered claims are checked by jose
 * (a maintained JOSE implementation); the strict spelling and header rules and the lifetime bound here.
 */
export class TokenVerifier {
  private readonly keys: crypto.KeyObject[];
  private readonly skewSeconds: number;
  private readonly maxLifetimeSeconds: number;
  private readonly now: () => number;

  constructor(private readonly opts: TokenVerifierOptions) {
    const pems = typeof opts.publicKeys === 'string' ? [opts.publicKeys] : [...opts.publicKeys];
    if (pems.length === 0) throw new DomainError('INVALID_ARGUMENT', 'tokens: no public key configured');
    this.keys = pems.map((pem) => {
      const key = crypto.createPublicKey(pem);
      if (key.asymmetricKeyType !== 'ed25519') {
        throw new DomainError('INVALID_ARGUMENT', 'tokens: the public key must be Ed25519');
      }
      return key;
    });
    if (!opts.audience) throw new DomainError('INVALID_ARGUMENT', 'tokens: audience (node id) is empty');
    this.skewSeconds = opts.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS;
    this.maxLifetimeSeconds = positiveSeconds(opts.maxLifetimeSeconds ?? DEFAULT_TOKEN_LIFETIME_SECONDS, 'maxLifetimeSeconds');
    this.now = opts.now ?? Date.now;
  }

  /** The user a token speaks for; rejects with DomainError UNAUTHENTICATED saying why not. */
  async verify(token: string): Promise<UserPrincipal> {
    this.checkSpelling(token);
    // The signature is checked (by jose, before any claim) with each key of a rotation in turn.
    for (const key of this.keys) {
      let claims: JWTPayload;
      try {
        claims = (await jwtVerify(token, key, this.joseOptions())).payload;
      } catch (err) {
        if (err instanceof joseErrors.JWSSignatureVerificationFailed) continue;
        throw refusalOf(err);
      }
      return this.checkClaims(claims);
    }
    throw unauthenticated('bad signature');
  }

  /** What jose does not insist on: one spelling per token, a plain header. */
  private checkSpelling(token: string): void {
    if (typeof token !== 'string' || token.length === 0) throw unauthenticated('missing');
    if (token.length > MAX_TOKEN_BYTES) throw unauthenticated('too long');
    const parts = token.split('.');
    if (parts.length !== 3) throw unauthenticated('not a compact JWS');
    const [h, p, s] = parts as [string, string, string];
    const header = parseJsonObject(decodeSegment(h, 'header'), 'header');
    decodeSegment(p, 'payload');
    decodeSegment(s, 'signature');
    // Only EdDSA: refuses 'none' and the HS256-with-the-public-key confusion (jose's `algorithms` too).
    if (header.alg !== 'EdDSA') throw unauthenticated('algorithm not accepted');
    if (header.typ !== undefined && header.typ !== 'JWT') throw unauthenticated('not a JWT');
    // No extensions at all: jose would honour `b64: false` (RFC 7797) on a plain JWS.
    if (header.crit !== undefined) throw unauthenticated('critical header extensions not supported');
  }

  private joseOptions(): JWTVerifyOptions {
    return {
      algorithms: ['EdDSA'],
      audience: this.opts.audience,
      requiredClaims: ['exp', 'iat', 'sub'],
      clockTolerance: this.skewSeconds,
      currentDate: new Date(this.now()),
    };
  }

  private checkClaims(c: JWTPayload): UserPrincipal {
    // jose has checked exp, nbf and aud, and that iat is a number; it lets any lifetime and a future iat pass.
    const iat = c.iat as number;
    const exp = c.exp as number;
    if (iat * 1000 > this.now() + this.skewSeconds * 1000) throw unauthenticated('issued in the future (iat)');
    if (exp - iat > this.maxLifetimeSeconds) {
      throw unauthenticated(`lifetime exp - iat is over the ${this.maxLifetimeSeconds} s bound`);
    }
    if (!isId(c.sub)) throw unauthenticated('missing subject (sub)');
    const teams: unknown = c.teams;
    if (!Array.isArray(teams) || !teams.every(isId)) throw unauthenticated('teams must be a list of ids');
    return { kind: 'user', userId: c.sub, teams: teams as string[] };
  }
}

// ---------------------------------------------------------------------------------------------------------
// The decision

export type WorkspaceAction = 'endpoint' | 'logs' | 'exec' | 'manage' | 'restore';

/** What the decision needs to know about a workspace; a WorkspaceSpec fits. */
export interface WorkspaceOwnership {
  readonly ownerId: string;
  readonly teamId: string;
  readonly kind: 'REGULAR' | 'PREBUILD';
}

export interface WorkspaceAccessTarget {
  readonly id: string;                                // as the caller asked for it
  readonly record: WorkspaceOwnership | undefined;    // undefined: no such workspace
}

export type AccessDecision =
  | { readonly allow: true; readonly reason: string }
  | { readonly allow: false; readonly code: 'UNAUTHENTICATED' | 'PERMISSION_DENIED'; readonly reason: string };

/** The rule, without side effects: operators may do anything; users only on their own workspaces, except
 *  that every member of a prebuild's team may read its logs and restore its backups (its snapshot). */
export function decideWorkspaceAccess(
  principal: Principal | undefined,
  record: WorkspaceOwnership | undefined,
  action: WorkspaceAction,
): AccessDecision {
  if (!principal) return { allow: false, code: 'UNAUTHENTICATED', reason: 'no credentials' };
  if (principal.kind === 'operator') return { allow: true, reason: 'node operator' };
  if (!record) return { allow: false, code: 'PERMISSION_DENIED', reason: 'no such workspace' };
  if (record.ownerId === principal.userId) return { allow: true, reason: 'owner' };
  if ((action === 'logs' || action === 'restore') && record.kind === 'PREBUILD' && record.teamId !== '' && principal.teams.includes(record.teamId)) {
    return { allow: true, reason: 'member of the prebuild team' };
  }
  return { allow: false, code: 'PERMISSION_DENIED', reason: 'not the owner' };
}

// One message for "no such workspace" and "not yours", so a denial never tells whether it exists.
export const WORKSPACE_PERMISSION_DENIED = 'workspace: permission denied';

/**
 * THE authorization decision point for user-facing workspace actions. Returns if allowed; otherwise
 * throws DomainError UNAUTHENTICATED (no principal) or PERMISSION_DENIED (same error whether the workspace
 * is unknown or someone else's). Records an audit event either way.
 */
export function authorizeWorkspaceAccess(
  principal: Principal | undefined,
  workspace: WorkspaceAccessTarget,
  action: WorkspaceAction,
  audit: AuditLog,
): void {
  const d = decideWorkspaceAccess(principal, workspace.record, action);
  audit.record({
    who: describePrincipal(principal),
    action,
    workspace: workspace.id,
    decision: d.allow ? 'allow' : 'deny',
    reason: d.reason,
    via: 'grpc',
  });
  if (d.allow) return;
  throw d.code === 'UNAUTHENTICATED'
    ? new DomainError('UNAUTHENTICATED', 'credentials required')
    : new DomainError('PERMISSION_DENIED', WORKSPACE_PERMISSION_DENIED);
}

/**
 * A snapshot (sn-...) lives in its owner's repository (a prebuild's: its team's), and restores only into a
 * workspace of that owner (of that team), operators included: one owner's files never land in a workspace
 * whose backups go to someone else's repository. Full backups keep the rule before snapshots (operators vouch).
 */
function restoreDecision(
  principal: Principal | undefined,
  backup: { readonly id: string; readonly binding: WorkspaceOwnership | undefined },
  target: WorkspaceOwnership | undefined,
): AccessDecision {
  const d = decideWorkspaceAccess(principal, backup.binding, 'restore');
  const b = backup.binding;
  if (!d.allow || !target || !b || !backup.id.startsWith('sn-')) return d;
  const intoTeam = b.kind === 'PREBUILD' && b.teamId !== '' && target.teamId === b.teamId;
  if (target.ownerId === b.ownerId || intoTeam) return d;
  return { allow: false, code: 'PERMISSION_DENIED', reason: 'a snapshot restores only into a workspace of its owner (a prebuild\'s: of its team)' };
}

// One message for "no such backup" and "not yours": a refusal never tells whether a backup id exists.
export const RESTORE_PERMISSION_DENIED = 'restore_from: permission denied';

/**
 * May the caller restore this backup (restore_from)? The workspace rule, action 'restore', applied to the
 * workspace the backup recorded. binding undefined (no such backup, an unreadable one, or one from before
 * backups recorded their workspace): operators only. Audited either way.
 */
export function authorizeRestore(
  principal: Principal | undefined,
  backup: { readonly id: string; readonly binding: (WorkspaceOwnership & { readonly workspaceId: string }) | undefined },
  audit: AuditLog,
  target?: WorkspaceOwnership,
): void {
  const d = restoreDecision(principal, backup, target);
  audit.record({
    who: describePrincipal(principal),
    action: 'restore',
    backup: backup.id,
    ...(backup.binding ? { workspace: backup.binding.workspaceId } : {}),
    decision: d.allow ? 'allow' : 'deny',
    reason: !backup.binding && !d.allow && d.code === 'PERMISSION_DENIED' ? 'no such backup, or one that records no owner' : d.reason,
    via: 'grpc',
  });
  if (d.allow) return;
  throw d.code === 'UNAUTHENTICATED'
    ? new DomainError('UNAUTHENTICATED', 'credentials required')
    : new DomainError('PERMISSION_DENIED', RESTORE_PERMISSION_DENIED);
}

// One message for "no such backup" and "not yours" on DeleteBackup, as for restores.
export const BACKUP_PERMISSION_DENIED = 'backup_id: permission denied';

/**
 * The backup rules (BackupService): a caller sees in ListBackups the backups it may restore; it may delete
 * those of workspaces it could manage (its own; operators any, a prebuild's team members none); prune and
 * check are for operators. Deletes, prunes and checks are audited; listing filters and is not.
 */
export function mayListBackup(principal: Principal | undefined, binding: (WorkspaceOwnership & { readonly workspaceId: string }) | undefined): boolean {
  return decideWorkspaceAccess(principal, binding, 'restore').allow;
}

export function authorizeBackupAction(
  principal: Principal | undefined,
  backup: { readonly id: string; readonly binding: (WorkspaceOwnership & { readonly workspaceId: string }) | undefined },
  action: 'delete-backup' | 'prune-backups' | 'check-backups',
  audit: AuditLog,
): void {
  const d = action === 'delete-backup'
    ? decideWorkspaceAccess(principal, backup.binding, 'manage')
    : principal?.kind === 'operator' ? decideWorkspaceAccess(principal, undefined, 'manage')
      : { allow: false as const, code: principal ? 'PERMISSION_DENIED' as const : 'UNAUTHENTICATED' as const, reason: principal ? 'node operators only' : 'no credentials' };
  audit.record({
    who: describePrincipal(principal), action, ...(backup.id ? { backup: backup.id } : {}),
    ...(backup.binding ? { workspace: backup.binding.workspaceId } : {}),
    decision: d.allow ? 'allow' : 'deny', reason: d.reason, via: 'grpc',
  });
  if (d.allow) return;
  if (d.code === 'UNAUTHENTICATED') throw new DomainError('UNAUTHENTICATED', 'credentials required');
  throw new DomainError('PERMISSION_DENIED', action === 'delete-backup' ? BACKUP_PERMISSION_DENIED : `${action}: node operators only`);
}

// ---------------------------------------------------------------------------------------------------------
// Images (ImageService, docs/images.md)

export type ImageAction = 'pull' | 'list' | 'remove';

/** Operators may do anything. A user may pull: a StartWorkspace naming a reference pulls it anyway, and the
 *  store's GC bounds what pulls cost. Listing (references may name other teams' images) and removing are
 *  the operators'. */
export function decideImageAccess(principal: Principal | undefined, action: ImageAction): AccessDecision {
  if (!principal) return { allow: false, code: 'UNAUTHENTICATED', reason: 'no credentials' };
  if (principal.kind === 'operator') return { allow: true, reason: 'node operator' };
  if (action === 'pull') return { allow: true, reason: 'users may pull' };
  return { allow: false, code: 'PERMISSION_DENIED', reason: 'node operators only' };
}

export function authorizeImageAccess(principal: Principal | undefined, action: ImageAction, image: string, audit: AuditLog): void {
  const d = decideImageAccess(principal, action);
  audit.record({ who: describePrincipal(principal), action: `image.${action}`, ...(image ? { image } : {}), decision: d.allow ? 'allow' : 'deny', reason: d.reason, via: 'grpc' });
  if (d.allow) return;
  throw d.code === 'UNAUTHENTICATED' ? new DomainError('UNAUTHENTICATED', 'credentials required') : new DomainError('PERMISSION_DENIED', `image: ${action}: node operators only`);
}

/** --user-registries: the registries a user may name in an image (empty: any). Operators may name any. */
export function decideImageRegistry(principal: Principal | undefined, registry: string, allowed: readonly string[]): AccessDecision {
  if (!principal) return { allow: false, code: 'UNAUTHENTICATED', reason: 'no credentials' };
  if (principal.kind === 'operator' || allowed.length === 0) return { allow: true, reason: principal.kind === 'operator' ? 'node operator' : 'any registry' };
  if (allowed.includes(registry)) return { allow: true, reason: 'an allowed registry' };
  return { allow: false, code: 'PERMISSION_DENIED', reason: `registry ${registry} is not in --user-registries` };
}

export function authorizeImageRegistry(principal: Principal | undefined, image: string, registry: string, allowed: readonly string[], audit: AuditLog): void {
  const d = decideImageRegistry(principal, registry, allowed);
  if (d.allow && allowed.length === 0) return; // nothing decided: no audit line per start
  audit.record({ who: describePrincipal(principal), action: 'image.registry', image, decision: d.allow ? 'allow' : 'deny', reason: d.reason, via: 'grpc' });
  if (d.allow) return;
  throw d.code === 'UNAUTHENTICATED' ? new DomainError('UNAUTHENTICATED', 'credentials required') : new DomainError('PERMISSION_DENIED', `image: users may not pull from ${registry} on this node`);
}

// ---------------------------------------------------------------------------------------------------------
// gRPC: one interceptor per port

type AuthContext = ReturnType<grpc.ServerInterceptingCallInterface['getAuthContext']>;

export interface AuthInterceptorOptions {
  /** Which port this interceptor guards. 'unix-socket' callers without a token are the local operator. */
  readonly transport: 'unix-socket' | 'mtls';
  readonly tokens: Pick<TokenVerifier, 'verify'>;
  readonly audit: AuditLog;
  /** For 'mtls': the credentials' allow/deny check (MtlsServerCredentials.checkPeer). */
  readonly checkPeer?: (cert: PeerCertificate | undefined) => PeerVerdict;
  /** Client-certificate names that act as node operators, each with its SAN type (`dns:NAME`, `uri:URI`).
   *  Default ['dns:tetrix-admin'], which the generated admin certificate carries. */
  readonly operatorIdentities?: readonly string[];
  /** Method path prefixes callable without a principal (the mTLS allow/deny check still applies).
   *  Default: the standard health service, so probes need a client certificate but no token. */
  readonly anonymousMethods?: readonly string[];
}

export const DEFAULT_ANONYMOUS_METHODS: readonly string[] = ['/grpc.health.v1.Health/'];

// Principals travel from the interceptor to the handler through the auth context object grpc-js hands
// out (getAuthContext is delegated down the interceptor chain). A module-private WeakMap keyed by that
// object cannot be forged by anything a client sends, unlike a metadata entry.
const principals = new WeakMap<AuthContext, Principal>();

class AuthenticatedCall extends grpc.ServerInterceptingCall {
  principal: Principal | undefined;
  /** The transport's context, read once: grpc-js reaches it through the session's socket proxy. */
  transport: AuthContext | undefined;

  override getAuthContext(): AuthContext {
    const ctx = { ...(this.transport ?? super.getAuthContext()) };
    if (this.principal) principals.set(ctx, this.principal);
    return ctx;
  }
}

function bearerToken(metadata: grpc.Metadata): string | undefined {
  const values = metadata.get('authorization');
  if (values.length === 0) return undefined;
  if (values.length > 1) throw unauthenticated('more than one authorization header');
  const m = /^Bearer ([^\s]+)$/i.exec(String(values[0]));
  if (!m) throw unauthenticated('authorization must be "Bearer <token>"');
  return m[1];
}

async function resolvePrincipal(opts: AuthInterceptorOptions, operators: readonly OperatorIdentity[], metadata: grpc.Metadata, ctx: AuthContext, anonymousOk: boolean): Promise<Principal | undefined> {
  let operatorName: string | undefined;
  if (opts.transport === 'mtls') {
    const verdict: PeerVerdict = opts.checkPeer
      ? opts.checkPeer(ctx.sslPeerCertificate)
      : { ok: false, reason: 'no peer check configured' };
    if (!verdict.ok) throw new DomainError('UNAUTHENTICATED', verdict.reason);
    operatorName = operatorNameOf(verdict.identity, operators);
  } else {
    operatorName = 'local';
  }
  const token = bearerToken(metadata);
  if (token !== undefined) return opts.tokens.verify(token);
  if (operatorName !== undefined) return { kind: 'operator', name: operatorName };
  if (anonymousOk) return undefined;
  throw new DomainError('UNAUTHENTICATED', 'a user token is required');
}

function peerName(ctx: AuthContext): string {
  return ctx.sslPeerCertificate ? peerIdentityOf(ctx.sslPeerCertificate).name : '';
}

/**
 * A grpc-js server interceptor for one port: on the mTLS port it applies the client-identity allow/deny
 * lists, then every call resolves to a Principal (a verified user token wins; else the local operator on
 * the unix socket or an operator identity's certificate on mTLS) or is refused UNAUTHENTICATED before
 * the handler runs, except methods listed in anonymousMethods. Handlers read it with principalOf(call).
 */
export function createAuthInterceptor(opts: AuthInterceptorOptions): grpc.ServerInterceptor {
  if (opts.transport === 'mtls' && !opts.checkPeer) {
    throw new DomainError('INVALID_ARGUMENT', 'auth: the mTLS interceptor needs checkPeer');
  }
  const anonymous = opts.anonymousMethods ?? DEFAULT_ANONYMOUS_METHODS;
  const operators = (opts.operatorIdentities ?? [DEFAULT_OPERATOR_IDENTITY]).map(parseOperatorIdentity);
  return (method, next) => {
    const anonymousOk = anonymous.some((prefix) => method.path.startsWith(prefix));
    const call: AuthenticatedCall = new AuthenticatedCall(next, {
      start: (startNext) =>
        startNext({
          // Asynchronous (token verification is): grpc-js holds messages back until metadataNext.
          onReceiveMetadata: (metadata, metadataNext) => {
            const ctx = (call.transport = next.getAuthContext());
            resolvePrincipal(opts, operators, metadata, ctx, anonymousOk).then(
              (principal) => {
                call.principal = principal;
                metadataNext(metadata);
              },
              (err: unknown) => {
                const reason = err instanceof DomainError ? err.message : 'authentication failed';
                const peer = peerName(ctx);
                opts.audit.record({
                  who: peer ? `peer:${peer}` : 'anonymous',
                  action: method.path,
                  decision: 'deny',
                  reason,
                  via: 'grpc',
                });
                // On the inner call: this call is still processing metadata and would hold the status back.
                next.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: reason });
              },
            );
          },
        }),
    });
    return call;
  };
}

/** The principal the auth interceptor resolved for this call, if any. */
export function callerOf(call: { getAuthContext(): AuthContext }): Principal | undefined {
  return principals.get(call.getAuthContext());
}

/** Like callerOf, but a call that did not pass the interceptor is UNAUTHENTICATED. */
export function principalOf(call: { getAuthContext(): AuthContext }): Principal {
  const p = callerOf(call);
  if (!p) throw new DomainError('UNAUTHENTICATED', 'credentials required');
  return p;
}

// ---------------------------------------------------------------------------------------------------------
// Workspace endpoints (src/network/endpoints.ts calls these through its EndpointGuard interface)

export interface EndpointRouteFacts {
  readonly ownerId: string;
  readonly running: boolean;
}

export interface EndpointAccessGuard {
  authenticate(token: string | undefined, workspaceId: string): Promise<Principal>;
  authorize(principal: Principal, workspaceId: string, port: number, route: EndpointRouteFacts | undefined): void;
}

/** Token check and owner check for the endpoint server, audited with via: 'endpoint'. */
export function createEndpointGuard(tokens: Pick<TokenVerifier, 'verify'>, audit: AuditLog): EndpointAccessGuard {
  const endpointAudit: AuditLog = { record: (e) => audit.record({ ...e, via: 'endpoint' }) };
  return {
    async authenticate(token, workspaceId) {
      try {
        if (token === undefined) throw unauthenticated('missing');
        return await tokens.verify(token);
      } catch (err) {
        const reason = err instanceof DomainError ? err.message : 'authentication failed';
        endpointAudit.record({ who: 'anonymous', action: 'endpoint', workspace: workspaceId, decision: 'deny', reason });
        throw err;
      }
    },
    authorize(principal, workspaceId, _port, route) {
      if (route && !route.running) {
        // A stopped workspace has no route; to the caller this looks exactly like an unknown one.
        endpointAudit.record({
          who: describePrincipal(principal),
          action: 'endpoint',
          workspace: workspaceId,
          decision: 'deny',
          reason: 'workspace not running',
        });
        throw new DomainError('PERMISSION_DENIED', WORKSPACE_PERMISSION_DENIED);
      }
      const record = route ? { ownerId: route.ownerId, teamId: '', kind: 'REGULAR' as const } : undefined;
      authorizeWorkspaceAccess(principal, { id: workspaceId, record }, 'endpoint', endpointAudit);
    },
  };
}
