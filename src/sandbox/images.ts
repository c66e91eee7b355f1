// Images are plain directories used as the read-only lower layer of a workspace's overlay.
//   builtin:busybox  assembled once from the host's static busybox into <stateDir>/images/busybox
//   <name>           an operator-provided directory <imagesDir>/<name>
// Each resolves to a digest over the whole tree, so provenance can name exactly what a build ran on.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { DomainError, invalidArgument } from '../errors';

export const BUILTIN_BUSYBOX = 'builtin:busybox';
const LOCAL_IMAGE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const APPLET_NAME = /^[A-Za-z0-9_.[\]-]+$/;

export interface ResolvedImage {
  name: string;
  rootfs: string; // host path of the image directory
  digest: string; // "sha256:<hex>" over the tree (see imageDigest)
}

export interface ImageStoreOptions {
  stateDir: string;
  imagesDir?: string;   // operator images, one directory per name
  hostBusybox?: string; // default /bin/busybox (Debian busybox-static)
}

export class ImageStore {
  private readonly imagesRoot: string;
  private busybox: Promise<ResolvedImage> | undefined;

  constructor(private readonly opts: ImageStoreOptions) {
    this.imagesRoot = path.join(opts.stateDir, 'images');
  }

  /** INVALID_ARGUMENT for a malformed name, NOT_FOUND for an unknown image. */
  async resolve(image: string): Promise<ResolvedImage> {
    if (image === BUILTIN_BUSYBOX) {
      // This daemon assembles it into its own 0700 state dir and mounts it only read-only, so it is hashed
      // once per process: the fingerprint walk cost ~8 ms of every start (operator images keep it).
      this.busybox ??= this.resolveBusybox().catch((err: unknown) => {
        this.busybox = undefined;
        throw err;
      });
      return this.busybox;
    }
    if (image.startsWith('builtin:')) throw unknownImage(image);
    if (!LOCAL_IMAGE_NAME.test(image)) {
      throw invalidArgument('image', `"${image}" is not "${BUILTIN_BUSYBOX}" or a name matching ${LOCAL_IMAGE_NAME}`);
    }
    const rootfs = await this.localImage(image);
    return { name: image, rootfs, digest: await this.cachedDigest(rootfs, `local-${image}`) };
  }

  private async localImage(name: string): Promise<string> {
    if (!this.opts.imagesDir) throw unknownImage(name);
    const dir = path.join(this.opts.imagesDir, name);
    const st = await fsp.stat(dir).catch(() => undefined);
    if (!st?.isDirectory()) throw unknownImage(name);
    return fsp.realpath(dir); // the operator may link images; the overlay gets the real path
  }

  private async resolveBusybox(): Promise<ResolvedImage> {
    const rootfs = await this.ensureBusybox();
    return { name: BUILTIN_BUSYBOX, rootfs, digest: await this.cachedDigest(rootfs, 'builtin-busybox') };
  }

  private async ensureBusybox(): Promise<string> {
    const target = path.join(this.imagesRoot, 'busybox');
    if (fs.existsSync(target)) return target;
    await fsp.mkdir(this.imagesRoot, { recursive: true, mode: 0o700 });
    await removeStaleTempDirs(this.imagesRoot);
    await assembleBusybox(this.opts.hostBusybox ?? '/bin/busybox', this.imagesRoot, target);
    return target;
  }

  /**
   * Hashing a large image takes a while, so the digest is cached next to the images together with a
   * fingerprint of every entry's inode, size, mtime and ctime; any change to the tree changes the
   * fingerprint (ctime cannot be set back from user space) and forces a fresh hash.
   */
  private async cachedDigest(rootfs: string, key: string): Promise<string> {
    const entries = await walkTree(rootfs);
    const fingerprint = sha256(entries.map(fingerprintLine).join(''));
    const cacheFile = path.join(this.imagesRoot, `${key}.digest`);
    const cached = await readDigestCache(cacheFile);
    if (cached?.fingerprint === fingerprint) return cached.digest;
    const digest = await digestOf(rootfs, entries);
    await fsp.mkdir(this.imagesRoot, { recursive: true, mode: 0o700 });
    await writeAtomically(cacheFile, `${JSON.stringify({ fingerprint, digest })}\n`);
    return digest;
  }
}

function unknownImage(name: string): DomainError {
  return new DomainError('NOT_FOUND', `image: unknown image "${name}"`);
}

// --- assembling builtin:busybox -------------------------------------------------------------------

const PT_INTERP = 3;

/** A binary needing a dynamic loader would not run inside a rootfs that has none. */
export async function checkStaticElf(file: string): Promise<void> {
  const refuse = (why: string) => new DomainError('FAILED_PRECONDITION', `image: ${BUILTIN_BUSYBOX} needs a static busybox at ${file} (Debian busybox-static): ${why}`);
  const st = await fsp.stat(file).catch(() => undefined);
  if (!st?.isFile()) throw refuse('missing');
  const elf = await fsp.readFile(file);
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) throw refuse('not an ELF executable');
  const is64 = elf[4] === 2;
  const le = elf[5] === 1;
  const u16 = (o: number) => (le ? elf.readUInt16LE(o) : elf.readUInt16BE(o));
  const u32 = (o: number) => (le ? elf.readUInt32LE(o) : elf.readUInt32BE(o));
  const phoff = is64 ? Number(le ? elf.readBigUInt64LE(0x20) : elf.readBigUInt64BE(0x20)) : u32(0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  if (phoff + phnum * phentsize > elf.length) throw refuse('truncated ELF program headers');
  for (let i = 0; i < phnum; i++) {
    if (u32(phoff + i * phentsize) === PT_INTERP) throw refuse('it is dynamically linked');
  }
}

async function busyboxApplets(busybox: string): Promise<string[]> {
  const { stdout } = await promisify(execFile)(busybox, ['--list'], { maxBuffer: 1 << 20 });
  const applets = stdout.split('\n').filter((a) => a !== '' && a !== 'busybox');
  const bad = applets.find((a) => !APPLET_NAME.test(a) || a === '.' || a === '..');
  if (bad !== undefined) throw new DomainError('FAILED_PRECONDITION', `image: busybox lists an odd applet name ${JSON.stringify(bad)}`);
  return applets;
}

const BUSYBOX_DIRS: Array<[string, number]> = [
  ['bin', 0o755], ['dev', 0o755], ['etc', 0o755], ['proc', 0o555], ['root', 0o700], ['run', 0o755],
  ['sys', 0o555], ['tmp', 0o1777], ['usr', 0o755], ['var', 0o755], ['var/tmp', 0o1777], ['workspace', 0o755],
];

const BUSYBOX_FILES: Array<[string, string]> = [
  ['etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n'],
  ['etc/group', 'root:x:0:\nnogroup:x:65534:\n'],
  ['etc/hostname', 'workspace\n'],
  ['etc/resolv.conf', ''],
  ['etc/hosts', ''],
];

// Merged /usr, so "#!/usr/bin/env sh" and PATHs with sbin work.
const BUSYBOX_LINKS: Array<[string, string]> = [['sbin', 'bin'], ['usr/bin', '../bin'], ['usr/sbin', '../bin']];

/** Builds the image in a temp dir beside the target and renames it into place: all or nothing. */
async function assembleBusybox(hostBusybox: string, imagesRoot: string, target: string): Promise<void> {
  await checkStaticElf(hostBusybox);
  const applets = await busyboxApplets(hostBusybox);
  const temp = path.join(imagesRoot, `.busybox.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
  try {
    await writeBusyboxTree(temp, hostBusybox, applets);
    await fsp.rename(temp, target).catch((err: NodeJS.ErrnoException) => {
      // Another assembler won the race; its tree is as good as ours.
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
    });
    await fsyncPath(imagesRoot);
  } finally {
    await fsp.rm(temp, { recursive: true, force: true });
  }
}

async function writeBusyboxTree(root: string, hostBusybox: string, applets: string[]): Promise<void> {
  await fsp.mkdir(root, { mode: 0o755 });
  await fsp.chmod(root, 0o755);
  for (const [dir, mode] of BUSYBOX_DIRS) {
    await fsp.mkdir(path.join(root, dir), { mode });
    await fsp.chmod(path.join(root, dir), mode); // mkdir's mode passes through the umask
  }
  const binary = path.join(root, 'bin', 'busybox');
  await fsp.copyFile(hostBusybox, binary);
  await fsp.chmod(binary, 0o755); // never setuid, whatever the host copy has
  await fsyncPath(binary);
  for (const applet of applets) await fsp.symlink('busybox', path.join(root, 'bin', applet));
  for (const [link, to] of BUSYBOX_LINKS) await fsp.symlink(to, path.join(root, link));
  for (const [file, content] of BUSYBOX_FILES) {
    await fsp.writeFile(path.join(root, file), content, { mode: 0o644 });
    await fsp.chmod(path.join(root, file), 0o644);
  }
  for (const entry of await walkTree(root)) await fsp.lchown(path.join(root, entry.rel), 0, 0);
}

/** Temp trees of assemblers that died (their pid is gone). */
async function removeStaleTempDirs(imagesRoot: string): Promise<void> {
  for (const name of await fsp.readdir(imagesRoot)) {
    const m = /^\.busybox\.tmp-(\d+)-/.exec(name);
    if (m && !processAlive(Number(m[1]))) await fsp.rm(path.join(imagesRoot, name), { recursive: true, force: true });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// --- the digest ----------------------------------------------------------------------------------

interface TreeEntry {
  rel: string; // "." for the root, then "bin", "bin/busybox", ...
  st: fs.BigIntStats;
}

/** Every entry, depth first, names in byte order, without following symlinks. */
async function walkTree(root: string): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  const visit = async (rel: string): Promise<void> => {
    const st = await fsp.lstat(path.join(root, rel), { bigint: true });
    out.push({ rel, st });
    if (!st.isDirectory()) return;
    const names = (await fsp.readdir(path.join(root, rel))).sort(compareBytes);
    for (const name of names) await visit(rel === '.' ? name : `${rel}/${name}`);
  };
  await visit('.');
  return out;
}

function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function typeOf(st: fs.BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'link';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

/** type, mode (with setuid bits), owner, path: the part of an entry both the digest and fingerprint cover. */
function entryHead(e: TreeEntry): string {
  const mode = (Number(e.st.mode) & 0o7777).toString(8).padStart(4, '0');
  return `${typeOf(e.st)} ${mode} ${e.st.uid}:${e.st.gid} ${JSON.stringify(e.rel)}`;
}

function fingerprintLine(e: TreeEntry): string {
  return `${entryHead(e)} ${e.st.ino} ${e.st.size} ${e.st.mtimeNs} ${e.st.ctimeNs}\n`;
}

/**
 * The digest: sha256 over one line per entry, in walk order:
 *   <type> <mode octal> <uid>:<gid> <json path> [<size> sha256:<content> | <json link target> | <rdev>]
 * Timestamps and inode numbers are left out, so the same tree digests the same anywhere.
 */
export async function imageDigest(root: string): Promise<string> {
  return digestOf(root, await walkTree(root));
}

async function digestOf(root: string, entries: TreeEntry[]): Promise<string> {
  const manifest = crypto.createHash('sha256');
  for (const e of entries) {
    const full = path.join(root, e.rel);
    let detail = '';
    if (e.st.isFile()) detail = ` ${e.st.size} sha256:${await hashFile(full)}`;
    else if (e.st.isSymbolicLink()) detail = ` ${JSON.stringify(await fsp.readlink(full))}`;
    else if (e.st.isCharacterDevice() || e.st.isBlockDevice()) detail = ` ${e.st.rdev}`;
    manifest.update(`${entryHead(e)}${detail}\n`);
  }
  return `sha256:${manifest.digest('hex')}`;
}

async function hashFile(file: string): Promise<string> {
  const hash = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function sha256(text: string): string {
  return crypto.createHash('sha256').update(text).digest('hex');
}

async function readDigestCache(file: string): Promise<{ fingerprint: string; digest: string } | undefined> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as { fingerprint: string; digest: string };
  } catch {
    return undefined;
  }
}

async function writeAtomically(file: string, content: string): Promise<void> {
  const temp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  await fsp.writeFile(temp, content, { mode: 0o644 });
  await fsp.rename(temp, file);
}

async function fsyncPath(p: string): Promise<void> {
  const handle = await fsp.open(p, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
