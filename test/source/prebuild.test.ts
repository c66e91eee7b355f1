// Prebuilds build what they fetched (issue 17): the prebuild clones through the same sandboxed path and its
// signed provenance lists the repository with its gitCommit and the image with its digest. A workspace from
// the prebuild's snapshot is restored only once that provenance verifies, then fetches only the new commits.
// A snapshot whose .git a task made hostile (hooks, fsmonitor, a filter driver) runs nothing on the host.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ctlMain, startDaemon, uniqueName, type Daemon } from '../helpers/daemon';
import { isFinalState } from '../prebuild/daemon-fixtures';
import { git, makeRepo, pushCommit, startGitDaemon } from './fixtures';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-source-prebuild-'));
t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
const repo = makeRepo(root, 'app', { files: 2000 });
const marker = path.join(root, `host-marker-${crypto.randomBytes(6).toString('hex')}`);

const prebuildRequest = (id: string, url: string, script: string): StartWorkspaceRequest => ({
  id, ownerId: 'alice', teamId: 'team-a', kind: 'WORKSPACE_KIND_PREBUILD', image: 'builtin:busybox',
  content: { git: { url, ref: 'main' } },
  tasks: [{ name: 'build', command: ['/bin/sh', '-c', script], workingDir: '/workspace' }],
});

const fromPrebuild = (id: string, snapshotId: string, url: string, allowUnverified = false): StartWorkspaceRequest => ({
  id, ownerId: 'alice', teamId: 'team-a', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'],
  content: { prebuild: { snapshotId, git: { url, ref: 'main' }, allowUnverified } },
});

async function runPrebuild(d: Daemon, req: StartWorkspaceRequest): Promise<string> {
  await d.start(req);
  const done = await d.waitFor(req.id!, (w) => isFinalState(w.state), 60_000);
  if (done.state !== 'WORKSPACE_STATE_SUCCEEDED') throw new Error(`prebuild ${req.id}: ${done.state} ${done.message}`);
  return done.snapshotId;
}

t.test('prebuild -> snapshot -> new commit -> workspace from the prebuild', async (t) => {
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  const d = await startDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`]);
  const url = server.url('app.git');
  const backups = path.join(d.stateDir, 'backups');
  const built = repo.commits[repo.commits.length - 1]!;

  const pid = uniqueName('src-pb');
  const snapshot = await runPrebuild(d, prebuildRequest(pid, url, 'cat README > built.txt'));
  const pb = await d.get(pid);
  t.equal(pb.source?.commit, built, 'the prebuild recorded the commit it fetched');
  const firstFetch = Number(pb.content?.objectsTotal);
  t.ok(firstFetch > 2000, `the prebuild fetched the whole history (${firstFetch} objects)`);

  await t.test('provenance lists the repository by gitCommit and the image by digest; verify prints both', async (t) => {
    const json = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, '--output', 'json', 'verify', snapshot, '--backup-dir', backups], { encoding: 'utf8' });
    t.equal(json.status, 0, json.stderr);
    const def = JSON.parse(json.stdout).predicate.buildDefinition;
    t.same(def.externalParameters.source, { repository: url, revision: 'main' }, 'externalParameters: what was asked');
    const repoDep = def.resolvedDependencies.find((r: { digest: Record<string, string> }) => r.digest.gitCommit);
    t.equal(repoDep?.digest.gitCommit, built, 'resolvedDependencies: the commit the node fetched');
    t.equal(repoDep?.uri, `${url}@main`);
    const imageDep = def.resolvedDependencies.find((r: { digest: Record<string, string> }) => r.digest.sha256);
    t.equal(`sha256:${imageDep?.digest.sha256}`.length, 71, 'and the image with its digest');
    const text = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, 'verify', snapshot, '--backup-dir', backups], { encoding: 'utf8' });
    t.match(text.stdout, `resolved: ${url}@main gitCommit:${built}`);
    t.match(text.stdout, /resolved: builtin:busybox sha256:[0-9a-f]{64}/);
    t.match(text.stdout, /asked: \{"repository":"git:\/\/127\.0\.0\.1:\d+\/app\.git","revision":"main"\}/);
  });

  const newer = pushCommit(repo, 'NEW', 'new since the prebuild\n');

  await t.test('a workspace from the verified snapshot fetches only the new commit', async (t) => {
    const id = uniqueName('src-from-pb');
    const w = await d.start(fromPrebuild(id, snapshot, url));
    t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
    t.equal(w.source?.commit, newer, 'checked out at the new commit');
    t.equal(w.content?.prebuildVerified, true, 'the provenance verified');
    t.equal(w.content?.prebuildSnapshotId, snapshot);
    t.equal(w.content?.prebuildTree, 'unpacked', 'a full-format snapshot goes through the tree cache too');
    t.match(w.content?.prebuildId ?? '', new RegExp(`^${pid}-`), 'the prebuild it came from is recorded');
    const fetched = Number(w.content?.objectsTotal);
    t.ok(fetched > 0 && fetched <= 10, `only the new objects were fetched (${fetched}, the prebuild fetched ${firstFetch})`);
    const content = path.join(d.stateDir, 'workspaces', id, 'content');
    t.equal(fs.readFileSync(path.join(content, 'NEW'), 'utf8'), 'new since the prebuild\n');
    t.equal(fs.readFileSync(path.join(content, 'built.txt'), 'utf8'), 'three\n', 'the prebuild\'s output is there');
    await d.teardown(id);
  });

  await t.test('a tampered snapshot provenance is refused unless allowed', async (t) => {
    const envelopeFile = path.join(backups, `${snapshot}.data.provenance.dsse.json`);
    const original = fs.readFileSync(envelopeFile, 'utf8');
    const envelope = JSON.parse(original);
    const statement = JSON.parse(Buffer.from(envelope.payload, 'base64').toString());
    statement.predicate.buildDefinition.externalParameters.source.revision = 'evil';
    envelope.payload = Buffer.from(JSON.stringify(statement)).toString('base64');
    fs.writeFileSync(envelopeFile, JSON.stringify(envelope));
    t.teardown(() => fs.writeFileSync(envelopeFile, original));
    const id = uniqueName('src-tampered');
    const err = await d.start(fromPrebuild(id, snapshot, url)).then(() => undefined, (e: Error & { code?: number }) => e);
    t.equal(err?.code, 9, 'FAILED_PRECONDITION');
    t.match(err?.message ?? '', /content\.prebuild\.snapshot_id: snapshot .* was not verified \(dsse signature/);
    t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', id)), 'nothing was restored');
    fs.rmSync(envelopeFile);
    const unsigned = await d.start(fromPrebuild(uniqueName('src-unsigned'), snapshot, url)).then(() => undefined, (e: Error & { code?: number }) => e);
    t.match(unsigned?.message ?? '', /was not verified/, 'an unsigned snapshot is refused too');
    const allowedId = uniqueName('src-allowed');
    const allowed = await d.start(fromPrebuild(allowedId, snapshot, url, true));
    t.equal(allowed.state, 'WORKSPACE_STATE_RUNNING', allowed.message);
    t.equal(allowed.content?.prebuildVerified, false, 'started, and recorded as not verified');
    await d.teardown(allowedId);
  });

  await t.test('a snapshot whose .git a task made hostile runs nothing on the host', async (t) => {
    const hostile = [
      'mkdir -p .git/hooks .git/info',
      `printf '#!/bin/sh\\ntouch ${marker}-hook\\n' > .git/hooks/post-checkout && chmod +x .git/hooks/post-checkout`,
      `printf '[core]\\n\\tfsmonitor = touch ${marker}-fsmonitor\\n\\thooksPath = .git/hooks\\n\\tsshCommand = touch ${marker}-ssh\\n' >> .git/config`,
      `printf '[filter "evil"]\\n\\tsmudge = "sh -c \\\\"touch ${marker}-filter; echo ran >> /workspace/.filter-ran; cat\\\\""\\n' >> .git/config`,
      "echo 'README filter=evil' > .git/info/attributes",
    ].join(' && ');
    const hid = uniqueName('src-pb-hostile');
    const hsnap = await runPrebuild(d, prebuildRequest(hid, url, hostile));
    pushCommit(repo, 'README', 'four\n');
    const id = uniqueName('src-from-hostile');
    const w = await d.start(fromPrebuild(id, hsnap, url));
    t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
    const content = path.join(d.stateDir, 'workspaces', id, 'content');
    t.equal(fs.readFileSync(path.join(content, 'README'), 'utf8'), 'four\n');
    t.ok(fs.existsSync(path.join(content, '.filter-ran')), 'the filter driver did run: inside the fetch sandbox');
    for (const kind of ['hook', 'fsmonitor', 'ssh', 'filter']) t.notOk(fs.existsSync(`${marker}-${kind}`), `no ${kind} ran on the host`);
    // Control: the same hostile .git under plain host git does run the filter as host root.
    const control = path.join(root, 'control');
    fs.cpSync(content, control, { recursive: true });
    git(control, 'checkout', '-q', '-f', 'HEAD~1');
    t.ok(fs.existsSync(`${marker}-filter`), 'control: host git would have run it');
    await d.teardown(id);
  });
});

t.test('in the snapshot format (the daemon\'s default) the prebuild\'s provenance is found and verified too', async (t) => {
  // Before, verify looked for the full format's `<id>.data` envelope: every start from a snapshot-format
  // prebuild was refused as unverified.
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  const d = await startDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`, '--backup-format', 'snapshot']);
  const url = server.url('app.git');
  const pid = uniqueName('src-pb-snap');
  const snapshot = await runPrebuild(d, prebuildRequest(pid, url, 'cat README > built.txt'));
  t.match(snapshot, /^sn-/, 'a snapshot of the repository format');
  const newer = pushCommit(repo, 'NEWER', 'after the snapshot-format prebuild\n');
  const id = uniqueName('src-from-snap');
  const w = await d.start(fromPrebuild(id, snapshot, url));
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
  t.equal(w.content?.prebuildVerified, true, 'the provenance verified');
  t.equal(w.source?.commit, newer);
  t.equal(fs.readFileSync(path.join(d.stateDir, 'workspaces', id, 'content', 'built.txt'), 'utf8'), fs.readFileSync(path.join(repo.work, 'README'), 'utf8'), 'the prebuild\'s output is there');
  const verify = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, 'verify', snapshot, '--backup-dir', path.join(d.stateDir, 'backups')], { encoding: 'utf8' });
  t.equal(verify.status, 0, verify.stderr);
  await d.teardown(id);
});
