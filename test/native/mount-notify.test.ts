// The daemon's own mounts and its systemd readiness message.
import t from 'tap';
import { spawn as spawnChild } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native, NativeError } from '../../src/native';
import { makeHostDir, uniqueName } from './fixture';

const { MS_NOSUID, MS_NODEV, MS_RDONLY, MS_REMOUNT, MNT_DETACH } = native.constants;

const mountLine = (target: string): string | undefined =>
  fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === target);

t.test('mount and umount a tmpfs', async (t) => {
  const dir = makeHostDir(t, 'mnt');
  native.mount('tetrix-test', dir, 'tmpfs', MS_NOSUID | MS_NODEV, 'size=1m,mode=700');
  t.teardown(() => {
    if (mountLine(dir)) native.umount(dir, MNT_DETACH);
  });
  t.match(mountLine(dir), /nosuid,nodev.* - tmpfs tetrix-test rw,size=1024k,mode=700/);
  native.mount('', dir, '', MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, '');
  t.throws(() => fs.writeFileSync(path.join(dir, 'x'), ''), { code: 'EROFS' });
  native.umount(dir, 0);
  t.equal(mountLine(dir), undefined);
});

t.test('mount errors name the call and the errno', async (t) => {
  t.throws(() => native.umount('/nonexistent-tetrix', 0), { name: 'NativeError', step: 'umount', code: 'ENOENT' });
  const dir = makeHostDir(t, 'notmounted');
  let err: unknown;
  try {
    native.umount(dir, 0);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof NativeError, 'thrown as the JS NativeError class');
  t.match(err, { step: 'umount', errno: 22, code: 'EINVAL', message: 'umount: EINVAL' }, 'not a mount point');
  t.throws(() => native.mount('none', dir, 'no-such-fs', 0, ''), { step: 'mount', code: 'ENODEV' });
  t.throws(() => native.mount('a\0b', dir, 'tmpfs', 0, ''), TypeError, 'an embedded NUL is refused');
});

t.test('sdNotify', async (t) => {
  const saved = process.env.NOTIFY_SOCKET;
  t.teardown(() => {
    if (saved === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = saved;
  });

  delete process.env.NOTIFY_SOCKET;
  t.equal(native.sdNotify('READY=1'), false, 'false without NOTIFY_SOCKET');

  // Node has no unix datagram sockets; python3 (node-gyp needs it anyway) plays systemd.
  const receive = async (address: string, state: string): Promise<string> => {
    const listener = spawnChild('python3', ['-c', [
      'import socket, sys',
      'a = sys.argv[1]',
      's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
      's.bind("\\0" + a[1:] if a.startswith("@") else a)',
      'print("bound", flush=True)',
      'print(s.recv(4096).decode(), flush=True)',
    ].join('\n'), address], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    listener.stdout.on('data', (d: Buffer) => (out += d));
    while (!out.includes('bound\n')) await new Promise((r) => setTimeout(r, 10));
    process.env.NOTIFY_SOCKET = address;
    t.equal(native.sdNotify(state), true);
    await new Promise((r) => listener.on('exit', r));
    return out.replace('bound\n', '').trim();
  };

  const dir = makeHostDir(t, 'notify');
  t.equal(await receive(path.join(dir, 'notify.sock'), 'READY=1'), 'READY=1', 'a path socket');
  t.equal(await receive(`@${uniqueName('notify')}`, 'STOPPING=1'), 'STOPPING=1', 'an abstract socket');
});
