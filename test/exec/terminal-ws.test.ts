// The browser terminal through the real daemon's endpoint server (HTTPS + WebSocket, TLS 1.3), with a real
// WebSocket client (ws): a session opened at wss://terminal-<id>.<domain>/exec, its size and a resize, the
// tab closed (the session lives on), re-attached with the cookie; refused alike for someone else's
// workspace and an unknown one, refused without a token and from another site's page.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';
import type { ListSessionsResponse__Output } from '../../src/generated/tetrix/agent/v1/ListSessionsResponse';
import { uniqueName, type Daemon } from '../helpers/daemon';
import { eventually, execDaemon, sleeper } from './fixture';

const DOMAIN = `${uniqueName('tetrix')}.test`;

interface Terminal {
  ws: WebSocket;
  output(): string;
  control: Array<Record<string, unknown>>;
  closed: Promise<{ code: number; reason: string }>;
}

function endpointPort(d: Daemon): number {
  return (JSON.parse([...d.output].reverse().find((l) => l.includes('tetrixd serving'))!) as { endpointPort: number }).endpointPort;
}

/** Opens the terminal WebSocket; resolves once open, or with the HTTP status that refused it. */
function openTerminal(d: Daemon, workspaceId: string, urlPath: string, headers: Record<string, string>): Promise<Terminal | { status: number }> {
  const host = `terminal-${workspaceId}.${DOMAIN}`;
  const ws = new WebSocket(`wss://127.0.0.1:${endpointPort(d)}${urlPath}`, {
    headers: { host, ...headers }, servername: host, ca: fs.readFileSync(path.join(d.stateDir, 'pki', 'ca.crt')), handshakeTimeout: 10_000,
  });
  let out = '';
  const control: Array<Record<string, unknown>> = [];
  ws.on('message', (data: Buffer, binary: boolean) => {
    if (binary) out += data.toString('latin1');
    else control.push(JSON.parse(data.toString()) as Record<string, unknown>);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  return new Promise((resolve, reject) => {
    ws.on('open', () => resolve({ ws, output: () => out, control, closed }));
    ws.on('unexpected-response', (_req, res) => resolve({ status: res.statusCode ?? 0 }));
    ws.on('error', reject);
  });
}

function listSessions(d: Daemon, id: string): Promise<ListSessionsResponse__Output> {
  return new Promise((resolve, reject) => d.clients.exec.ListSessions({ workspaceId: id }, (err, res) => (err ? reject(err) : resolve(res!))));
}

t.test('a browser terminal over the endpoint server', async (t) => {
  const { d, token } = await execDaemon(t, ['--endpoint-listen', '127.0.0.1:0', '--node-domain', DOMAIN]);
  await sleeper(d, 'ex-web', 'alice');
  const alice = token('alice');

  const term = await openTerminal(d, 'ex-web', '/exec?cmd=/bin/sh&rows=30&cols=90', { authorization: `Bearer ${alice}` });
  if ('status' in term) throw new Error(`refused: ${term.status}`);
  await eventually('the started message', () => term.control.some((c) => c.type === 'started'));
  const session = String(term.control.find((c) => c.type === 'started')!.session);
  t.match(session, /^s-[0-9a-f]{16}$/);
  term.ws.send(Buffer.from('stty size\n'));
  await eventually('the size', () => term.output().includes('30 90'));
  term.ws.send(JSON.stringify({ type: 'resize', rows: 41, cols: 123 }));
  term.ws.send(Buffer.from('stty size\n'));
  await eventually('the new size', () => term.output().includes('41 123'));
  t.pass('the pty has the size asked, then the resize');
  term.ws.close(); // the tab is closed
  await term.closed;
  await eventually('the session to be detached', async () => (await listSessions(d, 'ex-web')).sessions.some((s) => s.sessionId === session && !s.attached && s.running));
  t.pass('the session outlives its browser tab');

  const back = await openTerminal(d, 'ex-web', `/attach/${session}`, { cookie: `tetrix_token=${alice}` });
  if ('status' in back) throw new Error(`refused: ${back.status}`);
  await eventually('the replay', () => back.output().includes('41 123'));
  t.match(back.control[0], { type: 'started', session, replayed: true });
  back.ws.send(Buffer.from('exit 6\n'));
  const closed = await back.closed;
  t.match(back.control.at(-1), { type: 'exit', exitCode: 6 });
  t.equal(closed.code, 1000);

  const mallory = token('mallory');
  const foreign = await openTerminal(d, 'ex-web', '/exec', { authorization: `Bearer ${mallory}` });
  const unknown = await openTerminal(d, 'ex-nosuch', '/exec', { authorization: `Bearer ${mallory}` });
  t.same(foreign, { status: 403 }, "someone else's workspace: 403");
  t.same(unknown, foreign, 'exactly as an unknown one');
  t.same(await openTerminal(d, 'ex-web', '/exec', {}), { status: 401 }, 'no token: 401');
  t.same(await openTerminal(d, 'ex-web', '/exec', { cookie: `tetrix_token=${alice}`, origin: 'https://evil.example' }), { status: 403 },
    "another site's page cannot use the owner's cookie (cross-site WebSocket hijacking)");
  const own = await openTerminal(d, 'ex-web', '/exec?cmd=/bin/true', { cookie: `tetrix_token=${alice}`, origin: `https://8080-ex-web.${DOMAIN}` });
  t.notOk('status' in own, "the workspace's own pages may");
  if (!('status' in own)) await own.closed;

  const audit = fs.readFileSync(path.join(d.stateDir, 'audit.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, string>);
  t.ok(audit.some((e) => e.action === 'exec' && e.via === 'endpoint' && e.who === 'user:alice' && e.decision === 'allow'), 'audited as exec via the endpoint');
  t.ok(audit.some((e) => e.action === 'exec' && e.via === 'endpoint' && e.who === 'user:mallory' && e.decision === 'deny'), 'the refusal too');
});
