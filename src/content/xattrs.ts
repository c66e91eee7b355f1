// Which extended attributes a backup keeps, and how restore checks and translates them
// (docs/backup-format.md, "Extended attributes"). No file system access here.
//
// Kept: user.* (files and directories), security.capability (regular files; its root id translated like
// owners), and in the overlay upper layer only, overlayfs's own trusted.overlay.opaque, .redirect and
// .metacopy, without which a restored upper layer shows deleted or renamed image entries, or zeros for
// image files whose metadata the workspace changed. Everything else is left out, and refused on restore.

export type XattrEntryKind = 'file' | 'directory';

export interface XattrContext {
  upper: boolean;     // the overlay upper layer (trusted.overlay.* allowed)
  uidBase: number;    // host id of container root
  idCount: number;
}

export const CAPABILITY = 'security.capability';
export const OVERLAY_OPAQUE = 'trusted.overlay.opaque';
export const OVERLAY_REDIRECT = 'trusted.overlay.redirect';
export const OVERLAY_METACOPY = 'trusted.overlay.metacopy';

const OVERLAY_KEPT: Record<string, XattrEntryKind[]> = {
  [OVERLAY_OPAQUE]: ['directory'],
  [OVERLAY_REDIRECT]: ['directory', 'file'],
  [OVERLAY_METACOPY]: ['file'],
};

/**
 * Left out without a report: overlayfs's inode-number and verification caches (it does without them on a
 * restored layer, and a file handle of an image inode means nothing on another node), and SELinux labels,
 * which belong to the node's policy, not to the workspace.
 */
export const XATTRS_LEFT_OUT_QUIETLY: readonly string[] = [
  'trusted.overlay.origin', 'trusted.overlay.impure', 'trusted.overlay.uuid', 'trusted.overlay.nlink',
  'trusted.overlay.upper', 'security.selinux',
];
const LEFT_OUT_QUIETLY = new Set(XATTRS_LEFT_OUT_QUIETLY);

const NAME_MAX = 255;     // XATTR_NAME_MAX
const VALUE_MAX = 65536;  // XATTR_SIZE_MAX

// ---------------------------------------------------------------------------------------------------
// Backup: host view -> archive

/**
 * The attributes of one entry as the archive keeps them. `read` returns a value (null if it vanished);
 * `leftOut` hears about each attribute not kept, except those left out quietly.
 */
export function xattrsToArchive(
  names: string[], read: (name: string) => Buffer | null, kind: XattrEntryKind, ctx: XattrContext,
  leftOut: (why: string) => void,
): Map<string, Buffer> | undefined {
  let kept: Map<string, Buffer> | undefined;
  for (const name of names.sort()) {
    if (LEFT_OUT_QUIETLY.has(name)) continue;
    if (!keptName(name, kind, ctx) || name.includes('=')) {
      leftOut(`xattr ${name} not kept`);
      continue;
    }
    const raw = read(name);
    if (raw === null) continue;
    const value = name === CAPABILITY ? capabilityToContainer(raw, ctx) : raw;
    if (!value) {
      leftOut(`xattr ${name} not kept: it does not apply in the workspace's user namespace`);
      continue;
    }
    (kept ??= new Map()).set(name, value);
  }
  return kept;
}

function keptName(name: string, kind: XattrEntryKind, ctx: XattrContext): boolean {
  if (name === CAPABILITY) return kind === 'file';
  if (name.startsWith('user.')) return true;
  return ctx.upper && (OVERLAY_KEPT[name]?.includes(kind) ?? false);
}

// ---------------------------------------------------------------------------------------------------
// Restore: archive -> host

/**
 * Checks an entry's archived attributes and returns them as they are to be set on the host (capability
 * root ids translated). Anything outside the kept set, or malformed, is refused through `refuse`.
 */
export function xattrsFromArchive(
  xattrs: Map<string, Buffer>, kind: XattrEntryKind, ctx: XattrContext, refuse: (why: string) => Error,
): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [name, value] of xattrs) {
    if (Buffer.byteLength(name) > NAME_MAX || value.length > VALUE_MAX) throw refuse(`xattr ${name}: too long`);
    if (!keptName(name, kind, ctx) || name === 'user.') {
      const where = name.startsWith('trusted.overlay.') && !ctx.upper ? ' outside the upper layer' : '';
      throw refuse(`xattr ${JSON.stringify(name)} is not restored on a ${kind}${where}`);
    }
    const checked = checkValue(name, value, ctx);
    if (!checked) throw refuse(`xattr ${name}: malformed${name === CAPABILITY ? ', or rooted outside the workspace' : ''}`);
    out.set(name, checked);
  }
  return out;
}

function checkValue(name: string, value: Buffer, ctx: XattrContext): Buffer | undefined {
  switch (name) {
    case CAPABILITY: return capabilityToHost(value, ctx);
    case OVERLAY_OPAQUE: return value.equals(Buffer.from('y')) ? value : undefined;
    case OVERLAY_REDIRECT: return isRedirect(value) ? value : undefined;
    case OVERLAY_METACOPY: return isMetacopy(value) ? value : undefined;
    default: return value; // user.*: opaque bytes
  }
}

/** overlayfs redirects: an absolute path from the layer root or one name (fs/overlayfs/namei.c). */
function isRedirect(value: Buffer): boolean {
  const s = value.toString('utf8');
  if (s === '' || s.length > 4096 || s.includes('\0') || !Buffer.from(s, 'utf8').equals(value)) return false;
  const parts = s.startsWith('/') ? s.slice(1).split('/') : [s];
  return parts.every((p) => p !== '' && p !== '.' && p !== '..' && !p.includes('/'));
}

/** Empty, or struct ovl_metacopy: version 0, len (the whole size, 4..68), flags, digest algorithm, digest. */
function isMetacopy(value: Buffer): boolean {
  return value.length === 0 || (value.length >= 4 && value.length <= 68 && value[0] === 0 && value[1] === value.length);
}

// ---------------------------------------------------------------------------------------------------
// File capabilities (linux/capability.h, capabilities(7) "Namespaced file capabilities")
//
// A v2 capability (20 bytes) applies in every user namespace; a v3 one (24 bytes) only where its root id
// is the namespace's root. The daemon reads them as init-namespace root; the archive keeps them as the
// workspace sees them (v2 when they apply to its root, v3 with a container root id otherwise), and restore
// writes v3 with the restoring workspace's root. So a backup never grants capabilities on the host, even
// for a file whose capability was set there as v2.

const REVISION_MASK = 0xff000000;
const REVISION_2 = 0x02000000;
const REVISION_3 = 0x03000000;
const FLAGS_EFFECTIVE = 0x000001;
const SIZE_2 = 20;
const SIZE_3 = 24;

function capHeader(value: Buffer): { revision: number; flags: number } | undefined {
  if (value.length < 4) return undefined;
  const magic = value.readUInt32LE(0);
  const revision = (magic & REVISION_MASK) >>> 0;
  const flags = magic & ~REVISION_MASK;
  if ((flags & ~FLAGS_EFFECTIVE) !== 0) return undefined;
  if ((revision === REVISION_2 && value.length === SIZE_2) || (revision === REVISION_3 && value.length === SIZE_3)) {
    return { revision, flags };
  }
  return undefined;
}

function capValue(flags: number, data: Buffer, rootId?: number): Buffer {
  const out = Buffer.alloc(rootId === undefined ? SIZE_2 : SIZE_3);
  out.writeUInt32LE(((rootId === undefined ? REVISION_2 : REVISION_3) | flags) >>> 0, 0);
  data.copy(out, 4, 0, 16);
  if (rootId !== undefined) out.writeUInt32LE(rootId, 20);
  return out;
}

/** Host view -> container view; undefined if the capability does not apply inside the workspace. */
export function capabilityToContainer(value: Buffer, ctx: XattrContext): Buffer | undefined {
  const h = capHeader(value);
  if (!h) return undefined;
  const data = value.subarray(4, 20);
  if (h.revision === REVISION_2) return capValue(h.flags, data);
  const id = value.readUInt32LE(20) - ctx.uidBase;
  if (id === 0) return capValue(h.flags, data);
  return id > 0 && id < ctx.idCount ? capValue(h.flags, data, id) : undefined;
}

/** Container view -> host value (always v3, rooted in the restoring workspace); undefined if malformed. */
export function capabilityToHost(value: Buffer, ctx: XattrContext): Buffer | undefined {
  const h = capHeader(value);
  if (!h) return undefined;
  const id = h.revision === REVISION_2 ? 0 : value.readUInt32LE(20);
  if (id >= ctx.idCount) return undefined;
  return capValue(h.flags, value.subarray(4, 20), ctx.uidBase + id);
}
