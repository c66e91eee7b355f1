// A native failure names its step, its errno and the path it was about (crun's errors do the same): the
// path is its own field, so a message a caller matches ("umount: EINVAL") stays as it is.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { native, NativeError } from '../../src/native';
import { toServiceError } from '../../src/api/errors';
import { childPids, makeHostDir, makeRootfs, workspaceOptions } from './fixture';

function thrownBy(call: () => void): unknown {
  try {
    call();
  } catch (e) {
    return e;
  }
  return undefined;
}

t.test('mount.c errors name the target path', async (t) => {
  const dir = makeHostDir(t, 'errpath');
  const missing = path.join(dir, 'missing');
  t.throws(() => native.umount(dir, 0), { name: 'NativeError', step: 'umount', code: 'EINVAL', path: dir });
  t.throws(() => native.mount('none', dir, 'no-such-fs', 0, ''), { step: 'mount', code: 'ENODEV', path: dir });
  await t.rejects(native.umountAsync(dir, 0), { name: 'NativeError', step: 'umount', code: 'EINVAL', path: dir });
  await t.rejects(native.mountAsync('none', dir, 'no-such-fs', 0, ''), { step: 'mount', code: 'ENODEV', path: dir });
  t.throws(() => native.isMountPoint(missing), { step: 'statx', code: 'ENOENT', path: missing });
  fs.writeFileSync(path.join(dir, 'taken'), '');
  t.throws(() => native.mkfifo(path.join(dir, 'taken'), 0o600), { step: 'mkfifo', code: 'EEXIST', path: path.join(dir, 'taken') });
});

t.test('the API reports the path with the step and errno', async (t) => {
  const dir = makeHostDir(t, 'errpath-api');
  const err = thrownBy(() => native.umount(dir, 0));
  t.ok(err instanceof NativeError);
  const log = { error: () => undefined, warn: () => undefined };
  const out = toServiceError(err, log as never, 'StopWorkspace');
  t.equal(out.details, `umount ${dir}: EINVAL (errno 22)`);
});

t.test('a spawn failure names the one syscall that failed, not the group of them', async (t) => {
  for (const [dir, step] of [['dev', 'open /dev'], ['sys', 'open /sys']] as const) {
    const ws = workspaceOptions(t, makeRootfs(t, { omit: [dir] }), ['true']);
    await t.rejects(native.spawn(ws.options), { name: 'NativeError', step, code: 'ENOENT', message: `${step}: ENOENT` }, `no /${dir}`);
    ws.close();
  }
  t.same(childPids(), [], 'every failed child was reaped');
});
