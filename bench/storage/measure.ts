// The measurements behind docs/storage.md's choice of backend: run by hand, as root, on the node's kernel.
//   npx ts-node-transpile-only bench/storage/measure.ts
// Everything it makes is under a fresh directory in /tmp and is removed at the end.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../../src/native';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-storage-measure-'));
const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const report = (name: string, value: string): void => console.log(`${name.padEnd(58)} ${value}`);
const hostKiB = (file: string): number => Number(execFileSync('du', ['-k', file]).toString().split('\t')[0]);

function mkfsExt4(image: string, bytes: number): number {
  fs.writeFileSync(image, '');
  fs.truncateSync(image, bytes);
  const t0 = process.hrtime.bigint();
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-m', '0', '-O', 'encrypt', '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard', image]);
  return ms(t0);
}

async function tryStep(name: string, step: () => Promise<void> | void): Promise<void> {
  try {
    await step();
    report(name, 'yes');
  } catch (err) {
    report(name, `no (${(err as Error).message})`);
  }
}

async function ext4() {
  const images = [64 * 2 ** 20, 2 ** 30, 10 * 2 ** 30];
  for (const size of images) {
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const img = path.join(root, `mkfs-${size}-${i}.img`);
      times.push(mkfsExt4(img, size));
      if (i === 4) report(`ext4 ${size / 2 ** 20} MiB: host disk used after mkfs`, `${hostKiB(img)} KiB`);
      fs.rmSync(img);
    }
    report(`ext4 ${size / 2 ** 20} MiB: mkfs.ext4 -O encrypt (lazy), median of 5`, `${median(times).toFixed(1)} ms`);
  }
  const img = path.join(root, 'vol.img');
  mkfsExt4(img, 1 << 30);
  const mnt = path.join(root, 'mnt');
  fs.mkdirSync(mnt);
  for (const directIo of [false, true]) {
    const mounts: number[] = [];
    const umounts: number[] = [];
    for (let i = 0; i < 20; i++) {
      let t0 = process.hrtime.bigint();
      await native.loopMount(img, mnt, 'ext4', native.constants.MS_NODEV, 'noinit_itable,errors=remount-ro', 'tetrix-measure', directIo);
      mounts.push(ms(t0));
      t0 = process.hrtime.bigint();
      await native.umountAsync(mnt, 0);
      umounts.push(ms(t0));
    }
    report(`LOOP_CONFIGURE + mount ext4 (direct I/O ${directIo}), median of 20`, `${median(mounts).toFixed(2)} ms`);
    report(`umount ext4 (direct I/O ${directIo}), median of 20`, `${median(umounts).toFixed(2)} ms`);
  }
  report('loop devices left attached to the image after 40 mount/umount', execFileSync('losetup', ['-j', img]).toString().trim() || 'none');
  report('ext4 1 GiB: host disk after 40 mounts (noinit_itable)', `${hostKiB(img)} KiB`);

  await native.loopMount(img, mnt, 'ext4', native.constants.MS_NODEV, 'noinit_itable', 'tetrix-measure', false);
  const enc = path.join(mnt, 'ws');
  fs.mkdirSync(enc);
  const key32 = crypto.randomBytes(32);
  await tryStep('fscrypt: 32-byte key accepted for an AES-256-XTS policy', () => {
    const id = native.fscryptAddKey(mnt, key32);
    const d = path.join(mnt, 'try32');
    fs.mkdirSync(d);
    native.fscryptSetPolicy(d, id);
    fs.writeFileSync(path.join(d, 'f'), 'x');
  });
  const key = crypto.randomBytes(64);
  let t0 = process.hrtime.bigint();
  const id = native.fscryptAddKey(mnt, key);
  report('FS_IOC_ADD_ENCRYPTION_KEY (64-byte key)', `${ms(t0).toFixed(3)} ms`);
  const expect = Buffer.from(crypto.hkdfSync('sha512', key, Buffer.alloc(0), Buffer.from('fscrypt\0\x01', 'latin1'), 16));
  report('key identifier = HKDF-SHA512(key, "fscrypt\\0\\x01") computed in userland', String(expect.equals(id)));
  t0 = process.hrtime.bigint();
  native.fscryptSetPolicy(enc, id);
  report('FS_IOC_SET_ENCRYPTION_POLICY v2 (AES-256-XTS, AES-256-CTS, PAD_32)', `${ms(t0).toFixed(3)} ms`);
  await tryStep('FS_IOC_SET_ENCRYPTION_POLICY on the ext4 root directory', () => native.fscryptSetPolicy(mnt, id));
  for (const d of ['upper', 'work', 'content', 'rootfs', 'lower']) fs.mkdirSync(path.join(enc, d));
  const lower = path.join(root, 'image');
  fs.mkdirSync(path.join(lower, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(lower, 'etc', 'hostname'), 'image\n');
  await tryStep('overlayfs with upperdir+workdir on an fscrypt-encrypted ext4 dir', async () => {
    await native.mountAsync('overlay', path.join(enc, 'rootfs'), 'overlay', 0, `lowerdir=${lower},upperdir=${path.join(enc, 'upper')},workdir=${path.join(enc, 'work')}`);
    fs.writeFileSync(path.join(enc, 'rootfs', 'etc', 'hostname'), 'changed\n');
    fs.rmSync(path.join(enc, 'rootfs', 'etc', 'hostname'));
    await native.umountAsync(path.join(enc, 'rootfs'), 0);
  });
  await tryStep('idmapped mount of an fscrypt-encrypted ext4 dir', async () => {
    await native.idmapMount(path.join(enc, 'content'), path.join(enc, 'lower'), 200000, 200000, 65536);
    const st = fs.statSync(path.join(enc, 'lower'));
    if (st.uid !== 200000) throw new Error(`owner shows as ${st.uid}`);
    await native.umountAsync(path.join(enc, 'lower'), 0);
  });
  await tryStep('bind mount of the encrypted dir (the workspace dir)', async () => {
    const ws = path.join(root, 'wsdir');
    fs.mkdirSync(ws);
    await native.mountAsync(enc, ws, '', native.constants.MS_BIND, '');
    await native.umountAsync(ws, 0);
  });
  // Throughput inside vs a plain dir on the host (page cache + fsync).
  const big = crypto.randomBytes(1 << 20);
  const write = (dir: string): number => {
    const f = path.join(dir, 'seq');
    const t = process.hrtime.bigint();
    const fd = fs.openSync(f, 'w');
    for (let i = 0; i < 128; i++) fs.writeSync(fd, big);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const took = ms(t);
    fs.rmSync(f);
    return (128 / took) * 1000;
  };
  const plain = path.join(root, 'plain');
  fs.mkdirSync(plain);
  report('sequential write 128 MiB + fsync: encrypted ext4 on loop', `${write(path.join(enc, 'content')).toFixed(0)} MiB/s`);
  report('sequential write 128 MiB + fsync: host ext4 dir', `${write(plain).toFixed(0)} MiB/s`);
  const clear = path.join(mnt, 'clear');
  fs.mkdirSync(clear);
  report('sequential write 128 MiB + fsync: same loop ext4, unencrypted dir', `${write(clear).toFixed(0)} MiB/s`);
  fs.writeFileSync(path.join(enc, 'content', 'marker'), 'hello');
  t0 = process.hrtime.bigint();
  await native.fscryptRemoveKey(mnt, id);
  report('FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS', `${ms(t0).toFixed(2)} ms`);
  report('key status after removal', native.fscryptKeyStatus(mnt, id));
  report('names in the encrypted dir without the key', fs.readdirSync(enc).join(' ').slice(0, 90));
  await native.umountAsync(mnt, 0);
  report('/proc/keys entries naming fscrypt (6.1+ keeps keys in the superblock)', String(fs.readFileSync('/proc/keys', 'utf8').split('\n').filter((l) => /fscrypt/.test(l)).length));
  fs.rmSync(img);
}

function btrfs() {
  if (!fs.existsSync('/usr/bin/mkfs.btrfs') && !fs.existsSync('/usr/sbin/mkfs.btrfs') && !fs.existsSync('/sbin/mkfs.btrfs')) {
    report('btrfs', 'mkfs.btrfs not installed (btrfs-progs)');
    return;
  }
  const img = path.join(root, 'btrfs.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 1 << 30);
  execFileSync('mkfs.btrfs', ['-q', '-f', img]);
  const mnt = path.join(root, 'btrfs');
  fs.mkdirSync(mnt);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  try {
    execFileSync('btrfs', ['quota', 'enable', mnt]);
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t0 = process.hrtime.bigint();
      execFileSync('btrfs', ['subvolume', 'create', path.join(mnt, `ws${i}`)], { stdio: 'ignore' });
      execFileSync('btrfs', ['qgroup', 'limit', '50M', path.join(mnt, `ws${i}`)]);
      times.push(ms(t0));
    }
    report('btrfs: subvolume create + qgroup limit (2 processes), median of 10', `${median(times).toFixed(1)} ms`);
    let encrypt = 'no';
    try {
      execFileSync('mkdir', [path.join(mnt, 'enc')]);
      native.fscryptAddKey(mnt, crypto.randomBytes(64));
      encrypt = 'yes';
    } catch (err) {
      encrypt = `no (${(err as Error).message})`;
    }
    report('btrfs: fscrypt (FS_IOC_ADD_ENCRYPTION_KEY)', encrypt);
  } finally {
    execFileSync('umount', [mnt]);
    fs.rmSync(img);
  }
}

function xfs() {
  const img = path.join(root, 'xfs.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 1 << 30);
  try {
    execFileSync('mkfs.xfs', ['-q', '-f', img]);
  } catch (err) {
    report('xfs', `mkfs.xfs failed (${(err as Error).message.split('\n')[0]})`);
    return;
  }
  const mnt = path.join(root, 'xfs');
  fs.mkdirSync(mnt);
  try {
    execFileSync('mount', ['-o', 'loop,prjquota', img, mnt], { stdio: 'pipe' });
    report('xfs: mount -o prjquota', 'yes');
    execFileSync('umount', [mnt]);
  } catch (err) {
    report('xfs: mount -o prjquota', `no (${(err as Error & { stderr?: Buffer }).stderr?.toString().trim()})`);
  }
  fs.rmSync(img);
}

function deviceMapper() {
  const config = execFileSync('sh', ['-c', 'zcat /proc/config.gz 2>/dev/null | grep -E "^(# )?CONFIG_(BLK_DEV_DM|DM_CRYPT)\\b" || true']).toString().trim();
  report('device-mapper in /proc/config.gz', config || 'CONFIG_BLK_DEV_DM absent');
  report('/dev/mapper/control', (() => { try { fs.closeSync(fs.openSync('/dev/mapper/control', 'r+')); return 'opens'; } catch (err) { return `does not open (${(err as NodeJS.ErrnoException).code})`; } })());
  report('xts(aes) driver (AES-NI would be xts-aes-aesni)', fs.readFileSync('/proc/crypto', 'utf8').match(/driver\s+:\s+(\S*xts\S*)/)?.[1] ?? 'none loaded');
}

async function main() {
  console.log(`kernel ${os.release()}`);
  try {
    deviceMapper();
    await ext4();
    btrfs();
    xfs();
  } finally {
    execFileSync('sh', ['-c', `grep -F ${JSON.stringify(root)} /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l`]);
    fs.rmSync(root, { recursive: true, force: true });
  }
}

void main();
