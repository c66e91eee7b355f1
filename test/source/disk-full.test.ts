// A checkout that fills the disk (issue 17): FAILED with RESOURCE_EXHAUSTED naming the step, and the space
// given back. The daemon's state dir is a small tmpfs this test mounts (and unmounts) itself.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startDaemon, uniqueName } from '../helpers/daemon';
import { makeRepo, startGitDaemon } from './fixtures';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-source-full-'));
const small = path.join(root, uniqueName('small'));
fs.mkdirSync(small);
execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m,mode=0755', 'tmpfs', small]);
t.teardown(() => {
  execFileSync('umount', ['-l', small]);
  fs.rmSync(root, { recursive: true, force: true });
});
// ~40 MB of text that does not compress away: more than the tmpfs holds once checked out.
makeRepo(root, 'large', { files: 600, randomBytes: 32 * 1024 });

t.test('a disk that fills during the checkout', async (t) => {
  const server = await startGitDaemon(root);
  t.teardown(() => server.kill());
  const stateDir = path.join(small, 'state');
  const d = await startDaemon(t, ['--source-allowed-destinations', `127.0.0.1:${server.port}`, '--state-dir', stateDir]);
  const id = uniqueName('src-full');
  const err = await d.start({
    id, ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'],
    content: { git: { url: server.url('large.git'), ref: 'main' } },
  }).then(() => undefined, (e: Error & { code?: number }) => e);
  t.equal(err?.code, 8, `RESOURCE_EXHAUSTED (${err?.message})`);
  t.match(err?.message ?? '', /content: (fetch|checkout): .*(No space left on device|Out of diskspace)/);
  const w = await d.get(id);
  t.equal(w.state, 'WORKSPACE_STATE_FAILED');
  t.equal(w.reason, 'STOP_REASON_CONTENT_FAILED');
  t.notOk(fs.existsSync(path.join(stateDir, 'workspaces', id)), 'the partial checkout is gone');
  const free = Number(execFileSync('df', ['--output=avail', '-B1', small]).toString().split('\n')[1]);
  t.ok(free > 30 * 1024 * 1024, `the space is given back (${free} bytes free)`);
  await d.teardown(id);
});
