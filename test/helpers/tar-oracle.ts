// A test oracle: an independent TypeScript encoder and decoder of the pax/ustar subset Tetrix writes and
// reads (POSIX.1-2001 pax, docs/backup-format.md). The product's one tar codec is native/archive.c and
// native/extract.c; tests use this to build archives the native side must read, and to read what it wrote.
import { DomainError } from '../../src/errors';

export const BLOCK = 512;

export type EntryType = 'file' | 'hardlink' | 'symlink' | 'directory' | 'char-device' | 'block-device' | 'fifo'
  | 'pax' | 'pax-global' | 'gnu-longname' | 'gnu-longlink' | 'other';

export interface EntryHeader {
  path: string;
  type: EntryType;
  mode: number;      // permission bits incl. setuid/setgid/sticky (& 0o7777)
  uid: number;       // container ids
  gid: number;
  size: number;      // bytes of data that follow (files only)
  mtimeNs: bigint;
  linkpath: string;  // symlink target or hard link source
  devMajor?: number;  // character and block devices (Tetrix writes only overlayfs whiteouts, 0/0)
  devMinor?: number;
  xattrs?: Map<string, Buffer>;  // pax SCHILY.xattr.<name>, raw bytes
  metacopySize?: number;         // pax TETRIX.metacopy.size: an overlayfs metadata-only file's size; no data
}

export const XATTR_PREFIX = 'SCHILY.xattr.';
export const METACOPY_SIZE_KEY = 'TETRIX.metacopy.size';

const TYPEFLAGS: Record<string, EntryType> = {
  '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char-device', '4': 'block-device',
  '5': 'directory', '6': 'fifo', x: 'pax', g: 'pax-global', L: 'gnu-longname', K: 'gnu-longlink',
};
const FLAG_OF: Partial<Record<EntryType, string>> = {
  file: '0', hardlink: '1', symlink: '2', 'char-device': '3', 'block-device': '4', directory: '5', fifo: '6', pax: 'x',
};

const MAX_OCTAL_8 = 0o7777777;
const MAX_OCTAL_12 = 0o77777777777;
const NS = 1_000_000_000n;

/** One entry's header bytes: a pax extended header when a field does not fit ustar, then the ustar block. */
export function encodeEntry(h: EntryHeader): Buffer {
  const pax: [string, string | Buffer][] = [];
  const name = h.type === 'directory' && !h.path.endsWith('/') ? h.path + '/' : h.path;
  const split = splitUstarName(name);
  if (!split) pax.push(['path', name]);
  if (h.linkpath && (Buffer.byteLength(h.linkpath) > 100 || !isAscii(h.linkpath))) pax.push(['linkpath', h.linkpath]);
  if (h.uid > MAX_OCTAL_8) pax.push(['uid', String(h.uid)]);
  if (h.gid > MAX_OCTAL_8) pax.push(['gid', String(h.gid)]);
  if (h.size > MAX_OCTAL_12) pax.push(['size', String(h.size)]);
  const secs = h.mtimeNs >= 0n ? h.mtimeNs / NS : 0n;
  const frac = h.mtimeNs >= 0n ? h.mtimeNs % NS : 0n;
  if (frac !== 0n || secs > BigInt(MAX_OCTAL_12)) pax.push(['mtime', `${secs}.${frac.toString().padStart(9, '0')}`]);
  if (h.metacopySize !== undefined) pax.push([METACOPY_SIZE_KEY, String(h.metacopySize)]);
  for (const [name, value] of h.xattrs ?? []) pax.push([XATTR_PREFIX + name, value]);

  const ustar = ustarBlock({
    name: split ? split.name : name.slice(-100).replace(/^\/+/, ''),
    prefix: split ? split.prefix : '',
    mode: h.mode & 0o7777,
    uid: Math.min(h.uid, MAX_OCTAL_8),
    gid: Math.min(h.gid, MAX_OCTAL_8),
    size: h.size > MAX_OCTAL_12 ? 0 : h.size,
    mtime: Number(secs > BigInt(MAX_OCTAL_12) ? 0n : secs),
    flag: FLAG_OF[h.type] ?? '0',
    linkname: h.linkpath && Buffer.byteLength(h.linkpath) <= 100 && isAscii(h.linkpath) ? h.linkpath : '',
    devMajor: h.devMajor ?? 0,
    devMinor: h.devMinor ?? 0,
  });
  if (pax.length === 0) return ustar;
  const body = Buffer.concat(pax.map(([k, v]) => paxRecord(k, v)));
  const paxHeader = ustarBlock({
    name: 'PaxHeaders/' + (split ? split.name : 'entry').slice(0, 80), prefix: '', mode: 0o644, uid: 0, gid: 0,
    size: body.length, mtime: 0, flag: 'x', linkname: '', devMajor: 0, devMinor: 0,
  });
  return Buffer.concat([paxHeader, body, Buffer.alloc(padding(body.length)), ustar]);
}

export function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

// "<len> <key>=<value>\n", len counting every byte of the record. Values are raw bytes (xattrs).
function paxRecord(key: string, value: string | Buffer): Buffer {
  const rest = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), Buffer.from(value), Buffer.from('\n')]);
  let len = rest.length + 1;
  while (String(len).length + rest.length !== len) len++;
  return Buffer.concat([Buffer.from(String(len)), rest]);
}

function isAscii(s: string): boolean {
  return /^[\x01-\x7f]*$/.test(s);
}

function splitUstarName(name: string): { name: string; prefix: string } | undefined {
  if (!isAscii(name)) return undefined;
  if (name.length <= 100) return { name, prefix: '' };
  // The prefix field takes leading directories, split at a '/'.
  for (let i = name.indexOf('/'); i !== -1 && i <= 155; i = name.indexOf('/', i + 1)) {
    if (name.length - i - 1 <= 100 && name.length - i - 1 > 0) return { prefix: name.slice(0, i), name: name.slice(i + 1) };
  }
  return undefined;
}

interface UstarFields {
  name: string; prefix: string; mode: number; uid: number; gid: number; size: number; mtime: number;
  flag: string; linkname: string; devMajor: number; devMinor: number;
}

function ustarBlock(f: UstarFields): Buffer {
  const buf = Buffer.alloc(BLOCK);
  buf.write(f.name, 0, 100, 'utf8');
  writeOctal(buf, f.mode, 100, 8);
  writeOctal(buf, f.uid, 108, 8);
  writeOctal(buf, f.gid, 116, 8);
  writeOctal(buf, f.size, 124, 12);
  writeOctal(buf, f.mtime, 136, 12);
  buf.write(f.flag, 156, 1, 'latin1');
  buf.write(f.linkname, 157, 100, 'utf8');
  buf.write('ustar\x0000', 257, 8, 'latin1');
  writeOctal(buf, f.devMajor, 329, 8);
  writeOctal(buf, f.devMinor, 337, 8);
  buf.write(f.prefix, 345, 155, 'utf8');
  buf.fill(0x20, 148, 156);
  writeOctal(buf, checksum(buf), 148, 8);
  return buf;
}

function writeOctal(buf: Buffer, value: number, off: number, len: number): void {
  buf.write(value.toString(8).padStart(len - 1, '0'), off, len - 1, 'latin1');
  buf[off + len - 1] = 0;
}

function checksum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i];
  return sum;
}

export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

/** Decodes one ustar block; pax and GNU long-name overrides are applied by the caller. */
export function decodeUstar(block: Buffer): EntryHeader {
  const stored = readNumber(block, 148, 8);
  if (stored !== checksum(block)) throw new DomainError('DATA_LOSS', 'archive: header checksum mismatch');
  const name = readString(block, 0, 100);
  const magic = block.toString('latin1', 257, 262);
  const prefix = magic === 'ustar' ? readString(block, 345, 155) : '';
  const flag = String.fromCharCode(block[156]);
  const type = TYPEFLAGS[flag] ?? 'other';
  const device = type === 'char-device' || type === 'block-device';
  return {
    path: prefix ? `${prefix}/${name}` : name,
    type,
    mode: readNumber(block, 100, 8) & 0o7777,
    uid: readNumber(block, 108, 8),
    gid: readNumber(block, 116, 8),
    size: readNumber(block, 124, 12),
    mtimeNs: BigInt(readNumber(block, 136, 12)) * NS,
    linkpath: readString(block, 157, 100),
    ...(device ? { devMajor: readNumber(block, 329, 8), devMinor: readNumber(block, 337, 8) } : {}),
  };
}

function readString(block: Buffer, off: number, len: number): string {
  let end = off;
  while (end < off + len && block[end] !== 0) end++;
  return block.toString('utf8', off, end);
}

function readNumber(block: Buffer, off: number, len: number): number {
  if (block[off] & 0x80) {
    // GNU base-256; values we accept fit in a double.
    let v = block[off] & 0x7f;
    for (let i = off + 1; i < off + len; i++) v = v * 256 + block[i];
    if (!Number.isSafeInteger(v)) throw new DomainError('DATA_LOSS', 'archive: numeric field out of range');
    return v;
  }
  const text = block.toString('latin1', off, off + len).replace(/\0.*$/s, '').trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new DomainError('DATA_LOSS', 'archive: bad numeric field');
  return parseInt(text, 8);
}

/** Parses a pax extended header body into key/value pairs; values stay bytes (xattrs are binary). */
export function decodePax(body: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < body.length) {
    const space = body.indexOf(0x20, off);
    if (space === -1) throw new DomainError('DATA_LOSS', 'archive: malformed pax record');
    const len = parseInt(body.toString('latin1', off, space), 10);
    if (!Number.isSafeInteger(len) || len <= space - off || off + len > body.length || body[off + len - 1] !== 0x0a) {
      throw new DomainError('DATA_LOSS', 'archive: malformed pax record');
    }
    const eq = body.indexOf(0x3d, space + 1);
    if (eq <= space + 1 || eq >= off + len - 1) throw new DomainError('DATA_LOSS', 'archive: malformed pax record');
    out.set(body.toString('utf8', space + 1, eq), Buffer.from(body.subarray(eq + 1, off + len - 1)));
    off += len;
  }
  return out;
}

export function applyPax(h: EntryHeader, records: Map<string, Buffer>): void {
  const pax = new Map<string, string>();
  for (const [key, value] of records) {
    if (key.startsWith(XATTR_PREFIX)) {
      const name = key.slice(XATTR_PREFIX.length);
      if (name === '') throw new DomainError('DATA_LOSS', 'archive: pax xattr record without a name');
      (h.xattrs ??= new Map()).set(name, value);
    } else if (key.startsWith('TETRIX.') && key !== METACOPY_SIZE_KEY) {
      throw new DomainError('DATA_LOSS', `archive: unknown pax record ${JSON.stringify(key)}`);
    } else {
      pax.set(key, value.toString('utf8'));
    }
  }
  const path = pax.get('path');
  if (path !== undefined) h.path = path;
  const linkpath = pax.get('linkpath');
  if (linkpath !== undefined) h.linkpath = linkpath;
  for (const key of ['size', 'uid', 'gid', METACOPY_SIZE_KEY] as const) {
    const v = pax.get(key);
    if (v === undefined) continue;
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new DomainError('DATA_LOSS', `archive: bad pax ${key}`);
    if (key === METACOPY_SIZE_KEY) h.metacopySize = Number(v);
    else h[key] = Number(v);
  }
  const mtime = pax.get('mtime');
  if (mtime !== undefined) {
    const m = /^(\d+)(?:\.(\d{1,9})\d*)?$/.exec(mtime);
    if (!m) throw new DomainError('DATA_LOSS', 'archive: bad pax mtime');
    h.mtimeNs = BigInt(m[1]) * NS + BigInt((m[2] ?? '').padEnd(9, '0'));
  }
}
