// A start from a prebuild copies nothing of its snapshot once the node holds the snapshot's tree (docs/source.md,
// "The prebuild tree cache"): the verified snapshot is unpacked once into the state dir, and each workspace's
// /workspace is an overlay over it. The workspace sees the prebuild's files and the new commit's, writes only
// to its own upper layer, is backed up whole, and leaves no mount behind; the access decision and the
// provenance check still run for every start, and a daemon killed under such a workspace adopts it.
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { status } from '@grpc/grpc-js';
import { uniqueName, type Daemon } from '../helpers/daemon';
import { unaryCall } from '../../src/cli/client';
import { isFinalState } from '../prebuild/daemon-fixtures';
import { backupAs, refusal, startAs, startUserDaemon } from '../content/daemon-backup-fixture';
import { git, makeRepo, pushCommit, startGitDaemon } from './fixtures';
import { startStorageDaemon } from '../storage/daemon-fixture';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-source-pbcache-'));
t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
const repo = makeRepo(root, 'app', { files: 300 });

const wsDir = (d: Daemon, id: string): string => path.join(d.stateDir, 'workspaces', id);
const treeOf = (d: Daemon, snapshot: string): string => path.join(d.stateDir, 'prebuild-trees', snapshot, 'tree');
const mountinfo = (): string => fs.readFileSync('/proc/self/mountinfo', 'utf8');

/** Every entry's path, type, mode, owner and bytes (or link target): a change anywhere changes it. */
function hashTree(dir: string): string {
  const h = crypto.createHash('sha256');
  const walk = (rel: string): void => {
    const p = path.join(dir, rel);
    const st = fs.lstatSync(p);
    h.update(`${rel}\0${st.mode}\0${st.uid}:${st.gid}\0`);
    if (st.isSymbolicLink()) h.update(fs.readlinkSync(p));
    else if (st.isFile()) h.update(fs.readFileSync(p));
    else if (st.isDirectory()) for (const name of fs.readdirSync(p).sort()) walk(path.join(rel, name));
  };
  walk('.');
  return h.digest('hex');
}

/** Log lines of the daemon with this message (and this field value, if given). */
const logged = (d: Daemon, msg: string, field?: [string, string]): number => d.output.filter((l) => {
  if (!l.startsWith('{')) return false;
  const e = JSON.parse(l) as Record<string, unknown>;
  return e.msg === msg && (!field || e[field[0]] === field[1]);
}).length;

async function waitForFile(d: Daemon, id: string, file: string): Promise<void> {
  const p = path.join(wsDir(d, id), 'content', file);
  const end = Date.now() + 30_000;
  while (!fs.existsSync(p)) {
    const w = await d.get(id);
    if (w.state !== 'WORKSPACE_STATE_RUNNING') throw new Error(`${id} is ${w.state} (${w.message}) before writing ${file}`);
    if (Date.now() > end) throw new Error(`${file} never appeared in ${id}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

t.test('starts from a cached prebuild tree', async (t) => {
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  // The daemon's default backup format (snapshots) and real user tokens for the access rule.
  const { d, token } = await startUserDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`, '--backup-format', 'snapshot']);
  const url = server.url('app.git');
  const alice = token('alice', ['team-a']);

  const pid = uniqueName('pbc');
  await startAs(d, undefined, {
    id: pid, ownerId: 'pat', teamId: 'team-a', kind: 'WORKSPACE_KIND_PREBUILD', image: 'builtin:busybox',
    content: { git: { url, ref: 'main' } },
    tasks: [{ name: 'build', command: ['/bin/sh', '-c', 'cat README > built.txt && mkdir -p out/dir && echo artifact > out/dir/a'], workingDir: '/workspace' }],
  });
  const done = await d.waitFor(pid, (w) => isFinalState(w.state), 60_000);
  t.equal(done.state, 'WORKSPACE_STATE_SUCCEEDED', done.message);
  const snapshot = done.snapshotId;
  const newer = pushCommit(repo, 'NEW', 'new since the prebuild\n');

  // The workload reads what it got, then writes: a new file, an edit of a tree file, a deletion.
  const script = [
    'cat /workspace/NEW /workspace/built.txt > /workspace/seen',
    'echo edited > /workspace/src/d0/f0.txt',
    'rm /workspace/README',
    'mv /workspace/out/dir /workspace/out/moved 2> /workspace/mv-err || echo "mv exit $?" >> /workspace/mv-err',
    'touch /workspace/done',
    'exec sleep 600',
  ].join('; ');
  const fromPrebuild = (id: string, extra: { allowUnverified?: boolean } = {}): StartWorkspaceRequest => ({
    id, ownerId: 'alice', teamId: 'team-a', image: 'builtin:busybox', command: ['/bin/sh', '-c', script],
    content: { prebuild: { snapshotId: snapshot, git: { url, ref: 'main' }, allowUnverified: extra.allowUnverified ?? false } },
  });
  const restoredLines = (): number => logged(d, 'snapshot restored', ['backupId', snapshot]);

  const first = uniqueName('pbc-first');
  const w1 = await startAs(d, alice, fromPrebuild(first));
  t.equal(w1.state, 'WORKSPACE_STATE_RUNNING', w1.message);
  t.equal(w1.content?.prebuildTree, 'unpacked', 'the first start unpacked the snapshot into the cache');
  t.equal(logged(d, 'prebuild tree cache: snapshot unpacked', ['snapshot', snapshot]), 1, 'the daemon logged the unpack once');
  t.equal(restoredLines(), 1, 'one restore of the snapshot: the unpack');
  const tree = treeOf(d, snapshot);
  const treeHash = hashTree(tree);
  t.equal(fs.statSync(path.dirname(path.dirname(tree))).mode & 0o777, 0o700, 'the cache dir is 0700');
  t.equal(fs.statSync(path.join(tree, 'README')).uid, 0, 'the cached tree has unshifted ids, as an image');

  let w2: Workspace__Output;
  const second = uniqueName('pbc-second');
  await t.test('a second start from the same prebuild uses the cache and restores nothing', async (t) => {
    w2 = await startAs(d, alice, fromPrebuild(second));
    t.equal(w2.state, 'WORKSPACE_STATE_RUNNING', w2.message);
    t.equal(w2.content?.prebuildTree, 'cached', 'its content status says the cached tree was used');
    t.equal(restoredLines(), 1, 'no restore of the snapshot for it (the daemon log)');
    t.equal(w2.content?.prebuildVerified, true, 'its provenance was verified all the same');
    t.equal(w2.source?.commit, newer, 'checked out at the new commit');
    t.ok(Number(w2.content?.objectsTotal) <= 10, `only the new objects were fetched (${w2.content?.objectsTotal})`);
  });

  await t.test('the workspace sees the prebuild and the new commit; its writes land only in its own upper', async (t) => {
    await waitForFile(d, second, 'done');
    const content = path.join(wsDir(d, second), 'content');
    t.equal(fs.readFileSync(path.join(content, 'seen'), 'utf8'), 'new since the prebuild\nthree\n', 'inside it read NEW (the new commit) and built.txt (the prebuild)');
    t.equal(fs.readFileSync(path.join(content, 'src/d0/f0.txt'), 'utf8'), 'edited\n');
    t.notOk(fs.existsSync(path.join(content, 'README')), 'the deletion shows');
    const upper = path.join(wsDir(d, second), 'content-upper');
    t.ok(fs.existsSync(path.join(upper, 'seen')) && fs.existsSync(path.join(upper, 'src/d0/f0.txt')), 'the writes are in its upper layer');
    t.ok(fs.lstatSync(path.join(upper, 'README')).isCharacterDevice(), 'the deletion is a whiteout in its upper layer');
    t.ok(fs.existsSync(path.join(upper, '.git/FETCH_HEAD')), 'so is what the fetch wrote');
    t.equal(fs.statSync(path.join(content, 'built.txt')).uid, w2.hostUidBase, 'a tree file belongs to the workspace\'s root');
    // redirect_dir=off, as Docker's overlay2: a directory from the tree cannot be renamed (EXDEV); busybox mv copies.
    t.ok(fs.existsSync(path.join(content, 'out/moved/a')) && !fs.existsSync(path.join(content, 'out/dir')), 'mv of a tree directory still worked (by copying)');
    t.equal(hashTree(tree), treeHash, 'the cached tree is unchanged');
    t.equal(fs.readFileSync(path.join(wsDir(d, first), 'content', 'src/d0/f0.txt'), 'utf8'), 'edited\n', 'the first workspace has its own edit');
    t.throws(() => fs.renameSync(path.join(wsDir(d, first), 'content', 'src/d1'), path.join(wsDir(d, first), 'content', 'src/d1-renamed')), { code: 'EXDEV' },
      'rename(2) of a directory from the tree: EXDEV (no redirect_dir)');
  });

  await t.test('a backup of such a workspace holds the merged content and restores elsewhere', async (t) => {
    const { backupId } = await backupAs(d, alice, second);
    const copy = uniqueName('pbc-copy');
    const c = await startAs(d, alice, { id: copy, ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'], restoreFrom: backupId });
    t.equal(c.state, 'WORKSPACE_STATE_RUNNING', c.message);
    const content = path.join(wsDir(d, copy), 'content');
    t.equal(fs.readFileSync(path.join(content, 'seen'), 'utf8'), 'new since the prebuild\nthree\n', 'the workspace\'s own file');
    t.equal(fs.readFileSync(path.join(content, 'built.txt'), 'utf8'), 'three\n', 'the prebuild\'s file from the lower layer');
    t.equal(fs.readFileSync(path.join(content, 'NEW'), 'utf8'), 'new since the prebuild\n', 'the new commit\'s file');
    t.equal(fs.readFileSync(path.join(content, 'src/d0/f0.txt'), 'utf8'), 'edited\n', 'the edit');
    t.notOk(fs.existsSync(path.join(content, 'README')), 'and not the deleted file');
    t.equal(git(content, 'rev-parse', 'HEAD'), newer, 'a whole git checkout at the new commit');
    t.equal(fs.statSync(path.join(content, 'built.txt')).uid, c.hostUidBase, 'owned by the new workspace\'s root');
    t.notOk(mountinfo().includes(`${wsDir(d, copy)}/content `), 'a restored workspace\'s /workspace is a plain directory');
    await d.teardown(copy);
  });

  await t.test('a tampered or unsigned snapshot is refused even while its tree is cached', async (t) => {
    const backups = path.join(d.stateDir, 'backups');
    const envelopeFile = fs.readdirSync(backups, { recursive: true }).map(String).find((f) => f.endsWith(`${snapshot}.provenance.dsse.json`));
    t.ok(envelopeFile, 'the snapshot\'s provenance envelope');
    const file = path.join(backups, envelopeFile!);
    const original = fs.readFileSync(file, 'utf8');
    t.teardown(() => fs.writeFileSync(file, original));
    const envelope = JSON.parse(original);
    const statement = JSON.parse(Buffer.from(envelope.payload, 'base64').toString());
    statement.predicate.buildDefinition.externalParameters.source.revision = 'evil';
    envelope.payload = Buffer.from(JSON.stringify(statement)).toString('base64');
    fs.writeFileSync(file, JSON.stringify(envelope));
    const tampered = uniqueName('pbc-tampered');
    const err = await refusal(startAs(d, alice, fromPrebuild(tampered)));
    t.equal(err.code, status.FAILED_PRECONDITION);
    t.match(err.details, /was not verified \(dsse signature/);
    t.notOk(fs.existsSync(wsDir(d, tampered)), 'nothing of it exists');
    fs.rmSync(file);
    const unsigned = await refusal(startAs(d, alice, fromPrebuild(uniqueName('pbc-unsigned'))));
    t.match(unsigned.details, /was not verified/, 'an unsigned one too');
    const allowed = uniqueName('pbc-allowed');
    const a = await startAs(d, alice, fromPrebuild(allowed, { allowUnverified: true }));
    t.equal(a.state, 'WORKSPACE_STATE_RUNNING', a.message);
    t.equal(a.content?.prebuildTree, 'restored', 'allowed unverified: restored, never from the cache of verified trees');
    t.equal(restoredLines(), 2, 'it restored the snapshot into itself (the one before: the unpack)');
    await d.teardown(allowed);
    fs.writeFileSync(file, original);
  });

  await t.test('another team\'s user is refused even while the tree is cached', async (t) => {
    const mallory = token('mallory', ['team-b']);
    const id = uniqueName('pbc-mallory');
    const err = await refusal(startAs(d, mallory, { ...fromPrebuild(id), ownerId: 'mallory', teamId: 'team-b' }));
    t.equal(err.code, status.PERMISSION_DENIED, err.details);
    t.notOk(fs.existsSync(wsDir(d, id)), 'nothing of it exists');
    t.notOk(mountinfo().includes(id), 'nothing of it is mounted');
  });

  await t.test('a daemon killed under a cache-backed workspace adopts it; teardown leaves no mount', async (t) => {
    await d.kill9();
    // As an unpack cut by the kill would leave it.
    const staging = path.join(d.stateDir, 'prebuild-trees', '.staging-0123456789ab');
    fs.mkdirSync(path.join(staging, 'tree'), { recursive: true });
    await d.restart();
    t.notOk(fs.existsSync(staging), 'the restarted daemon removed an interrupted unpack');
    const adopted = await d.get(second);
    t.equal(adopted.state, 'WORKSPACE_STATE_RUNNING', 'adopted');
    t.equal(adopted.pid, w2.pid, 'the same workload');
    t.equal(fs.readFileSync(path.join(wsDir(d, second), 'content', 'seen'), 'utf8'), 'new since the prebuild\nthree\n', '/workspace still whole');
    const exec = spawnSync('nsenter', ['-t', String(w2.pid), '-m', '-r', 'cat', '/workspace/built.txt'], { encoding: 'utf8' });
    t.equal(exec.stdout, 'three\n', 'and inside it');
    for (const id of [first, second]) await d.teardown(id);
    const info = mountinfo();
    t.notOk(info.includes(wsDir(d, second)) || info.includes(wsDir(d, first)), 'no mount of the workspaces is left');
    t.notOk(info.includes(path.join(d.stateDir, 'prebuild-trees')), 'the cached tree is mounted nowhere');
    t.equal(hashTree(tree), treeHash, 'and unchanged');
  });

  await t.test('a reboot takes the overlay: the restarted daemon mounts it again for a stopped workspace', async (t) => {
    const id = uniqueName('pbc-stopped');
    await startAs(d, alice, fromPrebuild(id));
    await waitForFile(d, id, 'done');
    await d.stop(id);
    t.ok(fs.existsSync(path.join(wsDir(d, id), 'content', 'seen')), 'a stopped workspace keeps its /workspace');
    await d.kill9();
    for (const m of ['content', 'content-lower']) spawnSync('umount', ['-l', path.join(wsDir(d, id), m)]);
    t.notOk(fs.existsSync(path.join(wsDir(d, id), 'content', 'seen')), 'as after a reboot, the overlay is gone');
    await d.restart();
    t.equal(fs.readFileSync(path.join(wsDir(d, id), 'content', 'seen'), 'utf8'), 'new since the prebuild\nthree\n', 'mounted again at recovery');
    await d.teardown(id);
  });

  await t.test('a deleted snapshot\'s tree goes once no workspace holds it', async (t) => {
    const id = uniqueName('pbc-holder');
    const w = await startAs(d, alice, fromPrebuild(id));
    t.equal(w.content?.prebuildTree, 'cached');
    await unaryCall((md, o, cb) => d.clients.backups.DeleteBackup({ backupId: snapshot }, md, o, cb));
    t.ok(fs.existsSync(tree), 'held by a workspace: kept');
    t.equal(fs.readFileSync(path.join(wsDir(d, id), 'content', 'built.txt'), 'utf8'), 'three\n');
    await d.teardown(id);
    const end = Date.now() + 10_000;
    while (fs.existsSync(tree) && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
    t.notOk(fs.existsSync(tree), 'removed after its last workspace');
    t.notOk(mountinfo().includes(path.join(d.stateDir, 'prebuild-trees')), 'nothing of the cache is mounted');
  });
});

t.test('concurrent starts from one prebuild share one unpack', async (t: Test) => {
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  const { d } = await startUserDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`, '--backup-format', 'snapshot']);
  const url = server.url('app.git');
  const pid = uniqueName('pbc-conc');
  await startAs(d, undefined, {
    id: pid, ownerId: 'pat', teamId: 'team-a', kind: 'WORKSPACE_KIND_PREBUILD', image: 'builtin:busybox',
    content: { git: { url, ref: 'main' } }, tasks: [{ name: 'build', command: ['/bin/true'] }],
  });
  const done = await d.waitFor(pid, (w) => isFinalState(w.state), 60_000);
  t.equal(done.state, 'WORKSPACE_STATE_SUCCEEDED', done.message);
  const ids = [uniqueName('pbc-c1'), uniqueName('pbc-c2'), uniqueName('pbc-c3')];
  const started = await Promise.all(ids.map((id) => startAs(d, undefined, {
    id, ownerId: 'pat', teamId: 'team-a', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'],
    content: { prebuild: { snapshotId: done.snapshotId, git: { url, ref: 'main' }, allowUnverified: false } },
  })));
  for (const w of started) t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
  t.equal(logged(d, 'prebuild tree cache: snapshot unpacked', ['snapshot', done.snapshotId]), 1, 'one unpack for three starts');
  t.equal(logged(d, 'snapshot restored', ['backupId', done.snapshotId]), 1, 'one restore of the snapshot');
  t.same(fs.readdirSync(path.join(d.stateDir, 'prebuild-trees')), [done.snapshotId], 'one entry, no staging dir left');
  for (const id of ids) await d.teardown(id);
  t.notOk(mountinfo().includes(d.stateDir), 'nothing of the daemon is mounted after the teardowns');
});

t.test('with encrypted workspace storage the node keeps no tree cache: a start from a prebuild restores', async (t: Test) => {
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  const d = await startStorageDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`, '--backup-format', 'snapshot']);
  const url = server.url('app.git');
  const pid = uniqueName('pbc-enc');
  await d.start({
    id: pid, ownerId: 'pat', teamId: 'team-a', kind: 'WORKSPACE_KIND_PREBUILD', image: 'builtin:busybox',
    content: { git: { url, ref: 'main' } }, tasks: [{ name: 'build', command: ['/bin/sh', '-c', 'echo built > built.txt'], workingDir: '/workspace' }],
  });
  const done = await d.waitFor(pid, (w) => isFinalState(w.state), 60_000);
  t.equal(done.state, 'WORKSPACE_STATE_SUCCEEDED', done.message);
  const id = uniqueName('pbc-enc-ws');
  const w = await d.start({
    id, ownerId: 'pat', teamId: 'team-a', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'],
    content: { prebuild: { snapshotId: done.snapshotId, git: { url, ref: 'main' }, allowUnverified: false } },
  });
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
  t.equal(w.content?.prebuildTree, 'restored', 'restored into the workspace\'s encrypted volume');
  t.equal(w.content?.prebuildVerified, true);
  t.equal(fs.readFileSync(path.join(wsDir(d, id), 'content', 'built.txt'), 'utf8'), 'built\n');
  t.notOk(fs.existsSync(path.join(d.stateDir, 'prebuild-trees')), 'no plaintext tree in the state dir');
  await d.teardown(id);
});

t.test('over prebuildCacheMaxBytes the least recently used unheld tree goes; a snapshot larger than it is restored', async (t: Test) => {
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  const { d } = await startUserDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`, '--backup-format', 'snapshot']);
  const url = server.url('app.git');
  const prebuild = async (name: string): Promise<string> => {
    const id = uniqueName(name);
    await startAs(d, undefined, {
      id, ownerId: 'pat', teamId: 'team-a', kind: 'WORKSPACE_KIND_PREBUILD', image: 'builtin:busybox',
      content: { git: { url, ref: 'main' } }, tasks: [{ name: 'build', command: ['/bin/sh', '-c', `echo ${name} > built.txt`], workingDir: '/workspace' }],
    });
    const done = await d.waitFor(id, (w) => isFinalState(w.state), 60_000);
    if (done.state !== 'WORKSPACE_STATE_SUCCEEDED') throw new Error(`${id}: ${done.message}`);
    return done.snapshotId;
  };
  const a = await prebuild('pbc-lru-a');
  const b = await prebuild('pbc-lru-b');
  const fromSnapshot = (id: string, snapshotId: string): Promise<Workspace__Output> => startAs(d, undefined, {
    id, ownerId: 'pat', teamId: 'team-a', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'],
    content: { prebuild: { snapshotId, git: { url, ref: 'main' }, allowUnverified: false } },
  });
  const entries = (): string[] => fs.readdirSync(path.join(d.stateDir, 'prebuild-trees')).sort();

  const wa = uniqueName('pbc-lru-wa');
  t.equal((await fromSnapshot(wa, a)).content?.prebuildTree, 'unpacked');
  const bytesA = (JSON.parse(fs.readFileSync(path.join(d.stateDir, 'prebuild-trees', a, 'meta.json'), 'utf8')) as { bytes: number }).bytes;
  await d.teardown(wa);
  // Room for one of the two (same repository, about the same size), not both.
  await d.terminate();
  await d.restart({ TETRIX_PREBUILD_CACHE_MAX_BYTES: String(Math.floor(bytesA * 1.5)) });
  const wb = uniqueName('pbc-lru-wb');
  t.equal((await fromSnapshot(wb, b)).content?.prebuildTree, 'unpacked');
  const end = Date.now() + 10_000;
  while (entries().includes(a) && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
  t.same(entries(), [b], 'the older, unheld tree went; the one in use stayed');
  const wa2 = uniqueName('pbc-lru-wa2');
  t.equal((await fromSnapshot(wa2, a)).content?.prebuildTree, 'unpacked', 'unpacked again when asked for again');
  t.same(entries(), [a, b].sort(), 'both held now: over the size, but neither goes while a workspace holds it');
  for (const id of [wb, wa2]) await d.teardown(id);

  await d.terminate();
  await d.restart({ TETRIX_PREBUILD_CACHE_MAX_BYTES: '1' });
  const small = uniqueName('pbc-lru-small');
  const w = await fromSnapshot(small, a);
  t.equal(w.content?.prebuildTree, 'restored', 'a snapshot larger than the cache is restored into the workspace');
  await d.teardown(small);
});
