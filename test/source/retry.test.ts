// A git server that dies mid-clone (issue 17): the fetch is retried with backoff; if the server comes back
// the checkout completes, if not the workspace ends FAILED after the bounded attempts with a clear message,
// and nothing is left. A destination the policy refuses is not retried at all.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startDaemon, uniqueName } from '../helpers/daemon';
import { makeRepo, startCuttingRelay, startGitDaemon } from './fixtures';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-source-retry-'));
t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
// About 1.2 MB of incompressible objects: the relay cuts the pack well before its end.
const repo = makeRepo(root, 'big', { files: 300, randomBytes: 2048 });

const request = (id: string, url: string): StartWorkspaceRequest => ({
  id, ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'],
  content: { git: { url, ref: 'main' } },
});

t.test('a server killed mid-clone', async (t) => {
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  const comesBack = await startCuttingRelay(server.port, { cut: 1, afterBytes: 64 * 1024 });
  const staysDead = await startCuttingRelay(server.port, { cut: 1, afterBytes: 64 * 1024, dieAfterCut: true });
  t.teardown(() => comesBack.close());
  t.teardown(() => staysDead.close());
  const d = await startDaemon(t, [
    '--source-allowed-destinations', `127.0.0.1:${comesBack.port},127.0.0.1:${staysDead.port}`,
    '--source-fetch-attempts', '3', '--source-retry-base-ms', '100',
  ]);

  await t.test('cut once: retried, then checked out', async (t) => {
    const id = uniqueName('src-retry');
    const w = await d.start(request(id, `git://127.0.0.1:${comesBack.port}/big.git`));
    t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
    t.equal(w.content?.attempts, 2, 'the second attempt succeeded');
    t.equal(w.source?.commit, repo.commits[repo.commits.length - 1]);
    t.ok(d.output.some((l) => l.includes('"workspace running"') && l.includes(id)));
    await d.teardown(id);
  });

  await t.test('cut, then gone: FAILED after the bounded attempts, nothing left', async (t) => {
    const id = uniqueName('src-dead');
    const err = await d.start(request(id, `git://127.0.0.1:${staysDead.port}/big.git`)).then(() => undefined, (e: Error & { code?: number }) => e);
    t.equal(err?.code, 14, `UNAVAILABLE (${err?.message})`);
    t.match(err?.message ?? '', /content: fetch: .*\(after 3 attempts\)/);
    const w = await d.get(id);
    t.equal(w.state, 'WORKSPACE_STATE_FAILED');
    t.equal(w.reason, 'STOP_REASON_CONTENT_FAILED');
    t.equal(w.content?.attempts, 3);
    t.equal(w.content?.failedStep, 'fetch');
    t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', id)), 'no workspace directory left');
    await d.teardown(id);
  });

  await t.test('a destination the node may not reach is refused at once, not retried', async (t) => {
    const id = uniqueName('src-denied');
    // The git daemon itself, not on the allowed list: loopback is one of the node's own addresses.
    const err = await d.start(request(id, server.url('big.git'))).then(() => undefined, (e: Error & { code?: number }) => e);
    t.equal(err?.code, 7, 'PERMISSION_DENIED');
    t.match(err?.message ?? '', /content: fetch: the fetch may not reach that address/);
    t.equal((await d.get(id)).content?.attempts, 1);
    t.ok(d.output.some((l) => l.includes('source fetch: destination refused') && l.includes(String(server.port))), 'the refusal is logged with its destination');
    await d.teardown(id);
  });
});
