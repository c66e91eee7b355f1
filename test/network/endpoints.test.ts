// The workspace endpoint server with a real target: an HTTP + WebSocket echo server running inside a
// network namespace this test creates (veth pair, private /30), and real HTTPS and WebSocket clients.
// The owner gets through; everyone else, and everything stopped or unknown, gets the same refusal.
import t from 'tap';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import pino from 'pino';
import WebSocket from 'ws';
import { EndpointServer, TOKEN_COOKIE, parseEndpointHost, type EndpointTarget } from '../../src/network/endpoints';
import { TokenVerifier, createEndpointGuard } from '../../src/api/auth';
import { createAuditLog } from '../../src/api/audit';
import { ensureNodePki, issueCertificate } from '../../src/crypto/pki';
import { readTlsMaterial, secureContextOptions } from '../../src/api/tls';

const DOMAIN = 'ws.tetrix.test';
const NODE = 'tetrix-node-endpoints-test';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-ep-${process.pid}-`));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------------------
// The workspace: a network namespace with one end of a veth pair, and an echo server inside it.

const rand = crypto.randomBytes(3).toString('hex');
const netns = `tetrix-ep-${process.pid}-${rand}`;
const vethHost = `tetrix${rand}h`; // interface names are at most 15 bytes
const vethWs = `tetrix${rand}w`;

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function freeSubnet(): { host: string; ws: string } {
  const inUse = execFileSync('ip', ['-o', '-4', 'addr', 'show'], { encoding: 'utf8' });
  for (;;) {
    const b = crypto.randomBytes(3);
    const base = `10.${200 + ((b[0] as number) % 50)}.${b[1]}.${(b[2] as number) & 0xfc}`;
    const prefix = base.split('.').slice(0, 3).join('.') + '.';
    if (!inUse.includes(` ${prefix}`)) {
      const last = Number(base.split('.')[3]);
      return { host: `${prefix}${last + 1}`, ws: `${prefix}${last + 2}` };
    }
  }
}

const TARGET_SCRIPT = `
const http = require('http');
const { WebSocketServer } = require(${JSON.stringify(require.resolve('ws'))});
const [addr, port] = process.argv.slice(2);
const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.setHeader('set-cookie', ['${TOKEN_COOKIE}=planted; Domain=${DOMAIN}', 'app=1']);
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body, servedBy: req.socket.localAddress }));
  });
});
new WebSocketServer({ server }).on('connection', (ws, req) => {
  ws.send('hello from ' + req.socket.localAddress + ' cookie=' + (req.headers.cookie || '') + ' auth=' + (req.headers.authorization || ''));
  ws.on('message', (m) => ws.send('echo: ' + m));
});
server.listen(Number(port), addr, () => console.log('ready'));
`;

let workspaceAddr = '';

async function startWorkspace(t: Tap): Promise<void> {
  const subnet = freeSubnet();
  workspaceAddr = subnet.ws;
  ip('netns', 'add', netns);
  t.teardown(() => ip('netns', 'del', netns));
  ip('link', 'add', vethHost, 'type', 'veth', 'peer', 'name', vethWs);
  t.teardown(() => {
    try {
      ip('link', 'del', vethHost); // removes the peer too
    } catch {
      // already gone with the namespace
    }
  });
  ip('link', 'set', vethWs, 'netns', netns);
  ip('addr', 'add', `${subnet.host}/30`, 'dev', vethHost);
  ip('link', 'set', vethHost, 'up');
  ip('-n', netns, 'link', 'set', 'lo', 'up');
  ip('-n', netns, 'addr', 'add', `${subnet.ws}/30`, 'dev', vethWs);
  ip('-n', netns, 'link', 'set', vethWs, 'up');

  const script = path.join(tmp, 'target.js');
  fs.writeFileSync(script, TARGET_SCRIPT);
  const child: ChildProcess = spawn('ip', ['netns', 'exec', netns, process.execPath, script, subnet.ws, '8080'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // `ip netns exec` execs the command, so this pid is the server itself.
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => (d.toString().includes('ready') ? resolve() : undefined));
    child.on('exit', (code) => reject(new Error(`target exited with ${code}`)));
  });
}

// ---------------------------------------------------------------------------------------------------------
// The node side

const controlPlane = crypto.generateKeyPairSync('ed25519');
function token(sub: string, extra: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const enc = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${enc({ alg: 'EdDSA', typ: 'JWT' })}.${enc({ sub, teams: [], aud: NODE, iat: now, exp: now + 300, ...extra })}`;
  return `${input}.${crypto.sign(null, Buffer.from(input), controlPlane.privateKey).toString('base64url')}`;
}

type Tap = typeof t;
interface Reply {
  status: number;
  body: string;
  headers: http.IncomingHttpHeaders;
}

const auditLines: string[] = [];
const routes = new Map<string, EndpointTarget & { exposed: number[] }>();
let port = 0;
let ca: Buffer;
let server: EndpointServer<unknown>;

t.before(async () => {
  await startWorkspace(t);
  const pki = await ensureNodePki({ stateDir: path.join(tmp, 'state'), hostname: 'localhost', nodeDomain: DOMAIN });
  ca = fs.readFileSync(pki.caCertPath);
  const material = await readTlsMaterial({ certPath: pki.endpointCertPath!, keyPath: pki.endpointKeyPath! });
  const audit = createAuditLog(pino({ level: 'info' }, { write: (l: string) => void auditLines.push(l) }));
  const tokens = new TokenVerifier({ publicKeys: controlPlane.publicKey.export({ type: 'spki', format: 'pem' }).toString(), audience: NODE });
  routes.set('ws-alice', { host: workspaceAddr, port: 8080, ownerId: 'alice', running: true, exposed: [8080, 9090] });
  routes.set('ws-alice-old', { host: workspaceAddr, port: 8080, ownerId: 'alice', running: false, exposed: [8080] });
  server = new EndpointServer({
    nodeDomain: DOMAIN,
    tls: secureContextOptions(material),
    guard: createEndpointGuard(tokens, audit),
    resolve: async (id, p) => {
      const r = routes.get(id);
      return r && r.exposed.includes(p) ? { host: r.host, port: p, ownerId: r.ownerId, running: r.running } : undefined;
    },
  });
  port = (await server.listen(0, '127.0.0.1')).port;
  t.teardown(() => server.close());
});

function get(name: string, headers: Record<string, string> = {}, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, servername: name, ca, method: body ? 'POST' : 'GET', path: '/some/path?q=1', headers: { host: name, ...headers }, agent: false },
      (res) => {
        let data = '';
        res.on('data', (c) => (data += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: data, headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function openWs(name: string, headers: Record<string, string>): Promise<{ messages: string[]; ws: WebSocket } | { refused: number }> {
  return new Promise((resolve, reject) => {
    // servername reaches tls.connect through ws's options, though ws's types do not list it.
    const options: WebSocket.ClientOptions & { servername: string } = { ca, servername: name, headers: { host: name, ...headers } };
    const ws = new WebSocket(`wss://127.0.0.1:${port}/socket`, options);
    const messages: string[] = [];
    ws.on('message', (m) => {
      messages.push(m.toString());
      if (messages.length === 1) resolve({ messages, ws });
    });
    ws.on('unexpected-response', (_req, res) => {
      resolve({ refused: res.statusCode ?? 0 });
      ws.terminate();
    });
    ws.on('error', reject);
  });
}

const alice = (): Record<string, string> => ({ authorization: `Bearer ${token('alice')}` });
const A = `8080-ws-alice.${DOMAIN}`;

t.test('host names', async (t) => {
  t.same(parseEndpointHost(`8080-ws-1.${DOMAIN}:443`, DOMAIN), { port: 8080, workspaceId: 'ws-1' });
  t.same(parseEndpointHost(`8080-WS-1.${DOMAIN.toUpperCase()}.`, DOMAIN), { port: 8080, workspaceId: 'ws-1' });
  for (const bad of [`70000-ws.${DOMAIN}`, `0-ws.${DOMAIN}`, `ws.${DOMAIN}`, `8080-ws.evil.test`, `8080-ws.x${DOMAIN}`, `8080-ws.a.${DOMAIN}`, '']) {
    t.equal(parseEndpointHost(bad, DOMAIN), undefined, `not an endpoint: '${bad}'`);
  }
});

t.test('the owner reaches the workspace over HTTPS, and the workspace never sees the token', async (t) => {
  const r = await get(A, { ...alice(), cookie: 'theme=dark', 'x-forwarded-for': '6.6.6.6' }, 'hello body');
  t.equal(r.status, 200);
  const seen = JSON.parse(r.body);
  t.equal(seen.servedBy, workspaceAddr, 'served from inside the workspace network namespace');
  t.match(seen, { method: 'POST', url: '/some/path?q=1', body: 'hello body' }, 'method, path and body arrive');
  t.equal(seen.headers.authorization, undefined, 'the Authorization header is not forwarded');
  t.equal(seen.headers.cookie, 'theme=dark', 'other cookies are');
  t.equal(seen.headers['x-forwarded-proto'], 'https');
  t.equal(seen.headers['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For is the node\'s, not the client\'s');
  t.same(r.headers['set-cookie'], ['app=1'], 'the workspace cannot plant a token cookie');

  const byCookie = await get(A, { cookie: `a=1; ${TOKEN_COOKIE}=${token('alice')}; b=2` });
  t.equal(byCookie.status, 200, 'the tetrix_token cookie works too');
  t.equal(JSON.parse(byCookie.body).headers.cookie, 'a=1; b=2', 'and is removed before forwarding');
});

t.test('the owner gets a WebSocket echo', async (t) => {
  for (const [how, headers] of [
    ['Authorization header', alice()],
    ['cookie', { cookie: `${TOKEN_COOKIE}=${token('alice')}` }],
  ] as const) {
    const opened = await openWs(A, headers);
    if (!('ws' in opened)) {
      t.fail(`refused with ${opened.refused}`);
      continue;
    }
    t.equal(opened.messages[0], `hello from ${workspaceAddr} cookie= auth=`, `${how}: connected into the workspace, token not forwarded`);
    opened.ws.send('ping');
    await new Promise<void>((resolve) => opened.ws.once('message', () => resolve()));
    t.equal(opened.messages[1], 'echo: ping', `${how}: echo`);
    opened.ws.close();
  }
});

t.test('everyone else gets the same refusal, and nothing about whether the workspace exists', async (t) => {
  const forbidden = await get(A, { authorization: `Bearer ${token('mallory')}` });
  t.equal(forbidden.status, 403, "another user's token: 403");
  const same = (r: Reply, what: string): void => {
    t.equal(r.status, forbidden.status, `${what}: same status`);
    t.equal(r.body, forbidden.body, `${what}: same body`);
  };
  same(await get(`8080-ws-nobody.${DOMAIN}`, alice()), 'unknown workspace');
  same(await get(`8080-ws-nobody.${DOMAIN}`, { authorization: `Bearer ${token('mallory')}` }), 'unknown workspace, other user');
  same(await get(`8080-ws-alice-old.${DOMAIN}`, alice()), 'stopped workspace, owner');
  same(await get(`7070-ws-alice.${DOMAIN}`, alice()), 'port not exposed, owner');

  const none = await get(A);
  t.equal(none.status, 401, 'no token: 401');
  t.equal(none.headers['www-authenticate'], 'Bearer');
  const expired = await get(A, { authorization: `Bearer ${token('alice', { exp: Math.floor(Date.now() / 1000) - 3600 })}` });
  t.equal(expired.status, 401, 'expired token: 401');
  t.equal(expired.body, none.body, 'the same 401 whatever is wrong with the token');
  t.equal((await get(A, { authorization: `Bearer ${token('alice', { aud: 'tetrix-node-other' })}` })).status, 401, 'token for another node: 401');
  t.equal((await get(`8080-ws-nobody.${DOMAIN}`)).body, none.body, 'without a token an unknown workspace looks the same');

  t.match(await openWs(A, { authorization: `Bearer ${token('mallory')}` }), { refused: 403 }, 'WebSocket, other user: refused');
  t.match(await openWs(A, {}), { refused: 401 }, 'WebSocket, no token: refused');
  t.match(await openWs(`8080-ws-alice-old.${DOMAIN}`, alice()), { refused: 403 }, 'WebSocket, stopped workspace: refused');

  t.equal((await get(`ws-alice.${DOMAIN}`, alice())).status, 404, 'a name that is not an endpoint: 404');
});

t.test('a workspace that stops loses its route', async (t) => {
  t.equal((await get(A, alice())).status, 200);
  const route = routes.get('ws-alice')!;
  routes.set('ws-alice', { ...route, running: false });
  t.teardown(() => routes.set('ws-alice', route));
  t.equal((await get(A, alice())).status, 403, 'the owner is refused once it is not RUNNING');
});

t.test('an exposed port with nothing listening is 502, for the owner only', async (t) => {
  t.equal((await get(`9090-ws-alice.${DOMAIN}`, alice())).status, 502);
  t.equal((await get(`9090-ws-alice.${DOMAIN}`, { authorization: `Bearer ${token('mallory')}` })).status, 403);
});

t.test('no plaintext, no TLS 1.2', async (t) => {
  const plain = await new Promise<string>((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, headers: { host: A, ...alice() } }, (res) => resolve(`answered ${res.statusCode}`));
    req.on('error', (err) => resolve(`refused: ${err.message}`));
  });
  t.match(plain, /^refused/, 'plain HTTP to the endpoint port gets no answer');
  const old = await new Promise<string>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: A, ca, maxVersion: 'TLSv1.2' });
    s.on('secureConnect', () => resolve(`connected ${s.getProtocol()}`));
    s.on('error', (err) => resolve(`refused: ${err.message}`));
  });
  t.match(old, /^refused: .*protocol version/, 'a TLS 1.2 client is refused in the handshake');
});

t.test('a new certificate applies to new connections', async (t) => {
  const serialOf = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, servername: A, ca }, () => {
        resolve(s.getPeerCertificate().serialNumber);
        s.destroy();
      });
      s.on('error', reject);
    });
  const before = await serialOf();
  const nodeCa = { certPem: ca.toString(), keyPem: fs.readFileSync(path.join(tmp, 'state', 'pki', 'ca.key'), 'utf8') };
  const next = await issueCertificate(nodeCa, { commonName: `*.${DOMAIN}`, usage: 'server', dnsNames: [`*.${DOMAIN}`] });
  server.setSecureContext({ cert: next.certPem, key: next.keyPem });
  const after = await serialOf();
  t.not(after, before, 'the new certificate is served');
  t.equal(after.toLowerCase().replace(/^0+/, ''), next.serialNumber.toLowerCase().replace(/^0+/, ''));
  const old = await new Promise<string>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: A, ca, maxVersion: 'TLSv1.2' });
    s.on('secureConnect', () => resolve('connected'));
    s.on('error', () => resolve('refused'));
  });
  t.equal(old, 'refused', 'and TLS 1.2 stays refused after the swap');
});

t.test('every decision is audited, without tokens', async (t) => {
  const events = auditLines.map((l) => JSON.parse(l) as Record<string, unknown>);
  t.ok(events.some((e) => e.who === 'user:alice' && e.decision === 'allow' && e.via === 'endpoint' && e.workspace === 'ws-alice'), 'allowed access');
  t.ok(events.some((e) => e.who === 'user:mallory' && e.decision === 'deny' && e.reason === 'not the owner'), 'foreign user');
  t.ok(events.some((e) => e.who === 'user:alice' && e.decision === 'deny' && e.reason === 'workspace not running'), 'stopped workspace');
  t.ok(events.some((e) => e.who === 'anonymous' && e.decision === 'deny' && e.reason === 'token: missing'), 'no token');
  t.ok(events.some((e) => e.decision === 'deny' && e.reason === 'token: expired (exp)'), 'expired token');
  t.notOk(auditLines.join('').includes('eyJ'), 'no JWT in the audit log');
});
