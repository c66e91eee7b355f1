// A workspace's /workspace from a git checkout (issue 17), served by `git daemon` on 127.0.0.1: a branch, a
// tag, a commit, shallow; the resolved commit recorded; the workload starts only on a finished checkout;
// an unknown revision ends FAILED naming the step and leaves nothing behind; bad requests name the field.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ctlMain, startDaemon, uniqueName } from '../helpers/daemon';
import { git, makeRepo, makeSubRepo, startGitDaemon } from './fixtures';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-source-'));
t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));

const sub = makeSubRepo(root, 'sub');
const repo = makeRepo(root, 'app', { files: 2000, submoduleUrl: sub });
// The submodule's URL as the workspace will see it: relative to the served remote.
git(repo.work, 'config', '-f', '.gitmodules', 'submodule.lib/sub.url', '../sub.git');
git(repo.work, 'commit', '-q', '-am', 'relative submodule url');
repo.commits.push(git(repo.work, 'rev-parse', 'HEAD'));
git(repo.work, 'push', '-q', 'origin', 'main');

// Hostile repositories: a filter driver and hooks in the tree (and in the daemon's own ~/.gitconfig, which
// the fetch must not read), and one whose .gitmodules names a submodule URL that is an --upload-pack option.
const marker = path.join(root, `host-marker-${process.pid}`);
const hostileHome = path.join(root, 'hostile-home');
fs.mkdirSync(path.join(hostileHome, 'hooks'), { recursive: true });
fs.writeFileSync(path.join(hostileHome, 'hooks', 'post-checkout'), `#!/bin/sh\ntouch ${marker}-home-hook\n`, { mode: 0o755 });
fs.writeFileSync(path.join(hostileHome, '.gitconfig'), [
  '[core]', `\thooksPath = ${hostileHome}/hooks`, `\tfsmonitor = touch ${marker}-home-fsmonitor`,
  '[filter "evil"]', `\tsmudge = touch ${marker}-home-filter`, '',
].join('\n'));
const evil = makeRepo(root, 'evil', { files: 10 });
fs.writeFileSync(path.join(evil.work, '.gitattributes'), '* filter=evil\n');
fs.mkdirSync(path.join(evil.work, 'hooks'));
fs.writeFileSync(path.join(evil.work, 'hooks', 'post-checkout'), `#!/bin/sh\ntouch ${marker}-tree-hook\n`, { mode: 0o755 });
git(evil.work, 'add', '-A');
git(evil.work, 'commit', '-q', '-m', 'hostile attributes and hooks');
git(evil.work, 'push', '-q', 'origin', 'main');
const evilSub = makeRepo(root, 'evil-sub', { files: 10 });
fs.writeFileSync(path.join(evilSub.work, '.gitmodules'), `[submodule "x"]\n\tpath = x\n\turl = --upload-pack=touch ${marker}-upload-pack\n`);
git(evilSub.work, 'update-index', '--add', '--cacheinfo', `160000,${evilSub.commits[0]},x`);
git(evilSub.work, 'add', '.gitmodules');
git(evilSub.work, 'commit', '-q', '-m', 'a submodule url that is an option');
git(evilSub.work, 'push', '-q', 'origin', 'main');

const request = (id: string, gitSource: Record<string, unknown>, command = ['/bin/sh', '-c', 'cat /workspace/README > /workspace/.seen-by-workload; exec sleep 600']): StartWorkspaceRequest => ({
  id, ownerId: 'alice', image: 'builtin:busybox', command,
  content: { git: { url: '', ref: '', commit: '', depth: 0, filter: '', submodules: false, token: '', ...gitSource } },
});

t.test('git checkouts through the real daemon', async (t) => {
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  const d = await startDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`], { env: { HOME: hostileHome } });
  const content = (id: string): string => path.join(d.stateDir, 'workspaces', id, 'content');
  const head = [...repo.commits].pop()!;

  await t.test('a branch: checked out with history, the commit recorded, the workload saw the finished tree', async (t) => {
    const id = uniqueName('src-branch');
    const w = await d.start(request(id, { url: server.url('app.git'), ref: 'main' }));
    t.equal(w.state, 'WORKSPACE_STATE_RUNNING');
    t.equal(w.source?.commit, head, 'source.commit is the commit the node resolved main to');
    t.equal(w.source?.repositoryUrl, server.url('app.git'));
    t.equal(w.content?.phase, 'ready');
    t.ok(Number(w.content?.objectsTotal) > 2000, `objects counted while fetching (${w.content?.objectsTotal})`);
    await waitForFile(path.join(content(id), '.seen-by-workload'));
    t.equal(fs.readFileSync(path.join(content(id), '.seen-by-workload'), 'utf8'), 'three\n', 'the workload ran on the checked-out tree');
    t.equal(fs.readdirSync(path.join(content(id), 'src')).length, 50);
    t.equal(fs.statSync(path.join(content(id), 'README')).uid, w.hostUidBase, 'files belong to the workspace root, not host root');
    t.equal(git(content(id), 'rev-parse', '--abbrev-ref', 'HEAD'), 'main', 'on branch main');
    t.equal(git(content(id), 'rev-list', '--count', 'HEAD'), String(repo.commits.length), 'full history');
    t.notOk(fs.existsSync(path.join(content(id), 'lib', 'sub', 'SUB')), 'submodules off: not checked out');
    const ctl = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, '--output', 'json', 'get', id], { encoding: 'utf8' });
    t.equal(JSON.parse(ctl.stdout).source.commit, head, 'tetrixctl get shows source.commit');
    const table = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, 'get', id], { encoding: 'utf8' });
    t.match(table.stdout, `source.commit: ${head}`, 'and in its table output');
    await d.teardown(id);
  });

  await t.test('a tag, shallow, with submodules', async (t) => {
    const id = uniqueName('src-tag');
    const w = await d.start(request(id, { url: server.url('app.git'), ref: 'v1.0', depth: 1 }));
    t.equal(w.source?.commit, repo.tagCommit, 'the tag resolved to its commit');
    t.equal(git(content(id), 'rev-list', '--count', 'HEAD'), '1', 'depth 1: one commit');
    await d.teardown(id);
    const id2 = uniqueName('src-sub');
    const w2 = await d.start(request(id2, { url: server.url('app.git'), ref: 'main', depth: 1, submodules: true }));
    t.equal(w2.state, 'WORKSPACE_STATE_RUNNING', w2.message);
    t.equal(fs.readFileSync(path.join(content(id2), 'lib', 'sub', 'SUB'), 'utf8'), 'submodule content\n', 'the submodule is checked out');
    await d.teardown(id2);
  });

  await t.test('a commit that is not a branch tip, started with tetrixctl', async (t) => {
    const id = uniqueName('src-commit');
    const ctl = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, '--output', 'json', 'start', id, '--git', server.url('app.git'), '--commit', repo.commits[0]!, '--', '/bin/sh', '-c', 'exec sleep 600'], { encoding: 'utf8' });
    t.equal(ctl.status, 0, ctl.stderr);
    const w = await d.get(id);
    t.equal(w.source?.commit, repo.commits[0]);
    const usage = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, 'start', 'x', '--ref', 'main', '--', 'true'], { encoding: 'utf8' });
    t.equal(usage.status, 2, 'a git flag without --git is a usage error');
    t.match(usage.stderr, /--ref needs --git URL/);
    t.equal(fs.readFileSync(path.join(content(id), 'README'), 'utf8'), 'one\n');
    await d.teardown(id);
  });

  await t.test('an unknown branch: FAILED naming the fetch, no workload, nothing left', async (t) => {
    const id = uniqueName('src-missing');
    const err = await d.start(request(id, { url: server.url('app.git'), ref: 'no-such-branch' })).then(() => undefined, (e: Error & { code?: number }) => e);
    t.ok(err, 'StartWorkspace fails');
    t.equal(err?.code, 5, 'NOT_FOUND');
    t.match(err?.message ?? '', /content: fetch: .*no-such-branch/);
    const w = await d.get(id);
    t.equal(w.state, 'WORKSPACE_STATE_FAILED');
    t.equal(w.reason, 'STOP_REASON_CONTENT_FAILED');
    t.equal(w.content?.failedStep, 'fetch');
    t.equal(w.pid, 0, 'no workload ran');
    t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', id)), 'the workspace directory is gone');
    await d.teardown(id);
  });

  await t.test('hostile repositories run nothing on the host', async (t) => {
    const id = uniqueName('src-evil');
    const w = await d.start(request(id, { url: server.url('evil.git'), ref: 'main', submodules: true }));
    t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
    t.ok(fs.existsSync(path.join(content(id), 'hooks', 'post-checkout')), 'the hostile tree is checked out');
    await d.teardown(id);
    const id2 = uniqueName('src-evil-sub');
    const err = await d.start(request(id2, { url: server.url('evil-sub.git'), ref: 'main', submodules: true })).then(() => undefined, (e: Error) => e);
    t.match(err?.message ?? '', /content: fetch: .*(gitmodulesUrl|disallowed submodule url|fsck)/i, 'the --upload-pack submodule URL is refused when objects are checked');
    t.equal((await d.get(id2)).content?.failedStep, 'fetch');
    await d.teardown(id2);
    const ran = fs.readdirSync(root).filter((f) => f.startsWith(path.basename(marker)));
    t.same(ran, [], 'no marker: no hook, fsmonitor, filter or upload-pack ran on the host');
  });

  await t.test('bad requests name the field and create nothing', async (t) => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ url: '' }, /content\.git\.url: is required/],
      [{ url: 'file:///etc' }, /content\.git\.url: file:\/\/ remotes are refused/],
      [{ url: '/srv/repo.git' }, /content\.git\.url: is not a URL/],
      [{ url: 'ext::sh -c touch% /tmp/x' }, /content\.git\.url/],
      [{ url: 'https://user:pw@example.test/r.git' }, /content\.git\.url: must not carry credentials/],
      [{ url: server.url('app.git'), ref: '--upload-pack=touch' }, /content\.git\.ref/],
      [{ url: server.url('app.git'), commit: 'abc' }, /content\.git\.commit/],
      [{ url: server.url('app.git'), filter: 'sparse:oid=x' }, /content\.git\.filter/],
      [{ url: server.url('app.git'), token: 'abc' }, /content\.git\.token: is sent only to an https/],
    ];
    for (const [g, expect] of cases) {
      const id = uniqueName('src-bad');
      const err = await d.start(request(id, g)).then(() => undefined, (e: Error & { code?: number }) => e);
      t.equal(err?.code, 3, `INVALID_ARGUMENT for ${JSON.stringify(g)}`);
      t.match(err?.message ?? '', expect);
      t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', id)));
    }
  });
});

async function waitForFile(file: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(file) || fs.statSync(file).size === 0) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${file}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
