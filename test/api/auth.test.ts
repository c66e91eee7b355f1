// User tokens, the workspace access rule, and both gRPC ports (unix socket and mTLS) deciding who calls,
// tried with a real grpc-js server and real clients. Every decision must show up in the audit log,
// and no token ever may.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { HealthImplementation, service as healthService } from 'grpc-health-check';
import {
  DEFAULT_CLOCK_SKEW_SECONDS,
  DEFAULT_TOKEN_LIFETIME_SECONDS,
  TokenVerifier,
  WORKSPACE_PERMISSION_DENIED,
  authorizeWorkspaceAccess,
  createAuthInterceptor,
  describePrincipal,
  principalOf,
  type Principal,
  type WorkspaceAction,
  type WorkspaceOwnership,
} from '../../src/api/auth';
import { createAuditLog } from '../../src/api/audit';
import { ensureNodePki, issueCertificate } from '../../src/crypto/pki';
import { MtlsServerCredentials, createClientCredentials } from '../../src/api/tls';
import { DomainError } from '../../src/errors';

const NODE = 'tetrix-node-auth-test';
const controlPlane = crypto.generateKeyPairSync('ed25519');
const publicPem = controlPlane.publicKey.export({ type: 'spki', format: 'pem' }).toString();
const NOW = Date.UTC(2030, 0, 1) ; // a fixed clock: token times are relative to it
const sec = (ms: number): number => Math.floor(ms / 1000);

function b64u(v: unknown): string {
  return Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
}

function sign(claims: Record<string, unknown>, header: Record<string, unknown> = { alg: 'EdDSA', typ: 'JWT' }, key = controlPlane.privateKey): string {
  const signingInput = `${b64u(header)}.${b64u(claims)}`;
  return `${signingInput}.${crypto.sign(null, Buffer.from(signingInput), key).toString('base64url')}`;
}

const claimsFor = (sub: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  sub,
  teams: ['team-blue'],
  aud: NODE,
  iat: sec(NOW) - 10,
  nbf: sec(NOW) - 10,
  exp: sec(NOW) + 300,
  ...extra,
});

const verifier = new TokenVerifier({ publicKeys: publicPem, audience: NODE, now: () => NOW });

// Audit lines as the operator would see them.
function capturedAudit(): { lines: () => Record<string, unknown>[]; raw: string[]; audit: ReturnType<typeof createAuditLog> } {
  const raw: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      raw.push(String(chunk));
      done();
    },
  });
  const audit = createAuditLog(pino({ level: 'info' }, sink));
  return {
    raw,
    audit,
    lines: () => raw.map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

function refusal(fn: () => unknown): { code?: string; message?: string } {
  try {
    fn();
  } catch (err) {
    if (err instanceof DomainError) return { code: err.code, message: err.message };
    throw err;
  }
  return {};
}

/** Token verification is asynchronous (jose): the same, awaited. */
async function tokenRefusal(fn: () => unknown): Promise<{ code?: string; message?: string }> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof DomainError) return { code: err.code, message: err.message };
    throw err;
  }
  return {};
}

t.test('user tokens', async (t) => {
  const alice = sign(claimsFor('alice'));
  t.same(await verifier.verify(alice), { kind: 'user', userId: 'alice', teams: ['team-blue'] }, 'a good token names its user and teams');
  t.same((await verifier.verify(sign(claimsFor('alice', { aud: ['other-node', NODE] })))).userId, 'alice', 'aud may be a list naming this node');

  const skew = DEFAULT_CLOCK_SKEW_SECONDS;
  t.equal(skew, 30, 'the documented clock skew is 30 s');
  t.equal((await verifier.verify(sign(claimsFor('alice', { exp: sec(NOW) - skew + 2 })))).userId, 'alice', 'expired by less than the skew: accepted');
  t.equal((await verifier.verify(sign(claimsFor('alice', { nbf: sec(NOW) + skew - 2 })))).userId, 'alice', 'valid a little in the future: accepted');

  const hmac = (() => {
    const header = b64u({ alg: 'HS256', typ: 'JWT' });
    const body = b64u(claimsFor('alice'));
    const mac = crypto.createHmac('sha256', publicPem).update(`${header}.${body}`).digest('base64url');
    return `${header}.${body}.${mac}`;
  })();
  const otherKey = crypto.generateKeyPairSync('ed25519').privateKey;
  const [h, p, s] = alice.split('.') as [string, string, string];
  const tamperedPayload = `${h}.${b64u({ ...claimsFor('alice'), sub: 'mallory' })}.${s}`;
  const cases: [string, string, RegExp][] = [
    ['alg none', `${b64u({ alg: 'none' })}.${b64u(claimsFor('alice'))}.`, /algorithm/],
    ['alg HS256 keyed with the public key', hmac, /algorithm/],
    ['alg ES256', sign(claimsFor('alice'), { alg: 'ES256' }), /algorithm/],
    ['a crit header', sign(claimsFor('alice'), { alg: 'EdDSA', crit: ['b64'], b64: false }), /critical/],
    ['another node as audience', sign(claimsFor('alice', { aud: 'tetrix-node-other' })), /not for this node/],
    ['no audience', sign(claimsFor('alice', { aud: undefined })), /not for this node/],
    ['expired beyond the skew', sign(claimsFor('alice', { exp: sec(NOW) - skew - 2 })), /expired/],
    ['not yet valid', sign(claimsFor('alice', { nbf: sec(NOW) + skew + 60 })), /not yet valid/],
    ['issued in the future', sign(claimsFor('alice', { iat: sec(NOW) + skew + 60 })), /future/],
    ['no expiry', sign(claimsFor('alice', { exp: undefined })), /expiry/],
    ['signed by another key', sign(claimsFor('alice'), undefined, otherKey), /bad signature/],
    ['a payload changed after signing', tamperedPayload, /bad signature/],
    ['a truncated signature', `${h}.${p}.${s.slice(0, 40)}`, /bad signature/],
    ['no subject', sign(claimsFor('', {})), /subject/],
    ['teams not a list', sign(claimsFor('alice', { teams: 'team-blue' })), /teams/],
    ['two segments', `${h}.${p}`, /compact JWS/],
    ['padding in base64url', `${h}=.${p}.${s}`, /malformed header/],
    ['a header that is not JSON', `${b64u('{alg:')}.${p}.${s}`, /malformed header/],
    ['a payload that is a JSON array', sign([] as unknown as Record<string, unknown>), /malformed payload/],
    ['8 KiB of garbage', 'a'.repeat(9000), /too long/],
    ['empty', '', /missing/],
    // Issue 13, item 11: a token's lifetime is bounded, and it must say when it was issued.
    ['an expiry of 1e300', sign(claimsFor('alice', { exp: 1e300 })), /lifetime.*exp - iat/],
    ['no issued-at', sign(claimsFor('alice', { iat: undefined })), /iat/],
    ['no issued-at and an expiry of 1e300', sign(claimsFor('alice', { iat: undefined, exp: 1e300 })), /iat/],
    ['an issued-at that is not a number', sign(claimsFor('alice', { iat: '2030-01-01' })), /iat/],
    ['issued in the future beyond the skew (iat)', sign(claimsFor('alice', { iat: sec(NOW) + skew + 5 })), /iat/],
    ['a lifetime (exp - iat) of 1 h + 1 s', sign(claimsFor('alice', { iat: sec(NOW) - 10, exp: sec(NOW) - 10 + 3601 })), /lifetime.*exp - iat/],
  ];
  for (const [what, token, why] of cases) {
    t.match(await tokenRefusal(() => verifier.verify(token)), { code: 'UNAUTHENTICATED', message: why }, `refused: ${what}`);
  }
  t.equal(DEFAULT_TOKEN_LIFETIME_SECONDS, 3600, 'the default lifetime bound is one hour');
  t.equal((await verifier.verify(sign(claimsFor('alice', { iat: sec(NOW) - 10, exp: sec(NOW) - 10 + 3600 })))).userId, 'alice', 'a lifetime of exactly the bound is accepted');
  t.equal((await verifier.verify(sign(claimsFor('alice', { iat: sec(NOW) + skew - 2 })))).userId, 'alice', 'issued a little in the future (within the skew): accepted');
  const tenMinutes = new TokenVerifier({ publicKeys: publicPem, audience: NODE, now: () => NOW, maxLifetimeSeconds: 600 });
  t.match(await tokenRefusal(() => tenMinutes.verify(sign(claimsFor('alice', { exp: sec(NOW) - 10 + 601 })))), { code: 'UNAUTHENTICATED', message: /lifetime.*exp - iat.*600/ }, 'the bound is configurable: 601 s over a 600 s bound is refused');
  t.equal((await tenMinutes.verify(sign(claimsFor('alice', { exp: sec(NOW) - 10 + 600 })))).userId, 'alice', 'and 600 s is accepted');
  for (const bad of [0, -1, 1.5, Number.NaN]) {
    t.throws(() => new TokenVerifier({ publicKeys: publicPem, audience: NODE, maxLifetimeSeconds: bad }), /maxLifetimeSeconds/, `a lifetime bound of ${bad} is refused`);
  }
  t.throws(() => new TokenVerifier({ publicKeys: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString(), audience: NODE }), /Ed25519/, 'only an Ed25519 key is accepted as the control plane key');

  const rotated = crypto.generateKeyPairSync('ed25519');
  const both = new TokenVerifier({ publicKeys: [publicPem, rotated.publicKey.export({ type: 'spki', format: 'pem' }).toString()], audience: NODE, now: () => NOW });
  t.equal((await both.verify(sign(claimsFor('alice'), undefined, rotated.privateKey))).userId, 'alice', 'during a key rotation either key verifies');
});

const workspaces = new Map<string, WorkspaceOwnership>([
  ['ws-alice', { ownerId: 'alice', teamId: 'team-blue', kind: 'REGULAR' }],
  ['pb-alice', { ownerId: 'alice', teamId: 'team-blue', kind: 'PREBUILD' }],
]);
const alice: Principal = { kind: 'user', userId: 'alice', teams: ['team-blue'] };
const bob: Principal = { kind: 'user', userId: 'bob', teams: ['team-blue'] };
const eve: Principal = { kind: 'user', userId: 'eve', teams: ['team-red'] };
const operator: Principal = { kind: 'operator', name: 'local' };
const ACTIONS: WorkspaceAction[] = ['endpoint', 'logs', 'exec', 'manage'];

t.test('the access rule: owner only, team members read prebuild logs, existence never revealed', async (t) => {
  const { audit, lines } = capturedAudit();
  const decide = (p: Principal | undefined, id: string, action: WorkspaceAction) =>
    refusal(() => authorizeWorkspaceAccess(p, { id, record: workspaces.get(id) }, action, audit));

  for (const action of ACTIONS) {
    t.same(decide(alice, 'ws-alice', action), {}, `the owner may ${action}`);
    t.same(decide(operator, 'ws-alice', action), {}, `the node operator may ${action}`);
    t.same(decide(eve, 'ws-alice', action), { code: 'PERMISSION_DENIED', message: WORKSPACE_PERMISSION_DENIED }, `an outsider may not ${action}`);
    t.same(decide(bob, 'ws-alice', action), { code: 'PERMISSION_DENIED', message: WORKSPACE_PERMISSION_DENIED }, `a team member may not ${action} a regular workspace`);
    t.same(decide(alice, 'ws-nobody', action), decide(eve, 'ws-alice', action), `${action} on an unknown workspace is refused exactly like a foreign one`);
    t.same(decide(undefined, 'ws-alice', action), { code: 'UNAUTHENTICATED', message: 'credentials required' }, `${action} without credentials is UNAUTHENTICATED`);
  }
  t.same(decide(bob, 'pb-alice', 'logs'), {}, 'a member of the prebuild team reads its logs');
  t.same(decide(eve, 'pb-alice', 'logs'), { code: 'PERMISSION_DENIED', message: WORKSPACE_PERMISSION_DENIED }, 'someone outside the team does not');
  for (const action of ['endpoint', 'exec', 'manage'] as const) {
    t.equal(decide(bob, 'pb-alice', action).code, 'PERMISSION_DENIED', `a team member may not ${action} the prebuild`);
  }

  const events = lines();
  t.equal(events.length, ACTIONS.length * 7 + 5, 'every decision is audited');
  t.match(events[0], { audit: true, component: 'audit', who: 'user:alice', action: 'endpoint', workspace: 'ws-alice', decision: 'allow', reason: 'owner' });
  t.ok(events.some((e) => e.who === 'user:eve' && e.decision === 'deny' && e.reason === 'not the owner'), 'a denial says why');
  t.ok(events.some((e) => e.workspace === 'ws-nobody' && e.decision === 'deny' && e.reason === 'no such workspace'), 'the audit log (not the caller) learns the workspace is unknown');
  t.ok(events.some((e) => e.who === 'user:bob' && e.decision === 'allow' && e.reason === 'member of the prebuild team'));
});

// ---------------------------------------------------------------------------------------------------------
// Both ports of a real server

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-auth-${process.pid}-`));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface ProbeRequest {
  id: string;
  action: WorkspaceAction;
}
const json = {
  serialize: (v: unknown): Buffer => Buffer.from(JSON.stringify(v)),
  deserialize: (b: Buffer): any => JSON.parse(b.toString()),
};
// A minimal service: one unary and one server-streaming method that do what a real handler does first.
const probeService: grpc.ServiceDefinition = {
  access: {
    path: '/tetrix.test.Probe/Access',
    requestStream: false,
    responseStream: false,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
  streamLogs: {
    path: '/tetrix.test.Probe/StreamLogs',
    requestStream: false,
    responseStream: true,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
};
const ProbeClient = grpc.makeGenericClientConstructor(probeService, 'Probe');

function toStatus(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof DomainError) return { code: grpc.status[err.code], details: err.message };
  return { code: grpc.status.INTERNAL, details: 'internal' };
}

type Result = { ok: true; value: any } | { ok: false; code: grpc.status; details: string };

function unary(client: grpc.Client, req: ProbeRequest, token?: string): Promise<Result> {
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', `Bearer ${token}`);
  return new Promise((resolve) =>
    (client as any).access(req, md, { deadline: Date.now() + 10_000 }, (err: grpc.ServiceError | null, value: unknown) =>
      resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, value }),
    ),
  );
}

function stream(client: grpc.Client, req: ProbeRequest, token?: string): Promise<Result> {
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', `Bearer ${token}`);
  return new Promise((resolve) => {
    const got: unknown[] = [];
    const s = (client as any).streamLogs(req, md, { deadline: Date.now() + 10_000 }) as grpc.ClientReadableStream<unknown>;
    s.on('data', (m) => got.push(m));
    s.on('error', (err: grpc.ServiceError) => resolve({ ok: false, code: err.code, details: err.details }));
    s.on('end', () => resolve({ ok: true, value: got }));
  });
}

t.test('both gRPC ports resolve a principal before any handler runs', async (t) => {
  const { audit, raw } = capturedAudit();
  let handlerRuns = 0;
  const server = new grpc.Server();
  server.addService(probeService, {
    access: (call: grpc.ServerUnaryCall<ProbeRequest, unknown>, done: grpc.sendUnaryData<unknown>) => {
      handlerRuns++;
      try {
        const who = principalOf(call);
        authorizeWorkspaceAccess(who, { id: call.request.id, record: workspaces.get(call.request.id) }, call.request.action, audit);
        done(null, { who: describePrincipal(who) });
      } catch (err) {
        done(toStatus(err));
      }
    },
    streamLogs: (call: grpc.ServerWritableStream<ProbeRequest, unknown>) => {
      handlerRuns++;
      try {
        authorizeWorkspaceAccess(principalOf(call), { id: call.request.id, record: workspaces.get(call.request.id) }, 'logs', audit);
      } catch (err) {
        call.emit('error', toStatus(err));
        return;
      }
      for (const line of ['task 1 started', 'task 1 done']) call.write({ line });
      call.end();
    },
  });

  new HealthImplementation({ '': 'SERVING' }).addToServer(server);
  const pki = await ensureNodePki({ stateDir: path.join(tmp, 'state'), hostname: 'localhost' });
  const mtls = await MtlsServerCredentials.load({ files: { certPath: pki.serverCertPath, keyPath: pki.serverKeyPath, caPath: pki.caCertPath } });
  t.teardown(() => mtls.close());
  const common = { tokens: new TokenVerifier({ publicKeys: publicPem, audience: NODE, now: () => NOW }), audit };
  const socketPath = path.join(tmp, 'api.sock');
  const bind = (addr: string, creds: grpc.ServerCredentials) =>
    new Promise<number>((resolve, reject) => server.bindAsync(addr, creds, (err, port) => (err ? reject(err) : resolve(port))));
  await bind(`unix:${socketPath}`, grpc.experimental.createServerCredentialsWithInterceptors(grpc.ServerCredentials.createInsecure(), [createAuthInterceptor({ ...common, transport: 'unix-socket' })]));
  const port = await bind('127.0.0.1:0', grpc.experimental.createServerCredentialsWithInterceptors(mtls, [createAuthInterceptor({ ...common, transport: 'mtls', checkPeer: (c) => mtls.checkPeer(c) })]));
  t.teardown(() => server.forceShutdown());

  const ca = { certPem: fs.readFileSync(pki.caCertPath, 'utf8'), keyPem: fs.readFileSync(pki.caKeyPath, 'utf8') };
  const cpCert = await issueCertificate(ca, { commonName: 'tetrix-control-plane', usage: 'client', dnsNames: ['tetrix-control-plane'] });
  const clients = {
    local: new ProbeClient(`unix:${socketPath}`, grpc.credentials.createInsecure()),
    admin: new ProbeClient(`localhost:${port}`, await createClientCredentials({ caPath: pki.caCertPath, certPath: pki.adminCertPath, keyPath: pki.adminKeyPath })),
    controlPlane: new ProbeClient(`localhost:${port}`, grpc.credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(cpCert.keyPem), Buffer.from(cpCert.certPem))),
  };
  t.teardown(() => Object.values(clients).forEach((c) => c.close()));

  const aliceToken = sign(claimsFor('alice'));
  const eveToken = sign(claimsFor('eve', { teams: ['team-red'] }));
  const bobToken = sign(claimsFor('bob'));
  const expired = sign(claimsFor('alice', { exp: sec(NOW) - 3600 }));
  const foreign = sign(claimsFor('alice', { aud: 'tetrix-node-other' }));
  const ws = (action: WorkspaceAction = 'logs'): ProbeRequest => ({ id: 'ws-alice', action });

  t.match(await unary(clients.local, ws('manage')), { ok: true, value: { who: 'operator:local' } }, 'unix socket without a token: the local operator');
  t.match(await unary(clients.admin, ws('manage')), { ok: true, value: { who: 'operator:tetrix-admin' } }, 'mTLS with the admin certificate: an operator');
  t.match(await unary(clients.controlPlane, ws('manage')), { ok: false, code: grpc.status.UNAUTHENTICATED }, 'mTLS with another valid certificate and no token: refused');

  const health = new (grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health'))(`localhost:${port}`, grpc.credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(cpCert.keyPem), Buffer.from(cpCert.certPem)));
  t.teardown(() => health.close());
  const probe = await new Promise<unknown>((resolve) => (health as any).check({ service: '' }, (err: grpc.ServiceError | null, res: unknown) => resolve(err ? err.code : res)));
  t.same(probe, { status: 'SERVING' }, 'the health service needs a verified certificate but no token');

  for (const [name, client] of Object.entries(clients)) {
    t.match(await unary(client, ws('exec'), aliceToken), { ok: true, value: { who: 'user:alice' } }, `${name}: the owner's token is the owner`);
    const foreignWs = await unary(client, ws('exec'), eveToken);
    const unknownWs = await unary(client, { id: 'ws-nobody', action: 'exec' }, eveToken);
    t.match(foreignWs, { ok: false, code: grpc.status.PERMISSION_DENIED }, `${name}: someone else's workspace is PERMISSION_DENIED`);
    t.same(unknownWs, foreignWs, `${name}: an unknown workspace gets the very same answer`);
    t.match(await unary(client, ws(), expired), { ok: false, code: grpc.status.UNAUTHENTICATED, details: /expired/ }, `${name}: an expired token is UNAUTHENTICATED`);
    t.match(await unary(client, ws(), foreign), { ok: false, code: grpc.status.UNAUTHENTICATED, details: /not for this node/ }, `${name}: a token for another node is UNAUTHENTICATED`);
    t.match(await unary(client, ws(), 'not.a.token'), { ok: false, code: grpc.status.UNAUTHENTICATED }, `${name}: garbage is UNAUTHENTICATED`);
  }
  const runsBefore = handlerRuns;
  await unary(clients.local, ws(), expired);
  await unary(clients.controlPlane, ws('manage'));
  t.equal(handlerRuns, runsBefore, 'refused calls never reach the handler');

  t.match(await stream(clients.controlPlane, { id: 'pb-alice', action: 'logs' }, bobToken), { ok: true, value: [{ line: 'task 1 started' }, { line: 'task 1 done' }] }, 'server stream: a team member reads the prebuild log');
  t.match(await stream(clients.controlPlane, { id: 'pb-alice', action: 'logs' }, eveToken), { ok: false, code: grpc.status.PERMISSION_DENIED }, 'server stream: an outsider is refused');
  t.match(await stream(clients.controlPlane, { id: 'pb-alice', action: 'logs' }, expired), { ok: false, code: grpc.status.UNAUTHENTICATED }, 'server stream: an expired token is refused before the handler');

  const log = raw.join('');
  for (const token of [aliceToken, eveToken, bobToken, expired, foreign]) {
    t.notOk(log.includes(token) || log.includes(token.split('.')[2] as string), 'no token (nor its signature) appears in the audit log');
  }
  t.match(log, /"who":"peer:tetrix-control-plane".*"action":"\/tetrix.test.Probe\/Access".*"decision":"deny"/, 'refusals at the door are audited with the RPC');
});

// Issue 13, item 11: an operator is a certificate carrying the configured name, of the configured type
// (a DNS or URI SAN), not any CN, DNS, URI or email name that happens to spell it.
t.test('operator certificates: only the configured SAN type and value make an operator', async (t) => {
  const { audit } = capturedAudit();
  const pki = await ensureNodePki({ stateDir: path.join(tmp, 'state-operators'), hostname: 'localhost' });
  const mtls = await MtlsServerCredentials.load({ files: { certPath: pki.serverCertPath, keyPath: pki.serverKeyPath, caPath: pki.caCertPath } });
  t.teardown(() => mtls.close());
  const ca = { certPem: fs.readFileSync(pki.caCertPath, 'utf8'), keyPem: fs.readFileSync(pki.caKeyPath, 'utf8') };
  const server = new grpc.Server();
  server.addService(probeService, {
    access: (call: grpc.ServerUnaryCall<ProbeRequest, unknown>, done: grpc.sendUnaryData<unknown>) => done(null, { who: describePrincipal(principalOf(call)) }),
    streamLogs: (call: grpc.ServerWritableStream<ProbeRequest, unknown>) => call.end(),
  });
  const tokens = new TokenVerifier({ publicKeys: publicPem, audience: NODE, now: () => NOW });
  const bind = (operatorIdentities?: string[]) =>
    new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.experimental.createServerCredentialsWithInterceptors(mtls, [
        createAuthInterceptor({ tokens, audit, transport: 'mtls', checkPeer: (c) => mtls.checkPeer(c), ...(operatorIdentities ? { operatorIdentities } : {}) }),
      ]), (err, port) => (err ? reject(err) : resolve(port))));
  const defaultPort = await bind();
  const spiffe = 'spiffe://tetrix.test/operator/admin';
  const uriPort = await bind([`uri:${spiffe}`]);
  t.teardown(() => server.forceShutdown());

  const as = async (port: number, req: Omit<Parameters<typeof issueCertificate>[1], 'usage'>): Promise<Result> => {
    const leaf = await issueCertificate(ca, { ...req, usage: 'client' });
    const client = new ProbeClient(`localhost:${port}`, grpc.credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(leaf.keyPem), Buffer.from(leaf.certPem)), { 'grpc.use_local_subchannel_pool': 1 });
    try {
      return await unary(client, { id: 'ws-alice', action: 'manage' });
    } finally {
      client.close();
    }
  };
  const notOperator = { ok: false, code: grpc.status.UNAUTHENTICATED, details: /token is required/ };

  // The default: dns:tetrix-admin, which the generated admin certificate carries.
  const admin = new ProbeClient(`localhost:${defaultPort}`, await createClientCredentials({ caPath: pki.caCertPath, certPath: pki.adminCertPath, keyPath: pki.adminKeyPath }));
  t.teardown(() => admin.close());
  t.match(await unary(admin, { id: 'ws-alice', action: 'manage' }), { ok: true, value: { who: 'operator:tetrix-admin' } }, 'the generated admin certificate is an operator');
  t.match(await as(defaultPort, { commonName: 'someone', dnsNames: ['tetrix-admin'] }), { ok: true, value: { who: 'operator:tetrix-admin' } }, 'a certificate with the DNS SAN tetrix-admin is an operator');
  t.match(await as(defaultPort, { commonName: 'tetrix-admin' }), notOperator, 'CN tetrix-admin without the DNS SAN is not an operator');
  t.match(await as(defaultPort, { commonName: 'someone', emails: ['tetrix-admin'] }), notOperator, 'an email SAN tetrix-admin is not an operator');
  t.match(await as(defaultPort, { commonName: 'someone', uris: ['tetrix-admin'] }), notOperator, 'a URI SAN tetrix-admin is not an operator');
  t.match(await as(defaultPort, { commonName: 'someone', dnsNames: ['tetrix-admin.example'] }), notOperator, 'a DNS SAN that merely starts with tetrix-admin is not');
  // Node prints SANs as one "DNS:a, URI:b" string: a value that spells another entry must stay one value.
  t.match(await as(defaultPort, { commonName: 'someone', uris: ['urn:x, DNS:tetrix-admin'] }), notOperator, 'a URI SAN spelling ", DNS:tetrix-admin" is not an operator');
  t.match(await as(defaultPort, { commonName: 'someone', emails: ['a@b, DNS:tetrix-admin'] }), notOperator, 'nor an email SAN spelling it');

  // Configured as a URI SAN (SPIFFE id): only that URI, exactly.
  t.match(await as(uriPort, { commonName: 'someone', uris: [spiffe] }), { ok: true, value: { who: `operator:${spiffe}` } }, 'the configured URI SAN is an operator');
  t.match(await as(uriPort, { commonName: spiffe, dnsNames: ['tetrix-admin'] }), notOperator, 'with a URI configured, neither the CN nor the DNS SAN tetrix-admin is');
  t.match(await as(uriPort, { commonName: 'someone', dnsNames: [spiffe.replace('spiffe://', '')] }), notOperator, 'a DNS SAN is not a URI SAN');
  t.match(await as(uriPort, { commonName: 'someone', uris: [`${spiffe}/extra`] }), notOperator, 'a longer URI is not the configured one');

  for (const [bad, why] of [['tetrix-admin', /operatorIdentities.*type/], ['cn:tetrix-admin', /operatorIdentities.*type/], ['dns:', /operatorIdentities/]] as const) {
    t.throws(() => createAuthInterceptor({ tokens, audit, transport: 'mtls', checkPeer: (c) => mtls.checkPeer(c), operatorIdentities: [bad] }), { message: why }, `operatorIdentities "${bad}" is refused`);
  }
});
