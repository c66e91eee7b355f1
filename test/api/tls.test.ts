// The gRPC API's mutual TLS, tried with a real grpc-js server (the standard health service) and real
// clients on 127.0.0.1: who gets in, who is refused, and reloading certificates without a restart.
import t, { type Test as Tap } from 'tap';
import * as grpc from '@grpc/grpc-js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import pino from 'pino';
import { HealthImplementation, service as healthService } from 'grpc-health-check';
import {
  ADMIN_IDENTITY,
  createCertificateAuthority,
  createRevocationList,
  ensureNodePki,
  issueCertificate,
  type CertificateAuthority,
  type IssuedCertificate,
  type NodePki,
} from '../../src/crypto/pki';
import { MtlsServerCredentials, createClientCredentials, type MtlsServerOptions, parseOperatorIdentity } from '../../src/api/tls';
import { TokenVerifier, createAuthInterceptor } from '../../src/api/auth';
import { createAuditLog } from '../../src/api/audit';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-tls-${process.pid}-`));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const HealthClient = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
const tokens = new TokenVerifier({
  publicKeys: crypto.generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  audience: 'tetrix-node-test',
});
const audit = createAuditLog(pino({ level: 'silent' }));

type Outcome = { ok: true } | { ok: false; code: grpc.status; details: string };

// A fresh connection per check: grpc-js would otherwise reuse a subchannel made with other credentials.
const CLIENT_OPTIONS = { 'grpc.use_local_subchannel_pool': 1, 'grpc.ssl_target_name_override': 'localhost' };

function check(port: number, creds: grpc.ChannelCredentials, client?: grpc.Client): Promise<Outcome> {
  const c = client ?? new HealthClient(`127.0.0.1:${port}`, creds, CLIENT_OPTIONS);
  return new Promise((resolve) => {
    (c as any).check({ service: '' }, { deadline: Date.now() + 10_000 }, (err: grpc.ServiceError | null) => {
      if (!client) c.close();
      resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true });
    });
  });
}

async function startServer(t: Tap, creds: MtlsServerCredentials): Promise<{ port: number; health: HealthImplementation }> {
  const server = new grpc.Server();
  const health = new HealthImplementation({ '': 'SERVING' });
  health.addToServer(server);
  // The test clients act as operators, so a call without a user token is judged on its certificate alone.
  const interceptor = createAuthInterceptor({
    transport: 'mtls',
    tokens,
    audit,
    checkPeer: (c) => creds.checkPeer(c),
    operatorIdentities: [`dns:${ADMIN_IDENTITY}`, 'dns:carol.tetrix.test', 'dns:mallory.tetrix.test'],
  });
  const secured = grpc.experimental.createServerCredentialsWithInterceptors(creds, [interceptor]);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', secured, (err, p) => (err ? reject(err) : resolve(p))),
  );
  t.teardown(() => {
    server.forceShutdown();
    creds.close();
  });
  return { port, health };
}

function clientCreds(ca: string | Buffer, leaf?: IssuedCertificate): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(
    Buffer.from(ca),
    leaf ? Buffer.from(leaf.keyPem) : null,
    leaf ? Buffer.from(leaf.certPem) : null,
  );
}

/** Raw TLS to the port with a version ceiling; resolves with the negotiated protocol or the error. */
function rawTls(port: number, pki: { ca: Buffer; cert: Buffer; key: Buffer }, maxVersion: tls.SecureVersion): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', maxVersion, ALPNProtocols: ['h2'], ...pki });
    s.on('secureConnect', () => {
      resolve(`connected ${s.getProtocol()}`);
      s.destroy();
    });
    s.on('error', (err) => resolve(`refused: ${err.message}`));
  });
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function writeAtomic(file: string, data: string): void {
  fs.writeFileSync(`${file}.new`, data, { mode: 0o600 });
  fs.renameSync(`${file}.new`, file);
}

const mode = (p: string): number => fs.statSync(p).mode & 0o777;

let pki: NodePki;
let nodeCa: CertificateAuthority;
const stateDir = path.join(tmp, 'state');

t.before(async () => {
  pki = await ensureNodePki({ stateDir, hostname: 'tetrix-node-test', addresses: ['10.9.8.7'], nodeDomain: 'ws.tetrix.test' });
  nodeCa = { certPem: fs.readFileSync(pki.caCertPath, 'utf8'), keyPem: fs.readFileSync(pki.caKeyPath, 'utf8') };
});

function nodeServerOptions(extra: Partial<MtlsServerOptions> = {}): MtlsServerOptions {
  return {
    files: { certPath: pki.serverCertPath, keyPath: pki.serverKeyPath, caPath: pki.caCertPath },
    intervalMs: 100,
    ...extra,
  };
}

const adminCreds = (): Promise<grpc.ChannelCredentials> =>
  createClientCredentials({ caPath: pki.caCertPath, certPath: pki.adminCertPath, keyPath: pki.adminKeyPath });

t.test('first start generates a private node PKI, later starts keep it', async (t) => {
  t.equal(mode(pki.dir), 0o700, 'pki directory is 0700');
  for (const key of [pki.caKeyPath, pki.serverKeyPath, pki.adminKeyPath, pki.endpointKeyPath!]) {
    t.equal(mode(key), 0o600, `${path.basename(key)} is 0600`);
  }
  const ca = new crypto.X509Certificate(fs.readFileSync(pki.caCertPath));
  t.ok(ca.ca, 'the node CA is a CA');
  const server = new crypto.X509Certificate(fs.readFileSync(pki.serverCertPath));
  t.ok(server.checkIssued(ca) && server.verify(ca.publicKey), 'server certificate is signed by the node CA');
  t.ok(server.checkHost('tetrix-node-test'), 'server certificate names the hostname');
  for (const ip of ['127.0.0.1', '::1', '10.9.8.7']) t.ok(server.checkIP(ip), `server certificate names ${ip}`);
  const admin = new crypto.X509Certificate(fs.readFileSync(pki.adminCertPath));
  t.match(admin.subject, /CN=tetrix-admin/, 'admin certificate is tetrix-admin');
  t.match(admin.subjectAltName ?? '', /DNS:tetrix-admin/);
  t.ok(admin.checkIssued(ca), 'admin certificate is signed by the node CA');
  const endpoints = new crypto.X509Certificate(fs.readFileSync(pki.endpointCertPath!));
  t.ok(endpoints.checkHost('8080-ws1.ws.tetrix.test'), 'endpoint certificate covers <port>-<id>.<domain>');

  const before = fs.readFileSync(pki.serverCertPath, 'utf8');
  fs.chmodSync(pki.adminKeyPath, 0o644);
  await ensureNodePki({ stateDir, hostname: 'tetrix-node-test', addresses: ['10.9.8.7'], nodeDomain: 'ws.tetrix.test' });
  t.equal(fs.readFileSync(pki.serverCertPath, 'utf8'), before, 'a second start reuses the server certificate');
  t.equal(fs.readFileSync(pki.caCertPath, 'utf8'), nodeCa.certPem, 'and the CA');
  t.equal(mode(pki.adminKeyPath), 0o600, 'and puts a loosened key mode back to 0600');

  const other = path.join(tmp, 'state-moved');
  fs.cpSync(stateDir, other, { recursive: true });
  const moved = await ensureNodePki({ stateDir: other, hostname: 'tetrix-node-test', addresses: ['10.9.8.8'] });
  const reissued = new crypto.X509Certificate(fs.readFileSync(moved.serverCertPath));
  t.ok(reissued.checkIP('10.9.8.8') && !reissued.checkIP('10.9.8.7'), 'a changed address reissues the server certificate');
  t.equal(fs.readFileSync(moved.caCertPath, 'utf8'), nodeCa.certPem, 'from the same CA');
});

// Issue 13, item 11: the generated admin certificate carries the configured operator identity's SAN.
t.test('the admin certificate carries the operator identity it is generated for, and is reissued when it changes', async (t) => {
  const dir = path.join(tmp, 'state-admin-identity');
  const first = await ensureNodePki({ stateDir: dir, hostname: 'tetrix-node-test' });
  const dnsAdmin = new crypto.X509Certificate(fs.readFileSync(first.adminCertPath));
  t.equal(dnsAdmin.subjectAltName, 'DNS:tetrix-admin', 'by default: the DNS SAN tetrix-admin (operatorIdentities dns:tetrix-admin)');
  const spiffe = 'spiffe://tetrix.test/ops/admin';
  const again = await ensureNodePki({ stateDir: dir, hostname: 'tetrix-node-test', adminIdentity: parseOperatorIdentity(`uri:${spiffe}`) });
  const uriAdmin = new crypto.X509Certificate(fs.readFileSync(again.adminCertPath));
  t.equal(uriAdmin.subjectAltName, `URI:${spiffe}`, 'configured as a URI: the admin certificate is reissued with that URI SAN');
  t.match(uriAdmin.subject, /CN=tetrix-admin/, 'and keeps its CN');
  for (const bad of ['tetrix-admin', 'email:tetrix-admin', 'uri:', 'dns:two words']) {
    t.throws(() => parseOperatorIdentity(bad), { message: /^operatorIdentities: .* needs a name type/ }, `"${bad}" is not an operator identity`);
  }
});

t.test('the generated admin certificate gets in; everything else is refused', async (t) => {
  const creds = await MtlsServerCredentials.load(nodeServerOptions());
  const { port } = await startServer(t, creds);

  t.same(await check(port, await adminCreds()), { ok: true }, 'tetrix-admin over mTLS succeeds');

  const otherCa = await createCertificateAuthority('tetrix-test-foreign-ca');
  const foreign = await issueCertificate(otherCa, { commonName: 'tetrix-admin', usage: 'client', dnsNames: ['tetrix-admin'] });
  const wrongCa = await check(port, clientCreds(nodeCa.certPem, foreign));
  t.match(wrongCa, { ok: false, code: grpc.status.UNAVAILABLE }, 'a client certificate from another CA is refused');

  const expired = await issueCertificate(nodeCa, {
    commonName: 'tetrix-admin',
    usage: 'client',
    dnsNames: ['tetrix-admin'],
    notBefore: new Date(Date.now() - 2 * 86400_000),
    notAfter: new Date(Date.now() - 86400_000),
  });
  t.match(await check(port, clientCreds(nodeCa.certPem, expired)), { ok: false, code: grpc.status.UNAVAILABLE }, 'an expired client certificate is refused');

  t.match(await check(port, clientCreds(nodeCa.certPem)), { ok: false, code: grpc.status.UNAVAILABLE }, 'a client without a certificate is refused');

  t.match(await check(port, grpc.credentials.createInsecure()), { ok: false, code: grpc.status.UNAVAILABLE }, 'a plaintext client is refused');

  const material = { ca: fs.readFileSync(pki.caCertPath), cert: fs.readFileSync(pki.adminCertPath), key: fs.readFileSync(pki.adminKeyPath) };
  t.match(await rawTls(port, material, 'TLSv1.2'), /^refused: .*protocol version/, 'a TLS 1.2-only client is refused in the handshake');
  t.equal(await rawTls(port, material, 'TLSv1.3'), 'connected TLSv1.3', 'the same client with TLS 1.3 completes the handshake');
});

t.test('allow-list and deny list by identity, and a CRL', async (t) => {
  const mallory = await issueCertificate(nodeCa, { commonName: 'mallory', usage: 'client', dnsNames: ['mallory.tetrix.test'] });
  const carol = await issueCertificate(nodeCa, { commonName: 'carol', usage: 'client', dnsNames: ['carol.tetrix.test'] });
  const denyFile = path.join(tmp, 'deny.txt');
  fs.writeFileSync(denyFile, '# revoked client identities\n');

  t.test('allow-list', async (t) => {
    const creds = await MtlsServerCredentials.load(nodeServerOptions({ allow: [ADMIN_IDENTITY, 'carol.tetrix.test'] }));
    const { port } = await startServer(t, creds);
    t.same(await check(port, await adminCreds()), { ok: true }, 'tetrix-admin is on the list');
    t.same(await check(port, clientCreds(nodeCa.certPem, carol)), { ok: true }, 'carol (by SAN) is on the list');
    t.match(await check(port, clientCreds(nodeCa.certPem, mallory)), { ok: false, code: grpc.status.UNAUTHENTICATED }, 'a valid certificate not on the list is refused');
  });

  t.test('deny list file, reloaded while connected', async (t) => {
    const creds = await MtlsServerCredentials.load(nodeServerOptions({ files: { ...nodeServerOptions().files, denyListPath: denyFile }, deny: ['sha256:' + new crypto.X509Certificate(carol.certPem).fingerprint256] }));
    const { port } = await startServer(t, creds);
    t.match(await check(port, clientCreds(nodeCa.certPem, carol)), { ok: false, code: grpc.status.UNAUTHENTICATED }, 'a certificate denied by fingerprint is refused');
    const client = new HealthClient(`127.0.0.1:${port}`, clientCreds(nodeCa.certPem, mallory), CLIENT_OPTIONS);
    t.teardown(() => client.close());
    t.same(await check(port, clientCreds(nodeCa.certPem, mallory), client), { ok: true }, 'mallory gets in before being denied');
    writeAtomic(denyFile, '# revoked\nMALLORY\n');
    await waitFor('deny list reload', async () => !(await check(port, clientCreds(nodeCa.certPem, mallory), client)).ok);
    t.match(await check(port, clientCreds(nodeCa.certPem, mallory), client), { ok: false, code: grpc.status.UNAUTHENTICATED, details: /mallory.*denied/ }, 'once denied, mallory is refused on the connection she already had');
    t.same(await check(port, await adminCreds()), { ok: true }, 'others are not affected');
  });

  t.test('CRL', async (t) => {
    const crlFile = path.join(tmp, 'node-ca.crl');
    fs.writeFileSync(crlFile, await createRevocationList(nodeCa, [mallory.serialNumber]));
    const creds = await MtlsServerCredentials.load(nodeServerOptions({ files: { ...nodeServerOptions().files, crlPath: crlFile } }));
    const { port } = await startServer(t, creds);
    t.match(await check(port, clientCreds(nodeCa.certPem, mallory)), { ok: false, code: grpc.status.UNAVAILABLE }, 'a revoked certificate fails the handshake');
    t.same(await check(port, await adminCreds()), { ok: true }, 'a certificate not on the CRL gets in');
  });
});

t.test('operator certificates reload without a restart and without dropping open streams', async (t) => {
  const dir = path.join(tmp, 'operator');
  fs.mkdirSync(dir, { mode: 0o700 });
  const files = { certPath: path.join(dir, 'tls.crt'), keyPath: path.join(dir, 'tls.key'), caPath: path.join(dir, 'clients-ca.crt') };
  const generation = async (name: string) => {
    const ca = await createCertificateAuthority(`tetrix-test-${name}`);
    const server = await issueCertificate(ca, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
    const client = await issueCertificate(ca, { commonName: ADMIN_IDENTITY, usage: 'client', dnsNames: [ADMIN_IDENTITY] });
    return { ca, server, client };
  };
  const a = await generation('a');
  const b = await generation('b');
  const install = (g: typeof a): void => {
    writeAtomic(files.keyPath, g.server.keyPem);
    writeAtomic(files.certPath, g.server.certPem);
    writeAtomic(files.caPath, g.ca.certPem);
  };
  install(a);
  const creds = await MtlsServerCredentials.load({ files, intervalMs: 100 });
  const { port, health } = await startServer(t, creds);
  t.same(await check(port, clientCreds(a.ca.certPem, a.client)), { ok: true }, 'generation A serves');

  const watcher = new HealthClient(`127.0.0.1:${port}`, clientCreds(a.ca.certPem, a.client), CLIENT_OPTIONS);
  t.teardown(() => watcher.close());
  const stream = (watcher as any).watch({ service: '' }) as grpc.ClientReadableStream<{ status: string }>;
  const seen: string[] = [];
  stream.on('data', (m) => seen.push(m.status));
  stream.on('error', () => undefined); // cancelled at teardown
  t.teardown(() => stream.cancel());
  await waitFor('the stream to open', async () => seen.length > 0);
  t.same(seen, ['SERVING']);

  install(b);
  await waitFor('generation B', async () => (await check(port, clientCreds(b.ca.certPem, b.client))).ok);
  t.pass('a new connection with generation B credentials succeeds');
  t.match(await check(port, clientCreds(a.ca.certPem, a.client)), { ok: false, code: grpc.status.UNAVAILABLE }, 'a new connection with generation A credentials is refused');
  const material = { ca: Buffer.from(b.ca.certPem), cert: Buffer.from(b.client.certPem), key: Buffer.from(b.client.keyPem) };
  t.match(await rawTls(port, material, 'TLSv1.2'), /^refused: /, 'TLS 1.2 is still refused after the reload');

  health.setStatus('', 'NOT_SERVING');
  await waitFor('the open stream to deliver', async () => seen.length > 1);
  t.same(seen, ['SERVING', 'NOT_SERVING'], 'the stream opened before the reload keeps flowing');

  fs.writeFileSync(files.certPath, 'not a certificate');
  await creds.reload();
  t.same(await check(port, clientCreds(b.ca.certPem, b.client)), { ok: true }, 'a broken file keeps the previous certificates');
});
