// Registry credentials: docker-registry with token auth (the WWW-Authenticate Bearer challenge, a token
// service run by the test) and with htpasswd basic auth, credentials from a 0600 Docker config.json. The
// password and tokens never appear in an error.
import t from 'tap';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { importPKCS8, SignJWT } from 'jose';
import { OciImageStore } from '../../src/images/store';
import { buildImages, makeTestCa, startRegistry } from './fixture';

const USER = 'alice';
const PASSWORD = `pw-${crypto.randomBytes(6).toString('hex')}`;

function authFile(dir: string, host: string, mode: number, password = PASSWORD): string {
  const file = path.join(dir, `auth-${crypto.randomBytes(3).toString('hex')}.json`);
  fs.writeFileSync(file, JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${USER}:${password}`).toString('base64') } } }), { mode });
  fs.chmodSync(file, mode);
  return file;
}

t.test('pulls with registry credentials', async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-images-auth-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const ca = makeTestCa(path.join(work, 'ca'));
  const open = await startRegistry(t, ca);
  const built = buildImages(work, open, ca, 'auth');
  const ref = (host: string): string => built.refs.base.replace(open.host, host);

  // The token service: Ed25519 is not in distribution 2.8's list, so ES256 with the signing cert in x5c.
  const keyFile = path.join(work, 'token.key');
  const certFile = path.join(work, 'token.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=tetrix test token signer'], { stdio: 'ignore' });
  const pkcs8 = execFileSync('openssl', ['pkcs8', '-topk8', '-nocrypt', '-in', keyFile], { encoding: 'utf8' });
  const signer = await importPKCS8(pkcs8, 'ES256');
  const der = new crypto.X509Certificate(fs.readFileSync(certFile)).raw.toString('base64');
  const tokenRequests: string[] = [];
  const tokens = https.createServer({ cert: fs.readFileSync(ca.certFile), key: fs.readFileSync(ca.keyFile) }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://x');
    tokenRequests.push(url.search);
    if (req.headers.authorization !== `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`) return void res.writeHead(401).end();
    const [, name, actions] = (url.searchParams.get('scope') ?? '').split(':');
    void new SignJWT({ access: [{ type: 'repository', name, actions: actions.split(',') }] })
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT', x5c: [der] })
      .setIssuer('tetrix-test-issuer').setAudience(url.searchParams.get('service') ?? '').setSubject(USER)
      .setIssuedAt().setNotBefore('0s').setExpirationTime('5m').setJti(crypto.randomBytes(8).toString('hex'))
      .sign(signer).then((token) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, expires_in: 300 })));
  });
  await new Promise<void>((r) => tokens.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => tokens.close(() => r())));
  const realm = `https://127.0.0.1:${(tokens.address() as { port: number }).port}/token`;
  const tokenAuth = await startRegistry(t, ca, { dataDir: open.dataDir, token: { realm, issuer: 'tetrix-test-issuer', service: 'tetrix-test-registry', rootCertBundle: certFile } });
  const bcrypt = execFileSync('python3', ['-W', 'ignore', '-c', `import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))`, PASSWORD], { encoding: 'utf8' }).trim();
  const basicAuth = await startRegistry(t, ca, { dataDir: open.dataDir, htpasswd: `${USER}:${bcrypt}\n` });

  const storeWith = (name: string, file?: string): Promise<OciImageStore> => {
    const s = new OciImageStore({ stateDir: path.join(work, name), registry: { caFile: ca.caFile, ...(file ? { authFile: file } : {}) } });
    return s.open().then(() => s);
  };
  const noSecret = (err: unknown): boolean => !String((err as Error).message).includes(PASSWORD) && !/eyJ/.test(String((err as Error).message));

  for (const [kind, registry] of [['token', tokenAuth], ['basic', basicAuth]] as const) {
    await t.test(`${kind} auth`, async (t) => {
      const anonymous = await storeWith(`${kind}-anon`);
      const e1 = await anonymous.pull(ref(registry.host)).catch((e: unknown) => e);
      t.match(e1, { code: 'UNAUTHENTICATED' }, 'without credentials');
      const loose = await storeWith(`${kind}-loose`, authFile(work, registry.host, 0o644));
      await t.rejects(loose.pull(ref(registry.host)), { code: 'FAILED_PRECONDITION', message: /must be mode 0600/ }, 'a readable auth file is refused');
      const wrong = await storeWith(`${kind}-wrong`, authFile(work, registry.host, 0o600, 'not-the-password'));
      const e2 = await wrong.pull(ref(registry.host)).catch((e: unknown) => e);
      t.match(e2, { code: 'UNAUTHENTICATED' }, 'a wrong password');
      const good = await storeWith(`${kind}-good`, authFile(work, registry.host, 0o600));
      const img = await good.pull(ref(registry.host));
      t.match(img.digest, /^sha256:/, 'pulled with the credentials');
      t.ok([e1, e2].every(noSecret), 'no password or token in an error');
    });
  }
  t.ok(tokenRequests.every((q) => q.includes('scope=repository%3Aauth%2Fbase%3Apull')), 'tokens asked for pull of the repository only');
});
