// Transport security and access control through the real daemon: its generated node PKI and mutual-TLS
// port tried with real gRPC clients, user tokens signed by a test control-plane key, the owner-only rule
// (and the prebuild team's read access to logs), the audit trail, and the workspace endpoint server
// reached over HTTPS from inside a test node.
import t, { type Test } from 'tap';
import * as grpc from '@grpc/grpc-js';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { connect, unaryCall, type Clients } from '../../src/cli/client';
import { createCertificateAuthority, issueCertificate, type CertificateAuthority, type IssuedCertificate } from '../../src/crypto/pki';
import { createClientCredentials } from '../../src/api/tls';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { ListWorkspacesResponse__Output } from '../../src/generated/tetrix/agent/v1/ListWorkspacesResponse';
import type { TeardownWorkspaceResponse__Output } from '../../src/generated/tetrix/agent/v1/TeardownWorkspaceResponse';
import type { NodeInfo__Output } from '../../src/generated/tetrix/agent/v1/NodeInfo';
import type { LogChunk__Output } from '../../src/generated/tetrix/agent/v1/LogChunk';
import type { WorkspaceEvent__Output } from '../../src/generated/tetrix/agent/v1/WorkspaceEvent';
import { refusal, startDaemon, uniqueName, type Daemon } from '../helpers/daemon';
import { createTestNode, internet, nodeUplink, type TestNode } from '../network/fixture';

const run = promisify(execFile);

// ---------------------------------------------------------------------------------------------------------
// The control plane's side: its signing key and the tokens it hands out.

const controlPlane = crypto.generateKeyPairSync('ed25519');
const impostor = crypto.generateKeyPairSync('ed25519');
const issued: string[] = []; // every token this file made, to prove none reaches a log

interface Claims {
  sub?: unknown;
  teams?: unknown;
  aud?: unknown;
  exp?: unknown;
  [claim: string]: unknown;
}

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

function signToken(claims: Claims, key: crypto.KeyObject = controlPlane.privateKey, header: object = { alg: 'EdDSA', typ: 'JWT' }): string {
  const input = `${b64(header)}.${b64(claims)}`;
  const token = `${input}.${crypto.sign(null, Buffer.from(input), key).toString('base64url')}`;
  issued.push(token);
  return token;
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000);
const inAnHour = (): number => nowSeconds() + 3600;

/** A daemon that trusts the test control plane; its node id is the tokens' audience. */
async function authDaemon(t: Test, extra: string[] = [], netns?: string): Promise<{ d: Daemon; nodeId: string; token(sub: string, teams?: string[], claims?: Claims): string }> {
  const nodeId = uniqueName('tetrix-node');
  const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-cp-key-'));
  t.teardown(() => fs.rmSync(keyDir, { recursive: true, force: true }));
  const keyFile = path.join(keyDir, 'control-plane.pub.pem');
  fs.writeFileSync(keyFile, controlPlane.publicKey.export({ type: 'spki', format: 'pem' }));
  const d = await startDaemon(t, ['--control-plane-key-file', keyFile, '--node-id', nodeId, ...extra], netns ? { netns } : {});
  return { d, nodeId, token: (sub, teams = [], claims = {}) => signToken({ sub, teams, aud: nodeId, iat: nowSeconds(), exp: inAnHour(), ...claims }) };
}

// ---------------------------------------------------------------------------------------------------------
// gRPC over the daemon's mutual-TLS port

interface Pki {
  ca: CertificateAuthority;
  caPath: string;
  admin: grpc.ChannelCredentials;
  /** A client certificate of the node CA that is not an operator: how the control plane connects. */
  controlPlane: grpc.ChannelCredentials;
}

async function pkiOf(d: Daemon): Promise<Pki> {
  const dir = path.join(d.stateDir, 'pki');
  const ca = { certPem: fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8'), keyPem: fs.readFileSync(path.join(dir, 'ca.key'), 'utf8') };
  const admin = await createClientCredentials({ caPath: path.join(dir, 'ca.crt'), certPath: path.join(dir, 'admin.crt'), keyPath: path.join(dir, 'admin.key') });
  const cp = await issueCertificate(ca, { commonName: 'tetrix-control-plane', usage: 'client', dnsNames: ['control-plane.tetrix.test'] });
  return { ca, caPath: path.join(dir, 'ca.crt'), admin, controlPlane: clientCreds(ca.certPem, cp) };
}

function clientCreds(caPem: string, leaf?: IssuedCertificate): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(Buffer.from(caPem), leaf ? Buffer.from(leaf.keyPem) : null, leaf ? Buffer.from(leaf.certPem) : null);
}

function mtlsClients(t: Test, d: Daemon, credentials: grpc.ChannelCredentials): Clients {
  const c = connect({ address: `127.0.0.1:${d.tcpPort}`, credentials });
  t.teardown(() => c.close());
  return c;
}

const withToken = (token: string | undefined): grpc.Metadata => {
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', `Bearer ${token}`);
  return md;
};

type Call<Res> = (md: grpc.Metadata, o: grpc.CallOptions, cb: grpc.requestCallback<Res>) => unknown;
const call = <Res>(token: string | undefined, invoke: Call<Res>): Promise<Res> => unaryCall<Res>(invoke, { metadata: withToken(token), deadlineMs: 20_000 });

/** The typed calls a test makes, as one user (token) over one connection. */
function api(c: Clients, token?: string) {
  const ws = c.workspaces;
  return {
    start: (req: StartWorkspaceRequest) => call<Workspace__Output>(token, (md, o, cb) => ws.StartWorkspace(req, md, o, cb)),
    get: (id: string) => call<Workspace__Output>(token, (md, o, cb) => ws.GetWorkspace({ id }, md, o, cb)),
    list: async (ownerId = '') => (await call<ListWorkspacesResponse__Output>(token, (md, o, cb) => ws.ListWorkspaces({ ownerId }, md, o, cb))).workspaces,
    stop: (id: string) => call<Workspace__Output>(token, (md, o, cb) => ws.StopWorkspace({ id, gracePeriodMs: 500 }, md, o, cb)),
    teardown: (id: string) => call<TeardownWorkspaceResponse__Output>(token, (md, o, cb) => ws.TeardownWorkspace({ id }, md, o, cb)),
    updatePorts: (id: string, ports: number[]) => call<Workspace__Output>(token, (md, o, cb) => ws.UpdatePorts({ id, ports }, md, o, cb)),
    nodeInfo: () => call<NodeInfo__Output>(token, (md, o, cb) => c.node.GetNodeInfo({}, md, o, cb)),
    backup: (id: string) =>
      new Promise<void>((resolve, reject) => {
        const s = ws.BackupWorkspace({ id, includeUpper: false }, withToken(token), { deadline: Date.now() + 20_000 });
        s.on('data', () => undefined);
        s.on('error', reject);
        s.on('end', () => resolve());
      }),
    /** Every workspace id the caller's WatchWorkspaces shows within `ms`. */
    watchIds: (ms: number) =>
      new Promise<string[]>((resolve, reject) => {
        const ids: string[] = [];
        const s = ws.WatchWorkspaces({ id: '' }, withToken(token));
        s.on('data', (e: WorkspaceEvent__Output) => ids.push(e.workspace?.id ?? ''));
        s.on('error', (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED ? resolve(ids) : reject(err)));
        setTimeout(() => s.cancel(), ms);
      }),
    logs: (id: string) =>
      new Promise<string>((resolve, reject) => {
        const chunks: Buffer[] = [];
        const s = ws.StreamLogs({ id, follow: false }, withToken(token), { deadline: Date.now() + 20_000 });
        s.on('data', (chunk: LogChunk__Output) => chunks.push(chunk.data));
        s.on('error', reject);
        s.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      }),
  };
}


const busybox = (id: string, ownerId: string, script: string, extra: Partial<StartWorkspaceRequest> = {}): StartWorkspaceRequest => ({
  id,
  ownerId,
  image: 'builtin:busybox',
  command: ['/bin/sh', '-c', script],
  resources: { memoryBytes: 128 << 20, pids: 64 },
  ...extra,
});

/** Raw TLS to a port with a version ceiling: the negotiated protocol, or why the handshake failed. */
function rawTls(port: number, opts: tls.ConnectionOptions, maxVersion: tls.SecureVersion): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', maxVersion, ALPNProtocols: ['h2'], ...opts });
    s.on('secureConnect', () => {
      resolve(`connected ${s.getProtocol()}`);
      s.destroy();
    });
    s.on('error', (err) => resolve(`refused: ${err.message}`));
  });
}

/** The audit trail: a file of its own in the state dir, never the daemon's log. */
const auditLines = (d: Daemon): Array<Record<string, unknown>> =>
  fs.readFileSync(path.join(d.stateDir, 'audit.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

async function waitUntil(what: string, pred: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---------------------------------------------------------------------------------------------------------

t.test('the mutual-TLS port: the generated admin certificate gets in, everything else is refused', async (t) => {
  const { d } = await authDaemon(t);
  t.ok(d.tcpPort, `the daemon serves mTLS on 127.0.0.1:${d.tcpPort}`);
  const pki = await pkiOf(d);
  const admin = api(mtlsClients(t, d, pki.admin));
  t.match(await admin.nodeInfo(), { version: /\d+\.\d+/ }, 'tetrix-admin calls GetNodeInfo');
  t.same(await admin.list(), [], 'and ListWorkspaces');

  const refusedWith = async (what: string, creds: grpc.ChannelCredentials): Promise<void> => {
    const r = await refusal(api(mtlsClients(t, d, creds)).nodeInfo());
    t.equal(r.code, grpc.status.UNAVAILABLE, `${what}: refused (${r.details})`);
  };
  const foreignCa = await createCertificateAuthority('tetrix-test-foreign-ca');
  const foreign = await issueCertificate(foreignCa, { commonName: 'tetrix-admin', usage: 'client', dnsNames: ['tetrix-admin'] });
  await refusedWith('an admin certificate from another CA', clientCreds(pki.ca.certPem, foreign));
  const expired = await issueCertificate(pki.ca, {
    commonName: 'tetrix-admin',
    usage: 'client',
    dnsNames: ['tetrix-admin'],
    notBefore: new Date(Date.now() - 2 * 86400_000),
    notAfter: new Date(Date.now() - 86400_000),
  });
  await refusedWith('an expired admin certificate from the node CA', clientCreds(pki.ca.certPem, expired));
  await refusedWith('no client certificate', clientCreds(pki.ca.certPem));
  await refusedWith('plaintext', grpc.credentials.createInsecure());

  const dir = path.join(d.stateDir, 'pki');
  const material = { ca: fs.readFileSync(path.join(dir, 'ca.crt')), cert: fs.readFileSync(path.join(dir, 'admin.crt')), key: fs.readFileSync(path.join(dir, 'admin.key')) };
  t.match(await rawTls(d.tcpPort!, material, 'TLSv1.2'), /^refused: .*protocol version/, 'a TLS 1.2-only client is refused in the handshake');
  t.equal(await rawTls(d.tcpPort!, material, 'TLSv1.3'), 'connected TLSv1.3', 'the same client with TLS 1.3 completes it');
  t.equal((await admin.nodeInfo()).nodeId !== '', true, 'the daemon still serves the admin afterwards');
});

t.test('user tokens: owners only, refusals that tell nothing, and an audit trail without tokens', async (t) => {
  const { d, nodeId, token } = await authDaemon(t);
  const pki = await pkiOf(d);
  const cp = mtlsClients(t, d, pki.controlPlane);
  const alice = api(cp, token('alice', ['team-a']));
  const bob = api(cp, token('bob', ['team-a']));
  const admin = api(mtlsClients(t, d, pki.admin));
  const missing = (): Promise<{ code: grpc.status | undefined; details: string }> => refusal(bob.get('no-such-workspace'));

  const ws = await alice.start(busybox('alice-ws', 'alice', 'echo "hello from alice"; exec sleep 600'));
  t.equal(ws.state, 'WORKSPACE_STATE_RUNNING', 'alice starts her own workspace');
  t.equal(ws.ownerId, 'alice', 'and owns it');

  await t.test('the owner can do everything to her own workspace', async (t) => {
    t.equal((await alice.get('alice-ws')).ownerId, 'alice', 'get');
    t.same((await alice.list()).map((w) => w.id), ['alice-ws'], 'list shows hers');
    await waitUntil('output', async () => (await alice.logs('alice-ws')).includes('hello'));
    t.equal(await alice.logs('alice-ws'), 'hello from alice\n', 'she reads its logs');
    const refused = await refusal(alice.start(busybox('for-bob', 'bob', 'exec sleep 600')));
    t.equal(refused.code, grpc.status.PERMISSION_DENIED, 'she cannot create a workspace owned by someone else');
  });

  await t.test("another user gets PERMISSION_DENIED on alice's workspace, worded as for one that does not exist", async (t) => {
    const missing = await refusal(bob.get('no-such-workspace'));
    t.equal(missing.code, grpc.status.PERMISSION_DENIED, 'an unknown id is PERMISSION_DENIED');
    const attempts: Array<[string, (id: string) => Promise<unknown>]> = [
      ['GetWorkspace', bob.get],
      ['StopWorkspace', bob.stop],
      ['TeardownWorkspace', bob.teardown],
      ['UpdatePorts', (id) => bob.updatePorts(id, [8080])],
      ['StreamLogs', bob.logs],
      ['BackupWorkspace', bob.backup],
    ];
    for (const [name, attempt] of attempts) {
      const theirs = await refusal(attempt('alice-ws'));
      t.same(theirs, { code: grpc.status.PERMISSION_DENIED, details: missing.details }, `${name}: denied`);
      t.same(theirs, await refusal(attempt('no-such-workspace')), `${name}: the same answer as for an unknown id`);
    }
    // StartWorkspace of an unknown id would create bob's own workspace; of alice's id it must not tell.
    t.same(await refusal(bob.start(busybox('alice-ws', 'bob', 'exec sleep 600'))), missing, "StartWorkspace with alice's id: denied, the same answer");
    t.same(await bob.list(), [], 'bob lists nothing of alice');
    t.same(await bob.watchIds(300), [], 'and watches nothing of hers');
    t.same(await alice.watchIds(300), ['alice-ws'], 'while her own watch shows it');
    t.same(await bob.list('alice'), [], 'not even when filtering by her id');
    t.equal((await alice.get('alice-ws')).state, 'WORKSPACE_STATE_RUNNING', "alice's workspace is untouched");
    t.same((await admin.list()).map((w) => w.id), ['alice-ws'], 'and nothing else exists');
    t.equal((await admin.get('alice-ws')).ownerId, 'alice', "the node operator (admin certificate) may look at anyone's workspace");
  });

  await t.test('no token on a non-operator certificate, an expired, foreign or forged token: UNAUTHENTICATED, nothing changes', async (t) => {
    const before = await admin.list();
    const bad: Array<[string, string | undefined]> = [
      ['no token', undefined],
      ['expired', token('alice', [], { exp: Math.floor(Date.now() / 1000) - 600 })],
      ['for another node', signToken({ sub: 'alice', teams: [], aud: `${nodeId}-other`, iat: nowSeconds(), exp: inAnHour() })],
      ['signed by another key', signToken({ sub: 'alice', teams: [], aud: nodeId, iat: nowSeconds(), exp: inAnHour() }, impostor.privateKey)],
      ['alg none', `${b64({ alg: 'none' })}.${b64({ sub: 'alice', teams: [], aud: nodeId, iat: nowSeconds(), exp: inAnHour() })}.`],
      ['not a JWT', 'not-a-token'],
    ];
    for (const [what, tok] of bad) {
      const as = api(cp, tok);
      for (const [name, attempt] of [
        ['GetWorkspace', () => as.get('alice-ws')],
        ['StopWorkspace', () => as.stop('alice-ws')],
        ['TeardownWorkspace', () => as.teardown('alice-ws')],
        ['StreamLogs', () => as.logs('alice-ws')],
        ['ListWorkspaces', () => as.list()],
        ['StartWorkspace', () => as.start(busybox('sneaky', 'alice', 'exec sleep 600'))],
      ] as const) {
        const r = await refusal(attempt());
        t.equal(r.code, grpc.status.UNAUTHENTICATED, `${what}: ${name} is UNAUTHENTICATED (${r.details})`);
      }
    }
    // A bad token is not rescued by an operator certificate: the token speaks for the caller.
    const r = await refusal(api(mtlsClients(t, d, pki.admin), bad[1]![1]).get('alice-ws'));
    t.equal(r.code, grpc.status.UNAUTHENTICATED, 'an expired token with the admin certificate is still UNAUTHENTICATED');
    t.same(await admin.list(), before, 'nothing was created, stopped or removed');
  });

  await t.test('the owner stops and tears down her workspace; its log outlives it, hers alone', async (t) => {
    t.equal((await alice.stop('alice-ws')).state, 'WORKSPACE_STATE_STOPPED', 'stop');
    t.equal(await alice.logs('alice-ws'), 'hello from alice\n', 'logs still readable after the stop');
    t.equal((await alice.teardown('alice-ws')).existed, true, 'teardown');
    t.same(await admin.list(), [], 'nothing left');
    t.equal(await alice.logs('alice-ws'), 'hello from alice\n', 'the log is still hers to read after the teardown');
    t.same(await refusal(bob.logs('alice-ws')), await missing(), 'and still refused to bob');
    // Starting a workspace under her old id would start a fresh log history, wiping hers.
    t.same(await refusal(bob.start(busybox('alice-ws', 'bob', 'exec sleep 600'))), await missing(), "bob cannot take over the id of her torn-down workspace");
    t.same(await admin.list(), [], 'nothing was created');
    t.equal(await alice.logs('alice-ws'), 'hello from alice\n', 'and her log is intact');
  });

  await t.test('audit: every allow and deny is a structured line, and no token appears anywhere in the output', async (t) => {
    const lines = auditLines(d);
    t.ok(lines.some((l) => l.decision === 'allow' && l.who === 'user:alice' && l.workspace === 'alice-ws'), 'alice allowed on her workspace');
    t.ok(lines.some((l) => l.decision === 'deny' && l.who === 'user:bob' && l.workspace === 'alice-ws' && l.reason === 'not the owner'), 'bob denied: not the owner');
    t.ok(lines.some((l) => l.decision === 'deny' && l.who === 'user:bob' && l.workspace === 'no-such-workspace'), 'bob denied on an unknown id');
    t.ok(lines.some((l) => l.decision === 'deny' && typeof l.reason === 'string' && /expired/.test(l.reason)), 'an expired token denied, with its reason');
    t.ok(lines.some((l) => l.decision === 'deny' && /another|not for this node/.test(String(l.reason))), 'a foreign-audience token denied');
    t.ok(lines.some((l) => l.decision === 'allow' && String(l.who).startsWith('operator:')), 'the operator allowed');
    const incomplete = lines.filter((l) => !['who', 'action', 'decision', 'reason'].every((k) => typeof l[k] === 'string'));
    t.same(incomplete, [], `each of the ${lines.length} audit lines has who, action, decision and reason`);
    t.notOk(d.output.some((l) => l.includes('"component":"audit"')), 'audit lines stay out of the daemon log');
    t.equal(fs.statSync(path.join(d.stateDir, 'audit.log')).mode & 0o777, 0o600, 'the audit file is 0600');
    const everything = [...d.output, fs.readFileSync(path.join(d.stateDir, 'audit.log'), 'utf8')].join('\n');
    const leaked = issued.filter((tok) => tok.length > 20 && (everything.includes(tok) || everything.includes(tok.split('.')[2] ?? tok)));
    t.same(leaked, [], 'no token, nor any token signature, appears in the daemon output');
    t.notMatch(everything, /Bearer /, 'no authorization header either');
  });
});

// Issue 13, item 11: a token must say when it was issued, and may not live longer than the bound.
t.test('tokens with no issued-at, a far expiry, a future issued-at or too long a lifetime are refused', async (t) => {
  const { d, token } = await authDaemon(t, ['--token-max-lifetime-seconds', '900']);
  const pki = await pkiOf(d);
  const cp = mtlsClients(t, d, pki.controlPlane);
  t.same(await api(cp, token('alice', [], { exp: nowSeconds() + 900 })).list(), [], 'a token with iat and a lifetime of the bound (900 s) is accepted');
  const cases: Array<[string, Claims, RegExp]> = [
    ['exp 1e300', { exp: 1e300 }, /lifetime exp - iat/],
    ['no iat', { iat: undefined, exp: nowSeconds() + 60 }, /iat/],
    ['no iat and exp 1e300', { iat: undefined, exp: 1e300 }, /iat/],
    ['iat an hour in the future', { iat: nowSeconds() + 3600, exp: nowSeconds() + 3600 + 60 }, /future \(iat\)/],
    ['exp - iat of 901 s over the configured 900 s', { iat: nowSeconds() - 1, exp: nowSeconds() + 900 }, /lifetime exp - iat is over the 900 s bound/],
  ];
  for (const [what, claims, why] of cases) {
    const r = await refusal(api(cp, token('alice', [], claims)).list());
    t.equal(r.code, grpc.status.UNAUTHENTICATED, `${what}: UNAUTHENTICATED`);
    t.match(r.details, why, `${what}: the reason names the claim (${r.details})`);
  }
  const r = await refusal(api(mtlsClients(t, d, pki.admin), token('alice', [], { exp: 1e300 })).list());
  t.equal(r.code, grpc.status.UNAUTHENTICATED, 'an operator certificate does not rescue a token of unbounded lifetime');
});

// Issue 13, item 11: operators are the configured SAN type and name, and the generated admin certificate
// carries it; CN and other SAN types spelling the name are not operators.
t.test('operator identity: the configured URI SAN is an operator, CN and DNS tetrix-admin are not', async (t) => {
  const spiffe = `spiffe://tetrix.test/${uniqueName('operator')}`;
  const { d } = await authDaemon(t, ['--operator-identities', `uri:${spiffe}`]);
  const pki = await pkiOf(d);
  const adminCert = new crypto.X509Certificate(fs.readFileSync(path.join(d.stateDir, 'pki', 'admin.crt')));
  t.match(adminCert.subjectAltName ?? '', new RegExp(`URI:${spiffe}`), 'the generated admin certificate carries the configured URI SAN');
  t.match(await api(mtlsClients(t, d, pki.admin)).nodeInfo(), { version: /\d+\.\d+/ }, 'and is an operator');
  const asCert = async (req: { commonName: string; dnsNames?: string[]; uris?: string[]; emails?: string[] }) =>
    refusal(api(mtlsClients(t, d, clientCreds(pki.ca.certPem, await issueCertificate(pki.ca, { ...req, usage: 'client' })))).list());
  const refused = { code: grpc.status.UNAUTHENTICATED, details: 'a user token is required' };
  t.same(await asCert({ commonName: 'tetrix-admin' }), refused, 'CN tetrix-admin alone is not an operator');
  t.same(await asCert({ commonName: 'tetrix-admin', dnsNames: ['tetrix-admin'] }), refused, 'nor CN and DNS SAN tetrix-admin, when a URI is configured');
  t.same(await asCert({ commonName: spiffe, emails: [spiffe] }), refused, 'nor a CN or email name spelling the URI');
  t.same(await asCert({ commonName: 'someone', uris: [spiffe] }), { code: undefined, details: 'it succeeded' }, 'a certificate with the URI SAN is');

  await t.rejects(startDaemon(t, ['--operator-identities', 'tetrix-admin']), /operatorIdentities: "tetrix-admin" needs a name type/, 'a daemon refuses to start with an untyped operator identity, naming the setting');
});

t.test("a prebuild's logs: readable by its team, refused to everyone else", async (t) => {
  const { d, token } = await authDaemon(t);
  const pki = await pkiOf(d);
  const cp = mtlsClients(t, d, pki.controlPlane);
  const owner = api(cp, token('pat', ['team-a']));
  const teammate = api(cp, token('carol', ['team-b', 'team-a']));
  const outsider = api(cp, token('dave', ['team-b']));
  const started = await refusal(owner.start({
    id: 'prebuild-1',
    ownerId: 'pat',
    teamId: 'team-a',
    kind: 'WORKSPACE_KIND_PREBUILD',
    image: 'builtin:busybox',
    command: ['/bin/sh', '-c', 'echo "building for team-a"'],
    tasks: [{ name: 'build', command: ['/bin/sh', '-c', 'echo "task: build"'] }],
    source: { repositoryUrl: 'https://git.tetrix.test/team-a/app.git', revision: '0123456789abcdef0123456789abcdef01234567' },
    resources: { memoryBytes: 128 << 20, pids: 64 },
  }));
  if (started.code !== undefined) {
    t.fail(`StartWorkspace refused the prebuild: ${started.details}`, { todo: 'prebuild starts are not wired yet; the team rule is untested here' });
    return;
  }
  const w = await owner.get('prebuild-1');
  t.equal(w.kind, 'WORKSPACE_KIND_PREBUILD', 'a prebuild');
  t.equal(w.teamId, 'team-a', 'of team-a');
  await waitUntil('the prebuild to end', async () => ['WORKSPACE_STATE_STOPPED', 'WORKSPACE_STATE_FAILED', 'WORKSPACE_STATE_SUCCEEDED'].includes((await owner.get('prebuild-1')).state));
  t.pass(`it ended ${(await owner.get('prebuild-1')).state}`);
  const ownLog = await owner.logs('prebuild-1');
  t.ok(ownLog.length > 0, `the owner reads its log (${JSON.stringify(ownLog)})`);
  t.equal(await teammate.logs('prebuild-1'), ownLog, 'a member of team-a reads the same log');
  const denied = await refusal(outsider.logs('prebuild-1'));
  t.equal(denied.code, grpc.status.PERMISSION_DENIED, 'someone outside team-a is refused');
  t.same(denied, await refusal(outsider.logs('no-such-prebuild')), 'with the answer for an unknown id');
  t.equal((await refusal(teammate.get('prebuild-1'))).code, grpc.status.PERMISSION_DENIED, 'the team reads logs only: GetWorkspace stays the owner’s');
  t.equal((await refusal(teammate.stop('prebuild-1'))).code, grpc.status.PERMISSION_DENIED, 'and so does StopWorkspace');
  await owner.teardown('prebuild-1');
});

// ---------------------------------------------------------------------------------------------------------
// The workspace endpoint server, from inside a test node

const DOMAIN = `${uniqueName('tetrix')}.test`;

// One HTTPS request (or WebSocket echo) from inside the node's namespace: the endpoint server listens
// there. The token arrives in the environment, never on a command line.
const CLIENT_SCRIPT = `
const https = require('node:https');
const fs = require('node:fs');
const [url, host, caFile, mode, maxVersion, urlPath] = process.argv.slice(1);
const token = process.env.TETRIX_TEST_TOKEN;
const headers = { host };
if (token && mode === 'cookie') headers.cookie = 'app=1; tetrix_token=' + token;
else if (token) headers.authorization = 'Bearer ' + token;
// Headers a client might send to fool the workspace or smuggle the token in: both must be dealt with.
if (mode === 'header' || mode === 'cookie') {
  headers['x-forwarded-for'] = '203.0.113.66';
  if (mode === 'header' && token) headers.cookie = 'app=1; tetrix_token=' + token;
}
const out = (r) => { console.log(JSON.stringify(r)); process.exit(0); };
const servername = host.replace(/:\\d+$/, '');
if (mode === 'ws') {
  const WebSocket = require(${JSON.stringify(require.resolve('ws'))});
  const ws = new WebSocket(url.replace(/^https/, 'wss') + '/', { headers, ca: fs.readFileSync(caFile), servername, handshakeTimeout: 5000 });
  ws.on('open', () => ws.send('ping from the test'));
  ws.on('message', (m) => { out({ ok: true, echo: m.toString() }); });
  ws.on('unexpected-response', (req, res) => out({ ok: false, status: res.statusCode }));
  ws.on('error', (e) => out({ ok: false, error: e.message }));
} else {
  const req = https.get(url + (urlPath || '/'), { headers, ca: fs.readFileSync(caFile), servername, timeout: 5000, ...(maxVersion ? { maxVersion } : {}) }, (res) => {
    let body = '';
    res.on('data', (c) => (body += c));
    res.on('end', () => out({ ok: true, status: res.statusCode, body }));
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e) => out({ ok: false, error: e.message }));
}
`;

interface EndpointResult {
  ok: boolean;
  status?: number;
  body?: string;
  echo?: string;
  error?: string;
}

async function endpointRequest(node: TestNode, d: Daemon, port: number, host: string, token: string | undefined, mode: 'header' | 'cookie' | 'ws' = 'header', maxVersion = '', address = '127.0.0.1', urlPath = ''): Promise<EndpointResult> {
  const url = `https://${address}:${port}`;
  const env = { ...process.env, ...(token ? { TETRIX_TEST_TOKEN: token } : {}) };
  if (!token) delete env.TETRIX_TEST_TOKEN;
  const { stdout } = await run('nsenter', [`--net=${node.netns}`, process.execPath, '-e', CLIENT_SCRIPT, url, host, path.join(d.stateDir, 'pki', 'ca.crt'), mode, maxVersion, urlPath], { env, timeout: 20_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as EndpointResult;
}

// A WebSocket echo server in busybox sh, run per connection by nc: the RFC 6455 handshake (sha1sum,
// xxd, base64) and then masked client frames echoed back unmasked. Small text frames only (< 126 bytes).
const WS_ECHO = `#!/bin/sh
key=''
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\\r')
  [ -z "$line" ] && break
  case "$line" in [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=$(printf '%s' "\${line#*:}" | tr -d ' ') ;; esac
done
accept=$(printf '%s' "\${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11" | sha1sum | cut -d' ' -f1 | xxd -r -p | base64)
printf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: %s\\r\\n\\r\\n' "$accept"
while :; do
  set -- $(dd bs=1 count=2 2>/dev/null | od -An -tu1)
  [ $# -lt 2 ] && exit 0
  op=$(($1 & 15)); len=$(($2 & 127))
  [ $op -eq 8 ] && exit 0
  set -- $(dd bs=1 count=$((4 + len)) 2>/dev/null | od -An -tu1 -v)
  m0=$1; m1=$2; m2=$3; m3=$4; shift 4
  out=''; i=0
  for b in "$@"; do
    case $((i % 4)) in 0) m=$m0 ;; 1) m=$m1 ;; 2) m=$m2 ;; *) m=$m3 ;; esac
    out="$out\\\\$(printf '%03o' $((b ^ m)))"
    i=$((i + 1))
  done
  printf "\\\\$(printf '%03o' $((128 | op)))\\\\$(printf '%03o' $len)$out"
done
`;

// Answers any request with the request head it received, so the test sees what the workspace sees.
const HEADER_DUMP = `#!/bin/sh
body=''
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\\r')
  [ -z "$line" ] && break
  body="$body$line
"
done
printf 'HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: %s\\r\\nConnection: close\\r\\n\\r\\n%s' "\${#body}" "$body"
`;

t.test('workspace endpoints: the owner reaches her server over HTTPS, nobody else does', async (t) => {
  const node: TestNode = await createTestNode(t);
  const network = ['--network', 'on', '--network-bridge', node.bridge, '--network-table', node.table, '--dns-servers', internet.ip, '--default-network', 'isolated'];
  // On every address of the node (its own namespace): the firewall, not the bind, keeps workspaces out.
  const { d, token } = await authDaemon(t, [...network, '--endpoint-listen', '0.0.0.0:0', '--node-domain', DOMAIN], node.netns);
  const serving = JSON.parse([...d.output].reverse().find((l) => l.includes('tetrixd serving'))!) as { endpointPort?: number };
  const port = serving.endpointPort!;
  t.ok(port > 0, `the endpoint server listens on ${port}`);
  const aliceToken = token('alice', ['team-a']);
  const bobToken = token('bob', ['team-a']);

  const script = [
    'i=0; until ip -4 addr show eth0 2>/dev/null | grep -q inet || [ $i -ge 100 ]; do sleep 0.05; i=$((i+1)); done',
    'mkdir -p /tmp/www && echo "hello from alice-web" > /tmp/www/index.html',
    `cat > /tmp/ws.sh <<'EOF'\n${WS_ECHO}EOF`,
    'chmod +x /tmp/ws.sh',
    'nc -ll -p 8090 -e /tmp/ws.sh &',
    `cat > /tmp/dump.sh <<'EOF'\n${HEADER_DUMP}EOF`,
    'chmod +x /tmp/dump.sh',
    'nc -ll -p 8091 -e /tmp/dump.sh &',
    'exec httpd -f -p 8080 -h /tmp/www',
  ].join('\n');
  const w = await d.start(busybox('alice-web', 'alice', script, { network: 'NETWORK_MODE_ISOLATED', ports: [8080, 8090, 8091] }));
  t.match(w.ipAddress, /^10\.88\./, 'the workspace has its address');
  const host = (p: number, id = 'alice-web'): string => `${p}-${id}.${DOMAIN}`;
  await waitUntil('the server through the endpoint', async () => (await endpointRequest(node, d, port, host(8080), aliceToken)).status === 200);

  t.match(await endpointRequest(node, d, port, host(8080), aliceToken), { ok: true, status: 200, body: 'hello from alice-web\n' }, 'the owner, token in the Authorization header');
  t.match(await endpointRequest(node, d, port, host(8080), aliceToken, 'cookie'), { ok: true, status: 200, body: 'hello from alice-web\n' }, 'the owner, token in the tetrix_token cookie');
  const forbidden = await endpointRequest(node, d, port, host(8080), bobToken);
  t.match(forbidden, { ok: true, status: 403 }, 'another user is refused');
  t.same(await endpointRequest(node, d, port, host(8080, 'no-such-ws'), bobToken), forbidden, 'exactly as for a workspace that does not exist');
  t.match(await endpointRequest(node, d, port, host(8080), undefined), { ok: true, status: 401 }, 'no token is refused');
  t.match(await endpointRequest(node, d, port, host(8080), token('alice', [], { exp: Math.floor(Date.now() / 1000) - 600 })), { ok: true, status: 401 }, 'an expired token is refused');
  t.match(await endpointRequest(node, d, port, host(9999), aliceToken), { ok: true, status: 403 }, 'a port the workspace does not expose is refused');
  t.match(await endpointRequest(node, d, port, host(8080), aliceToken, 'header', 'TLSv1.2'), { ok: false, error: /version|alert/i }, 'TLS 1.2 is refused');

  await t.test("the workspace never sees the user's token, and the forwarding headers are the node's", async (t) => {
    for (const mode of ['header', 'cookie'] as const) {
      const seen = await endpointRequest(node, d, port, host(8091), aliceToken, mode, '', '127.0.0.1', '/probe?x=1');
      t.match(seen, { ok: true, status: 200 }, `${mode}: the request reached the workspace`);
      const head = (seen.body ?? '').toLowerCase();
      t.match(head, /^get \/probe\?x=1 http\/1\.1\n/, `${mode}: with its method and path`);
      t.notOk(head.includes(aliceToken.toLowerCase()) || head.includes(aliceToken.split('.')[2]!.toLowerCase()), `${mode}: the token is not passed on`);
      t.notMatch(head, /^authorization:/m, `${mode}: no authorization header`);
      t.match(head, /^cookie: app=1$/m, `${mode}: the other cookies are, without tetrix_token`);
      t.match(head, /^x-forwarded-for: 127\.0\.0\.1$/m, `${mode}: X-Forwarded-For is the node's view of the client, not what the client claimed`);
      t.notMatch(head, /203\.0\.113\.66/, `${mode}: the forged address is dropped`);
    }
  });

  await t.test('a workspace can reach neither the endpoint server nor the server behind it', async (t) => {
    t.match(await endpointRequest(node, d, port, host(8080), aliceToken, 'header', '', '10.88.0.1'), { ok: true, status: 200 }, 'the endpoint server answers on the bridge address, from the node');
    const probes = [
      `(echo | timeout 5 nc 10.88.0.1 ${port}) > /workspace/bridge.out 2>&1; echo $? > /workspace/bridge.rc`,
      `(echo | timeout 5 nc ${nodeUplink.ip} ${port}) > /workspace/uplink.out 2>&1; echo $? > /workspace/uplink.rc`,
      `timeout 5 wget -q -O - http://${w.ipAddress}:8080/ > /workspace/direct.out 2>&1; echo $? > /workspace/direct.rc`,
    ];
    await d.start(busybox('bob-ws', 'bob', [script.split('\n')[0], ...probes, 'touch /workspace/done', 'exec sleep 600'].join('\n'), { network: 'NETWORK_MODE_ISOLATED' }));
    const file = (name: string): string => path.join(d.stateDir, 'workspaces', 'bob-ws', 'content', name);
    await waitUntil("bob's probes", () => fs.existsSync(file('done')));
    for (const [name, what] of [['bridge', 'the endpoint port on the bridge address'], ['uplink', 'the endpoint port on the uplink address'], ['direct', "alice's server directly"]]) {
      const out = fs.readFileSync(file(`${name}.out`), 'utf8').trim();
      t.not(fs.readFileSync(file(`${name}.rc`), 'utf8').trim(), '0', `bob's workspace cannot reach ${what} (${out})`);
      t.notMatch(out, /hello from|HTTP\//, 'and nothing answered');
    }
    await d.teardown('bob-ws');
  });

  const echo = await endpointRequest(node, d, port, host(8090), aliceToken, 'ws');
  t.same(echo, { ok: true, echo: 'ping from the test' }, 'a WebSocket echo through the endpoint (busybox sh server in the workspace)');
  t.match(await endpointRequest(node, d, port, host(8090), bobToken, 'ws'), { ok: false, status: 403 }, 'another user cannot open the WebSocket');

  const setPorts = (ports: number[]): Promise<Workspace__Output> =>
    unaryCall<Workspace__Output>((md, o, cb) => d.clients.workspaces.UpdatePorts({ id: 'alice-web', ports }, md, o, cb));
  await setPorts([8090, 8091]);
  t.same(await endpointRequest(node, d, port, host(8080), aliceToken), forbidden, 'UpdatePorts without 8080 closes its endpoint');
  await setPorts([8080, 8090, 8091]);
  t.match(await endpointRequest(node, d, port, host(8080), aliceToken), { ok: true, status: 200 }, 'and adding it back opens it');

  await d.stop('alice-web');
  t.match(await endpointRequest(node, d, port, host(8080), aliceToken), { ok: true, status: 403 }, "a stopped workspace's route is gone");
  t.same(await endpointRequest(node, d, port, host(8080), aliceToken), forbidden, 'with the same refusal as any other');
  const endpointAudit = auditLines(d).filter((l) => l.via === 'endpoint');
  t.ok(endpointAudit.some((l) => l.decision === 'allow' && l.who === 'user:alice'), 'the endpoint audit records the allowed owner');
  t.ok(endpointAudit.some((l) => l.decision === 'deny' && l.who === 'user:bob'), 'and the denied user');
  t.notOk(d.output.some((l) => l.includes(aliceToken) || l.includes(aliceToken.split('.')[2]!)), 'and no token reaches the log');
});
