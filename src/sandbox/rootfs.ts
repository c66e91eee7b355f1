// A workspace's rootfs on the host: lower/, upper/, work/, rootfs/ and content/ of its directory (the
// layout is written once, in src/layout.ts).
//
// Ownership: the container's root is host uid uidBase, and image files are owned by host root, which is
// unmapped inside the user namespace. There they would show as nobody and even container root could
// not write /etc or enter /root (capabilities in a user namespace only cover inodes whose owner is
// mapped into it). So the image is seen through an idmapped mount (mount_setattr MOUNT_ATTR_IDMAP,
// overlayfs accepts it as a lower layer since Linux 5.19): host id N < idCount reads as uidBase+N, for
// free, and copy-ups land in upper/ with the shifted owner. The image itself is never touched.
// If the kernel or the image's filesystem refuses idmapping, the old way is the fallback: overlay the
// image directly and chown every entry through the overlay to uidBase+N (with metacopy=on a metadata-only
// copy-up, about a millisecond each: fine for busybox, ~30 s for a 30k-file image).
//
// /workspace from a cached prebuild tree (src/prebuild/trees.ts) is the same idea one level down: content/
// is an overlay whose lower is the tree idmapped into the workspace's range (content-lower/), with its own
// upper and work dirs, so a start copies nothing of it and the tree is never written. Everything that
// reads or writes the workspace's files (spawn's /workspace bind, the git fetch, backups, exec) names
// content/ and sees the merged view. That overlay stays mounted until the workspace's files go (teardown),
// not only while it runs: a stopped workspace is still backed up from it.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { DomainError, invalidArgument } from '../errors';
import { native, NativeError } from '../native';
import { workspaceLayout, type WorkspaceLayout } from '../layout';
import { allSettledOrThrow } from '../promises';

export interface PrepareRootfsOptions {
  /** Runs once the (empty) upper and content dirs exist, before anything is mounted. */
  beforeMount?: (dirs: { upper: string; content: string }) => Promise<void>;
  wsDir: string;
  lowerDir: string | string[]; // the image directory (ImageStore.resolve().rootfs), or an OCI image's layers, top first
  uidBase: number;  // host id of container root; gids use the same base
  idCount?: number; // size of the mapped range, default 65536
  /** A tree with unshifted ids (as an image's) that /workspace becomes an overlay over, instead of a plain dir. */
  contentLower?: string;
}

/** How the image came to belong to container root: an idmapped lower layer, or the chown fallback. */
export type ImageOwnership = { how: 'idmapped' } | { how: 'chowned'; reason: string };

export interface PreparedRootfs {
  rootfs: string;
  contentDir: string;
  ownership: ImageOwnership;
}

// The workspace's ids reach rootfs/ and content/ through wsDir: search permission for "other" lets them
// through without letting anyone list the directory.
const TRAVERSE_ONLY = 0o711;

/**
 * Mounts the overlay and hands the tree to container root. Refuses (FAILED_PRECONDITION) if wsDir
 * still holds a previous rootfs: after a crash, releaseRootfs() first. On failure nothing stays mounted.
 */
export async function prepareRootfs(opts: PrepareRootfsOptions): Promise<PreparedRootfs> {
  const idCount = opts.idCount ?? 65536;
  checkIds(opts.uidBase, idCount);
  const layout = workspaceLayout(opts.wsDir);
  if (Array.isArray(opts.lowerDir)) return prepareLayeredRootfs({ ...opts, lowerDir: opts.lowerDir }, layout, idCount);
  const lowerDir = path.resolve(opts.lowerDir);
  for (const p of [lowerDir, layout.lower, layout.upper, layout.work]) checkOverlayPath(p);
  // One stat of a local directory: cheaper on the loop than a round trip to a libuv worker.
  if (!statOrUndefined(lowerDir)?.isDirectory()) {
    throw new DomainError('NOT_FOUND', `rootfs: image directory ${lowerDir} does not exist`);
  }
  await makeLayout(layout, opts.uidBase, opts.contentLower !== undefined);
  try {
    // E.g. a restore of the upper layer and content, which must land before the overlay is mounted.
    await opts.beforeMount?.({ upper: layout.upper, content: layout.content });
    if (opts.contentLower !== undefined) await mountContentOverlay(opts.contentLower, layout, opts.uidBase, idCount);
    const ownership = await mountShiftedImage(lowerDir, layout, opts.uidBase, idCount);
    return { rootfs: layout.rootfs, contentDir: layout.content, ownership };
  } catch (err) {
    await unmountRootfs(layout.wsDir);
    throw err;
  }
}

/**
 * An OCI image: each layer idmapped at lower/<i>, then one overlay of them all through fsconfig's
 * "lowerdir+" (native/overlay.c), so any number of layers fits and nothing is walked or copied per start.
 * There is no chown fallback: an image of many layers needs idmapped mounts (Linux >= 5.19).
 */
async function prepareLayeredRootfs(opts: PrepareRootfsOptions & { lowerDir: string[] }, layout: WorkspaceLayout, idCount: number): Promise<PreparedRootfs> {
  if (opts.lowerDir.length === 0) throw invalidArgument('image', 'has no layers');
  await makeLayout(layout, opts.uidBase, opts.contentLower !== undefined);
  try {
    await opts.beforeMount?.({ upper: layout.upper, content: layout.content });
    if (opts.contentLower !== undefined) await mountContentOverlay(opts.contentLower, layout, opts.uidBase, idCount);
    const lowers = opts.lowerDir.map((_, i) => path.join(layout.lower, String(i)));
    await native.makeDirs(lowers.map((p) => ({ path: p, mode: 0o700, uid: 0, gid: 0 })));
    // At once, on the addon's worker threads: each is open_tree, mount_setattr and move_mount.
    await allSettledOrThrow(opts.lowerDir.map((dir, i) => native.idmapMount(dir, lowers[i], opts.uidBase, opts.uidBase, idCount).catch((err: unknown) => {
      throw new DomainError('FAILED_PRECONDITION', `rootfs: an OCI image needs idmapped mounts: ${(err as Error).message}`, { cause: err });
    })));
    try {
      await native.overlayMountLayers(layout.rootfs, lowers, layout.upper, layout.work);
    } catch (err) {
      throw mountError(layout.rootfs, err);
    }
    return { rootfs: layout.rootfs, contentDir: layout.content, ownership: { how: 'idmapped' } };
  } catch (err) {
    await unmountRootfs(layout.wsDir);
    throw err;
  }
}

/** The idmapped lower layer if the kernel takes it, else a plain overlay of the image and the chown walk. */
async function mountShiftedImage(lowerDir: string, layout: WorkspaceLayout, uidBase: number, idCount: number): Promise<ImageOwnership> {
  const refused = await mountIdmappedLower(lowerDir, layout, uidBase, idCount);
  if (refused === undefined) return { how: 'idmapped' };
  await mountOverlay(lowerDir, layout);
  await shiftImageOwnership(lowerDir, layout.rootfs, uidBase, idCount);
  return { how: 'chowned', reason: refused };
}

/**
 * lower/ = the image idmapped into the workspace's range, then the overlay on it. Returns why not, with
 * nothing left mounted, when the kernel refuses: any failing step of idmapMount (no idmapped mounts, a
 * filesystem without them: `idmap mount_setattr: EINVAL`), or an overlayfs older than 5.19 that rejects
 * idmapped layers (EINVAL). Other overlay failures throw.
 */
async function mountIdmappedLower(lowerDir: string, layout: WorkspaceLayout, uidBase: number, idCount: number): Promise<string | undefined> {
  try {
    await native.idmapMount(lowerDir, layout.lower, uidBase, uidBase, idCount);
  } catch (err) {
    if (err instanceof NativeError) return err.message;
    throw err;
  }
  try {
    await mountOverlay(layout.lower, layout);
    return undefined;
  } catch (err) {
    await umountDetached(layout.lower);
    const cause = (err as Error).cause;
    if (cause instanceof NativeError && cause.code === 'EINVAL') return `overlay over an idmapped layer: ${cause.message}`;
    throw err;
  }
}

function checkIds(uidBase: number, idCount: number): void {
  if (!Number.isSafeInteger(idCount) || idCount < 1) throw invalidArgument('id_count', `must be a positive integer, got ${idCount}`);
  // Container root as host root would undo the whole point of the user namespace.
  if (!Number.isSafeInteger(uidBase) || uidBase < idCount) {
    throw invalidArgument('uid_base', `must be an integer >= ${idCount} (never host root's range), got ${uidBase}`);
  }
}

/** overlayfs splits its options at "," and lowerdir at ":"; such paths cannot be passed safely. */
function checkOverlayPath(p: string): void {
  if (/[,:\\\n]/.test(p)) throw invalidArgument('rootfs', `path ${JSON.stringify(p)} contains a character overlayfs options cannot carry`);
}

async function makeLayout(layout: WorkspaceLayout, uidBase: number, contentOverlay: boolean): Promise<void> {
  fs.mkdirSync(layout.wsDir, { recursive: true, mode: TRAVERSE_ONLY });
  fs.chmodSync(layout.wsDir, TRAVERSE_ONLY);
  // Only the daemon mounts below a workspace dir (lower and rootfs), so those two say whether a previous
  // rootfs is still there, without reading mountinfo.
  if (isMountPoint(layout.rootfs) || isMountPoint(layout.lower) || isMountPoint(layout.content) || nonEmpty(layout.upper)) {
    throw new DomainError('FAILED_PRECONDITION', `rootfs: ${layout.wsDir} still holds a previous rootfs; release it first`);
  }
  // One worker round trip for all five (native/mount.c makeDirs says why).
  const dir = (p: string, mode: number, owner: number) => ({ path: p, mode, uid: owner, gid: owner });
  try {
    await native.makeDirs([
      dir(layout.lower, 0o700, 0), // once mounted, the image's root (and its mode) covers it
      dir(layout.upper, 0o755, uidBase), // the upper's root is the workspace's "/"
      dir(layout.work, 0o700, 0),
      dir(layout.rootfs, 0o755, 0),
      dir(layout.content, 0o755, uidBase),
      ...(contentOverlay ? [
        dir(layout.contentLower, 0o700, 0),
        dir(layout.contentUpper, 0o755, uidBase), // the merged root's owner and mode are the upper's
        dir(layout.contentWork, 0o700, 0),
      ] : []),
    ]);
  } catch (err) {
    throw new DomainError('INTERNAL', `rootfs: ${(err as Error).message}`, { cause: err });
  }
}

function statOrUndefined(p: string): fs.Stats | undefined {
  try {
    return fs.statSync(p);
  } catch {
    return undefined;
  }
}

function nonEmpty(dir: string): boolean {
  try {
    return fs.readdirSync(dir).length > 0;
  } catch {
    return false;
  }
}

/**
 * nodev: a device node in an image must not become a door to host devices. metacopy=on makes a copy-up
 * for a chmod or chown (and the fallback's ownership shift) metadata-only; kernels that refuse it get a
 * plain overlay. Not nosuid: the image's setuid programs are meant to work inside the workspace.
 */
async function mountOverlay(lowerDir: string, layout: WorkspaceLayout): Promise<void> {
  const options = `lowerdir=${lowerDir},upperdir=${layout.upper},workdir=${layout.work}`;
  try {
    await native.mountAsync('overlay', layout.rootfs, 'overlay', native.constants.MS_NODEV, `${options},metacopy=on`);
  } catch (err) {
    if (!(err instanceof NativeError && err.code === 'EINVAL')) throw mountError(layout.rootfs, err);
    try {
      await native.mountAsync('overlay', layout.rootfs, 'overlay', native.constants.MS_NODEV, options);
    } catch (again) {
      throw mountError(layout.rootfs, again);
    }
  }
}

/**
 * content/ as an overlay over a prebuild tree: content-lower/ the tree idmapped into the workspace's range
 * (read-only, nodev, nosuid), upper and work in the workspace's own dir. redirect_dir=off, as Docker's
 * overlay2 runs: a rename(2) of a directory that came from the tree fails with EXDEV (mv copies instead),
 * and the upper holds no redirect xattrs pointing into the lower. index=off: the tree is mounted afresh on
 * each mount (after a reboot too), so there is no origin for an index to check. The tree's path is written
 * first, so a crash after the mount still tells remountContent and the sweep what is mounted.
 */
async function mountContentOverlay(tree: string, layout: WorkspaceLayout, uidBase: number, idCount: number): Promise<void> {
  for (const p of [tree, layout.contentLower, layout.contentUpper, layout.contentWork]) checkOverlayPath(p);
  fs.writeFileSync(layout.contentTree, tree, { mode: 0o600 });
  if (!isMountPoint(layout.contentLower)) {
    try {
      await native.idmapMount(tree, layout.contentLower, uidBase, uidBase, idCount);
    } catch (err) {
      throw new DomainError('FAILED_PRECONDITION', `rootfs: /workspace over a prebuild tree needs idmapped mounts: ${(err as Error).message}`, { cause: err });
    }
  }
  const options = `lowerdir=${layout.contentLower},upperdir=${layout.contentUpper},workdir=${layout.contentWork},redirect_dir=off,index=off`;
  try {
    await native.mountAsync('overlay', layout.content, 'overlay', native.constants.MS_NODEV, options);
  } catch (err) {
    throw mountError(layout.content, err);
  }
}

/**
 * After a reboot (mounts outlive a daemon restart, not the node's): /workspace's overlay over its prebuild
 * tree, mounted again if the workspace has one and it is not mounted. A no-op for every other workspace.
 */
export async function remountContent(wsDir: string, uidBase: number, idCount = 65536): Promise<void> {
  const layout = workspaceLayout(wsDir);
  let tree: string;
  try {
    tree = fs.readFileSync(layout.contentTree, 'utf8');
  } catch {
    return;
  }
  if (isMountPoint(layout.content)) return;
  checkIds(uidBase, idCount);
  await mountContentOverlay(tree, layout, uidBase, idCount);
}

function mountError(target: string, err: unknown): DomainError {
  return new DomainError('INTERNAL', `rootfs: mount overlay at ${target}: ${(err as Error).message}`, { cause: err });
}

/**
 * The fallback. Walks the image (never the merged tree, which a workspace could have filled with symlinks;
 * this runs on a fresh mount before anything ran in it) and chowns each entry through the overlay.
 * Symlinks are skipped (each would cost a full copy-up, about 1 ms, and a symlink's owner only matters
 * in sticky directories, where they are shifted too): in /bin they show as nobody, harmlessly.
 */
async function shiftImageOwnership(lowerDir: string, rootfs: string, uidBase: number, idCount: number): Promise<void> {
  const shifted = (id: number) => (id < idCount ? uidBase + id : id);
  const visit = async (rel: string, parentSticky: boolean): Promise<void> => {
    const st = await fsp.lstat(path.join(lowerDir, rel));
    const merged = path.join(rootfs, rel);
    const wanted = !st.isSymbolicLink() || parentSticky;
    if (wanted && (shifted(st.uid) !== st.uid || shifted(st.gid) !== st.gid)) {
      await fsp.lchown(merged, shifted(st.uid), shifted(st.gid));
      // chown(2) clears setuid/setgid on files; the image meant them (for its own ids).
      if ((st.mode & 0o6000) !== 0 && st.isFile()) await fsp.chmod(merged, st.mode & 0o7777);
    }
    if (!st.isDirectory()) return;
    const sticky = (st.mode & 0o1000) !== 0;
    for (const name of await fsp.readdir(path.join(lowerDir, rel))) await visit(path.join(rel, name), sticky);
  };
  await visit('.', false);
}

/** Writes each file (path relative to the root) into a rootfs that has not started yet. */
export function writeRootfsFiles(rootfs: string, files: Record<string, string>): void {
  for (const [relative, content] of Object.entries(files)) writeRootfsFile(rootfs, relative, content);
}

/**
 * Writes a file into a rootfs that has not started yet. The image is untrusted: /etc must be a real
 * directory and the file is created fresh with O_NOFOLLOW, so a symlink planted in the image can
 * never redirect the write to a host path.
 */
function writeRootfsFile(rootfs: string, relative: string, content: string): void {
  const target = path.join(rootfs, relative);
  const dir = path.dirname(target);
  const st = fs.lstatSync(dir, { throwIfNoEntry: false });
  if (!st) fs.mkdirSync(dir, { mode: 0o755 });
  else if (!st.isDirectory()) throw new DomainError('FAILED_PRECONDITION', `image: /${path.relative(rootfs, dir)} is not a directory`);
  const existing = fs.lstatSync(target, { throwIfNoEntry: false });
  if (existing?.isDirectory()) throw new DomainError('FAILED_PRECONDITION', `image: /${relative} is a directory`);
  if (existing) fs.unlinkSync(target);
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const fd = fs.openSync(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
  try {
    fs.writeSync(fd, content);
    // Owned like the rootfs's root (the workspace's root), so the workspace may edit its own copy.
    const owner = fs.statSync(rootfs);
    fs.fchownSync(fd, owner.uid, owner.gid);
  } finally {
    fs.closeSync(fd);
  }
}

// --- release ---------------------------------------------------------------------------------------

/**
 * Unmounts everything at or below wsDir and checks mountinfo that it worked. keepContent: except /workspace's
 * overlay over a prebuild tree (content/ and content-lower/), which is the workspace's files, not its runtime.
 */
export async function unmountRootfs(wsDir: string, opts: { keepContent?: boolean } = {}): Promise<void> {
  const dir = realDir(wsDir);
  if (dir === undefined) return;
  // The daemon's own mounts, the overlay first: a detach takes whatever was mounted below it along.
  const layout = workspaceLayout(dir);
  const contentMounts = opts.keepContent ? [] : [layout.content, layout.contentLower];
  for (const target of [layout.rootfs, layout.lower, ...contentMounts]) {
    for (let layer = 0; layer < 16 && isMountPoint(target); layer++) await umountDetached(target);
  }
  const kept = opts.keepContent ? [layout.content, layout.contentLower] : [];
  const remaining = async (): Promise<string[]> => (await mountsUnderAsync(dir)).filter((m) => !kept.some((k) => m === k || m.startsWith(`${k}/`)));
  // Anything else (stacked or foreign mounts) shows in mountinfo. One read: usually nothing is left.
  for (let round = 0; round < 16; round++) {
    const mounts = await remaining();
    if (mounts.length === 0) return;
    for (const target of mounts.reverse()) await umountDetached(target);
  }
  const left = await remaining();
  if (left.length > 0) throw new DomainError('INTERNAL', `rootfs: still mounted after unmounting: ${left.join(', ')}`);
}

/** statx's mount-root flag; a missing path is not a mount point. Kernels before 5.8 ask mountinfo. */
function isMountPoint(target: string): boolean {
  try {
    return native.isMountPoint(target);
  } catch (err) {
    if (err instanceof NativeError && err.code === 'ENOENT') return false;
    if (err instanceof NativeError && err.code === 'ENOTSUP') return readMountPoints().includes(realDir(target) ?? target);
    throw err;
  }
}

async function umountDetached(target: string): Promise<void> {
  try {
    await native.umountAsync(target, native.constants.MNT_DETACH);
  } catch (err) {
    // EINVAL: no longer a mount point (a parent's detach took it along); ENOENT: gone.
    if (err instanceof NativeError && (err.code === 'EINVAL' || err.code === 'ENOENT')) return;
    throw new DomainError('INTERNAL', `rootfs: unmount ${target}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Removes the workspace directory. Refuses while anything below it is still mounted: a recursive
 * delete would walk into the mount and delete the image or a bind-mounted host directory.
 */
export async function removeWorkspaceDir(wsDir: string): Promise<void> {
  const dir = realDir(wsDir);
  if (dir === undefined) return;
  const mounted = await mountsUnderAsync(dir);
  if (mounted.length > 0) {
    throw new DomainError('FAILED_PRECONDITION', `rootfs: refusing to remove ${dir}: still mounted: ${mounted.join(', ')}`);
  }
  await fsp.rm(dir, { recursive: true, force: true });
}

/** unmountRootfs then the removal: idempotent, and fine on half-created directories. */
export async function releaseRootfs(wsDir: string): Promise<void> {
  await unmountRootfs(wsDir); // it has just checked mountinfo: nothing is mounted below
  const dir = realDir(wsDir);
  if (dir !== undefined) await fsp.rm(dir, { recursive: true, force: true });
}

function realDir(dir: string): string | undefined {
  try {
    return fs.realpathSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

const MOUNTINFO = '/proc/self/mountinfo';

/** Mount points at or below dir in this mount namespace, in mountinfo order (parents first). */
export function mountsUnder(dir: string): string[] {
  return below(dir, readMountPoints());
}

/** mountsUnder with the read on a worker: with hundreds of workspaces the kernel takes milliseconds to
 *  write mountinfo, and teardowns come in bursts too (bench/density: 70-120 ms event-loop stalls). */
async function mountsUnderAsync(dir: string): Promise<string[]> {
  return below(dir, mountPoints(await fsp.readFile(MOUNTINFO, 'utf8')));
}

function below(dir: string, mounts: string[]): string[] {
  const root = path.resolve(dir);
  return mounts.filter((m) => m === root || m.startsWith(`${root}/`));
}

function readMountPoints(): string[] {
  return mountPoints(fs.readFileSync(MOUNTINFO, 'utf8'));
}

/** Field 5 of proc_pid_mountinfo(5), with the kernel's octal escapes (\040 for space...) undone. */
function mountPoints(mountinfo: string): string[] {
  return mountinfo
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => line.split(' ')[4].replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))));
}
