// A checkout over git's smart HTTP behind HTTPS (a test CA) with a token check (issue 17): the right token
// clones, a wrong one fails clearly, and the token is in no message, no log line and no file of the state
// dir or the workspace (.git/config, remote URL, reflog). Progress is readable while the workspace is CREATING.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startDaemon, uniqueName } from '../helpers/daemon';
import { filesContaining } from '../prebuild/daemon-fixtures';
import { git, makeRepo, makeTestCa, startSmartHttp } from './fixtures';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { WorkspaceEvent__Output } from '../../src/generated/tetrix/agent/v1/WorkspaceEvent';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-source-http-'));
t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
const token = `tok${crypto.randomBytes(16).toString('hex')}`;
const wrongToken = `bad${crypto.randomBytes(16).toString('hex')}`;
const needles = [token, wrongToken, Buffer.from(`x-access-token:${token}`).toString('base64'), Buffer.from(`x-access-token:${wrongToken}`).toString('base64')];

const repo = makeRepo(root, 'app', { files: 300 });
const ca = makeTestCa(path.join(root, 'ca'));

const request = (id: string, url: string, tok: string): StartWorkspaceRequest => ({
  id, ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'],
  content: { git: { url, ref: 'main', token: tok } },
});

t.test('smart HTTP over HTTPS with a token', async (t) => {
  const server = await startSmartHttp(root, ca, token);
  t.teardown(() => server.close());
  const d = await startDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`, '--source-ca-file', ca.caFile]);
  const url = server.url('app.git');

  const id = uniqueName('src-http');
  const events: WorkspaceEvent__Output[] = [];
  const watch = d.clients.workspaces.WatchWorkspaces({ id });
  watch.on('data', (e: WorkspaceEvent__Output) => events.push(e));
  watch.on('error', () => undefined);
  t.teardown(() => watch.cancel());
  const w = await d.start(request(id, url, token));
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
  t.equal(w.source?.commit, repo.commits[repo.commits.length - 1]);
  t.ok(server.requests.some((r) => r.authorized && r.path.endsWith('/git-upload-pack')), 'the pack came over smart HTTP with the token');
  const creating = events.map((e) => e.workspace!).filter((x) => x.state === 'WORKSPACE_STATE_CREATING');
  t.ok(creating.some((x) => x.content?.phase === 'fetching'), 'a CREATING workspace showed phase fetching');
  t.ok(creating.some((x) => x.content?.phase === 'checking-out'), 'and then checking-out, before it ran');

  const content = path.join(d.stateDir, 'workspaces', id, 'content');
  t.equal(git(content, 'remote', 'get-url', 'origin'), url, 'the remote URL is the one asked for, without a credential');
  t.same(filesContaining(path.join(content, '.git'), needles), [], 'no token in .git (config, reflog, FETCH_HEAD, packed refs)');
  t.notOk(git(content, 'config', '--list', '--show-origin').includes('extraheader'), 'no header in the clone\'s config');

  const bad = uniqueName('src-http-bad');
  const err = await d.start(request(bad, url, wrongToken)).then(() => undefined, (e: Error & { code?: number }) => e);
  t.equal(err?.code, 7, 'PERMISSION_DENIED');
  t.match(err?.message ?? '', /content: fetch: the remote refused the credentials/);
  const failed = await d.get(bad);
  t.equal(failed.state, 'WORKSPACE_STATE_FAILED');
  t.equal(failed.content?.failedStep, 'fetch');
  t.equal(failed.content?.attempts, 1, 'bad credentials are not retried');
  for (const n of needles) t.notOk(failed.message.includes(n) || (err?.message ?? '').includes(n), 'no token in the message');

  t.same(filesContaining(d.stateDir, needles), [], 'no token (or its Basic form) in any file of the state dir, the database included');
  t.same(d.output.filter((l) => needles.some((n) => l.includes(n))), [], 'no token in the daemon\'s log');
  await d.teardown(id);
  await d.teardown(bad);
});
