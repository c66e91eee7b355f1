// The workload's user is resolved in the image's /etc/passwd and /etc/group without following a link out of
// the rootfs, and must lie in the workspace's range.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { resolveUser } from '../../src/sandbox/user';

t.test('user names, ids and hostile /etc entries', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-user-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const rootfs = path.join(dir, 'rootfs');
  fs.mkdirSync(path.join(rootfs, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(rootfs, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\ndev:x:1000:1001::/home/dev:/bin/sh\nbig:x:70000:70000::/:/bin/sh\n');
  fs.writeFileSync(path.join(rootfs, 'etc/group'), 'root:x:0:\nstaff:x:50:\nwheel:x:10:root,dev\ndocker:x:999:dev\nhuge:x:80000:dev\n');
  t.same(await resolveUser(rootfs, 'dev', 65536), { uid: 1000, gid: 1001, groups: [10, 999], home: '/home/dev' }, 'supplementary groups from /etc/group, those in range');
  t.same(await resolveUser(rootfs, 'dev:staff', 65536), { uid: 1000, gid: 50, groups: [10, 999], home: '/home/dev' });
  t.same(await resolveUser(rootfs, '1234:5678', 65536), { uid: 1234, gid: 5678, groups: [] });
  t.same(await resolveUser(rootfs, '1000', 65536), { uid: 1000, gid: 1001, groups: [10, 999], home: '/home/dev' }, 'a uid takes its passwd gid');
  await t.rejects(resolveUser(rootfs, 'nobody-here', 65536), { code: 'INVALID_ARGUMENT', message: /^user: "nobody-here" is not in the image's \/etc\/passwd/ });
  await t.rejects(resolveUser(rootfs, 'big', 65536), { code: 'INVALID_ARGUMENT', message: /uid 70000 is outside the workspace's range/ });
  await t.rejects(resolveUser(rootfs, '0:70000', 65536), { code: 'INVALID_ARGUMENT', message: /gid 70000/ });

  // A host file that names a user the image does not have: reading it through a link would find them.
  const host = path.join(dir, 'host-etc');
  fs.mkdirSync(host);
  fs.writeFileSync(path.join(host, 'passwd'), 'hostonly:x:42:42::/:/bin/sh\n');
  const linkedFile = path.join(dir, 'linked-file');
  fs.mkdirSync(path.join(linkedFile, 'etc'), { recursive: true });
  fs.symlinkSync(path.join(host, 'passwd'), path.join(linkedFile, 'etc/passwd'));
  await t.rejects(resolveUser(linkedFile, 'hostonly', 65536), { code: 'FAILED_PRECONDITION', message: /\/etc\/passwd is a symlink/ });
  const linkedDir = path.join(dir, 'linked-dir');
  fs.mkdirSync(linkedDir);
  fs.symlinkSync(host, path.join(linkedDir, 'etc'));
  await t.rejects(resolveUser(linkedDir, 'hostonly', 65536), { code: 'FAILED_PRECONDITION', message: /\/etc is not a directory/ });
});
