import t from 'tap';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { measureTrees, symlinkEscapes, TreeArchiveStream, TreeExtraction } from '../../src/content/archive';
import { TAR_BLOCK } from '../../src/native';
import { applyPax, BLOCK, decodePax, decodeUstar, encodeEntry, isZeroBlock, padding } from '../helpers/tar-oracle';
import { TreeWalk } from '../../src/content/tree-walk';
import { expectedSnapshot, makeTree, snapshot, tempDir, UID_BASE } from './backup-suite';

async function archiveTo(file: string, dir: string, skipped: string[] = []): Promise<void> {
  await pipeline(new TreeArchiveStream([{ name: 'content', dir }], {
    uidBase: UID_BASE, onSkip: (rel, why) => skipped.push(`${rel}: ${why}`),
  }), fs.createWriteStream(file));
}

t.test('an archive ends with two zero blocks of the native codec\'s block size, which the oracle shares', async (t) => {
  t.equal(TAR_BLOCK, 512, 'POSIX tar blocks');
  t.equal(BLOCK, TAR_BLOCK);
  const dir = await tempDir(t, 'trailer');
  fs.writeFileSync(path.join(dir, 'f'), 'x');
  const file = path.join(await tempDir(t, 'trailer-out'), 'a.tar');
  await archiveTo(file, dir);
  const bytes = fs.readFileSync(file);
  t.equal(bytes.length % TAR_BLOCK, 0);
  t.ok(bytes.subarray(bytes.length - 2 * TAR_BLOCK).every((b) => b === 0), 'the end-of-archive marker');
});

t.test('GNU tar reads our archives: same names, modes, owners, link targets', async (t) => {
  const base = tempDir(t, 'archive-gnu');
  makeTree(path.join(base, 'src'));
  await archiveTo(path.join(base, 'a.tar'), path.join(base, 'src'));
  fs.mkdirSync(path.join(base, 'out'));
  execFileSync('tar', ['-xpf', path.join(base, 'a.tar'), '-C', path.join(base, 'out'), '--numeric-owner']);
  // GNU tar restores container ids as they are (no uidBase), so compare with base 0 against UID_BASE.
  const mine = snapshot(path.join(base, 'src')).map((r) => ({ ...(r as object), mtimeUs: 0, uid: 0, gid: 0 }));
  const gnu = snapshot(path.join(base, 'out/content'), 0).map((r) => ({ ...(r as object), mtimeUs: 0, uid: 0, gid: 0 }));
  t.same(gnu, mine);
  const list = execFileSync('tar', ['-tvf', path.join(base, 'a.tar'), '--numeric-owner']).toString();
  t.match(list, /1000\/5 .* content\/tool/, 'owners are container ids');
  t.match(list, /65534\/65534 .* content\/host-root-owned/, 'host ids outside the range are the overflow id');
});

t.test('sockets and FIFOs are left out and reported; escaping symlinks fail the backup', async (t) => {
  const base = tempDir(t, 'archive-skip');
  const src = path.join(base, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'file'), 'x');
  execFileSync('mkfifo', [path.join(src, 'fifo')]);
  const server = net.createServer().listen(path.join(src, 'sock'));
  t.teardown(() => server.close());
  await new Promise((r) => server.once('listening', r));
  const skipped: string[] = [];
  await archiveTo(path.join(base, 'a.tar'), src, skipped);
  t.same(skipped.sort(), ['fifo: FIFO', 'sock: socket']);
  t.same(measureTrees([src]), { files: 2, bytes: 1 }, 'the root and the file');

  fs.symlinkSync('/etc/passwd', path.join(src, 'abs'));
  await t.rejects(archiveTo(path.join(base, 'b.tar'), src), { code: 'FAILED_PRECONDITION', message: /content\/abs/ });
});

t.test('a directory swapped for a symlink during a backup does not pull host files in', async (t) => {
  const base = tempDir(t, 'archive-race');
  const src = path.join(base, 'src');
  fs.mkdirSync(path.join(src, 'a'), { recursive: true });
  fs.writeFileSync(path.join(src, 'a/passwd'), 'workspace file');
  fs.writeFileSync(path.join(src, '0big'), Buffer.alloc(3 << 20)); // walked before "a": output flows meanwhile
  const host = path.join(base, 'host');
  fs.mkdirSync(host);
  fs.writeFileSync(path.join(host, 'passwd'), 'HOST SECRET');
  const skipped: string[] = [];
  const stream = new TreeArchiveStream([{ name: 'content', dir: src }], {
    uidBase: UID_BASE, changes: 'skip', onSkip: (rel, why) => skipped.push(`${rel}: ${why}`),
  });
  let swapped = false;
  const chunks: Buffer[] = [];
  // Swap as soon as the walk has listed the root (it holds the root's fd and its entries).
  stream.once('data', (c) => {
    chunks.push(c);
    fs.renameSync(path.join(src, 'a'), path.join(src, 'a-old'));
    fs.symlinkSync(host, path.join(src, 'a'));
    swapped = true;
  });
  await pipeline(stream, new Writable({ write(c, _e, cb) { chunks.push(c); cb(); } }));
  t.ok(swapped);
  t.notMatch(Buffer.concat(chunks).toString('latin1'), 'workspace file', 'the swapped directory was not archived');
  t.same(skipped, ['a: changed during backup']);
  t.notMatch(Buffer.concat(chunks).toString('latin1'), 'HOST SECRET');
});

t.test('symlink containment is decided lexically from the link\'s directory', async (t) => {
  t.notOk(symlinkEscapes('a/b/link', '../c'));
  t.notOk(symlinkEscapes('a/link', '../x'));
  t.ok(symlinkEscapes('link', '../x'));
  t.ok(symlinkEscapes('a/link', '../../x'));
  t.ok(symlinkEscapes('a/link', '/abs'));
  t.notOk(symlinkEscapes('a/link', 'b/../../c'), 'back to the root is fine');
  t.ok(symlinkEscapes('a/link', ''));
});

t.test('pax xattr records carry raw bytes, and whiteouts their device numbers', async (t) => {
  const value = Buffer.concat([Buffer.from('a=b\n'), Buffer.alloc(3), crypto.randomBytes(200)]);
  for (const pad of [0, 1, 80, 91]) { // record lengths around a change in the number of length digits
    const name = `user.${'x'.repeat(pad)}`;
    const bytes = encodeEntry({
      path: 'upper/wh', type: 'char-device', mode: 0, uid: 0, gid: 0, size: 0, mtimeNs: 0n, linkpath: '',
      devMajor: 0, devMinor: 0, xattrs: new Map([[name, value]]),
    });
    const paxSize = decodeUstar(bytes.subarray(0, BLOCK)).size;
    const h = decodeUstar(bytes.subarray(bytes.length - BLOCK));
    applyPax(h, decodePax(bytes.subarray(BLOCK, BLOCK + paxSize)));
    t.same([h.type, h.devMajor, h.devMinor], ['char-device', 0, 0]);
    t.same(h.xattrs?.get(name), value, `a ${name.length}-byte name`);
  }
  t.throws(() => applyPax(decodeUstar(encodeEntry({
    path: 'f', type: 'file', mode: 0, uid: 0, gid: 0, size: 0, mtimeNs: 0n, linkpath: '',
  })), new Map([['TETRIX.unknown', Buffer.from('1')]])), { code: 'DATA_LOSS' }, 'unknown TETRIX records are refused');
});

async function archiveBytes(dir: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(new TreeArchiveStream([{ name: 'content', dir }], { uidBase: UID_BASE }),
    new Writable({ write(c, _e, cb) { chunks.push(c); cb(); } }));
  return Buffer.concat(chunks);
}

t.test('an archive cut into pieces of any size extracts to the same tree', async (t) => {
  const base = tempDir(t, 'archive-pieces');
  const src = path.join(base, 'src');
  makeTree(src, { bigRandom: 70_000 });
  fs.writeFileSync(path.join(src, 'p'.repeat(200)), 'a pax path');
  fs.symlinkSync('l'.repeat(150), path.join(src, 'long-target'));
  for (const name of ['p'.repeat(200), 'long-target']) fs.lchownSync(path.join(src, name), UID_BASE + 1000, UID_BASE + 1000);
  const tar = await archiveBytes(src);
  // Splits land inside headers, pax records, file data and padding; 1-byte pieces hit every boundary.
  for (const size of [1, 7, 511, 512, 513, 4096, 65537]) {
    const out = path.join(base, `out-${size}`);
    fs.mkdirSync(out);
    const tree = new TreeExtraction({ content: out }, { uidBase: UID_BASE });
    try {
      for (let off = 0; off < tar.length; off += size) tree.feed(tar.subarray(off, off + size));
      tree.finish();
    } finally {
      tree.close();
    }
    t.same(snapshot(out), expectedSnapshot(src), `pieces of ${size} bytes`);
  }
});

t.test('trees deeper than PATH_MAX are archived and restored (every name is opened relative to its parent)', async (t) => {
  // Not tempDir: its cleanup goes by path, which cannot reach this deep; rm -rf walks by fd.
  const base = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-archive-deep-${process.pid}-`));
  t.teardown(() => { execFileSync('rm', ['-rf', base]); });
  const src = path.join(base, 'src');
  const out = path.join(base, 'out');
  fs.mkdirSync(src);
  fs.mkdirSync(out);
  const name = 'd'.repeat(250);
  const depth = 20; // 20 * 251 bytes: beyond PATH_MAX (4096), which no path-based call could reach
  const walkDown = (root: string, body: string) => execFileSync('python3', ['-c', `
import os
fd = os.open(${JSON.stringify(root)}, os.O_RDONLY | os.O_DIRECTORY)
for _ in range(${depth}):
    ${body}
    fd = os.open(${JSON.stringify(name)}, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
leaf = os.open('leaf', os.O_RDWR | os.O_CREAT, 0o644, dir_fd=fd)
os.write(leaf, b'deep') if os.fstat(leaf).st_size == 0 else print(os.read(leaf, 100).decode(), end='')
`]).toString();
  walkDown(src, `os.mkdir(${JSON.stringify(name)}, dir_fd=fd)`);
  const tar = await archiveBytes(src);
  const tree = new TreeExtraction({ content: out }, { uidBase: UID_BASE });
  try {
    tree.feed(tar);
    tree.finish();
  } finally {
    tree.close();
  }
  t.equal(walkDown(out, 'pass'), 'deep');
  t.equal(tree.stats.files, depth + 2, 'the root, every level and the leaf');
});

t.test('a backup walk reports progress as it goes and reaches the tree\'s size', async (t) => {
  const base = tempDir(t, 'archive-progress');
  const src = path.join(base, 'src');
  makeTree(src);
  let files = 0;
  let bytes = 0;
  await pipeline(new TreeArchiveStream([{ name: 'content', dir: src }], {
    uidBase: UID_BASE, onProgress: (f, b) => { files += f; bytes += b; },
  }), new Writable({ write(_c, _e, cb) { cb(); } }));
  t.same({ files, bytes }, measureTrees([src]), 'every entry counted once, hard-linked bytes once');
});

/** A header block for `name` with another type flag (encodeEntry writes only the types Tetrix uses). */
function rawHeader(name: string, flag: string, size: number): Buffer {
  const block = Buffer.from(encodeEntry({ path: name, type: 'file', mode: 0o644, uid: 0, gid: 0, size, mtimeNs: 0n, linkpath: '' }));
  block.write(flag, 156, 1, 'latin1');
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of block) sum += b;
  block.write(sum.toString(8).padStart(7, '0') + '\0', 148, 8, 'latin1');
  return block;
}

function withBody(header: Buffer, body: Buffer): Buffer {
  return Buffer.concat([header, body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

function fileEntry(p: string, data = Buffer.from('x')): Buffer {
  return withBody(encodeEntry({ path: p, type: 'file', mode: 0o644, uid: 0, gid: 0, size: data.length, mtimeNs: 0n, linkpath: '' }), data);
}

t.test('the extractor refuses malformed tar streams with DATA_LOSS and writes nothing outside its root', async (t) => {
  const base = tempDir(t, 'archive-malformed');
  const root = Buffer.from(encodeEntry({ path: 'content', type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtimeNs: 0n, linkpath: '' }));
  const end = Buffer.alloc(1024);
  const flipped = fileEntry('content/f');
  flipped[10] ^= 1;
  const paxOf = (body: string) => withBody(rawHeader('PaxHeaders/x', 'x', Buffer.byteLength(body)), Buffer.from(body));
  const record = (k: string, v: string) => {
    const rest = ` ${k}=${v}\n`;
    let len = rest.length + 1;
    while (String(len).length + rest.length !== len) len++;
    return `${len}${rest}`;
  };
  const cases: [string, Buffer, RegExp][] = [
    ['a header whose checksum does not match', Buffer.concat([root, flipped, end]), /checksum/],
    ['a lone zero block inside', Buffer.concat([root, Buffer.alloc(512), fileEntry('content/f'), end]), /lone zero block/],
    ['non-zero bytes after the end marker', Buffer.concat([root, end, Buffer.from('junk')]), /after the end-of-archive/],
    ['a pax global header', Buffer.concat([root, withBody(rawHeader('g', 'g', 12), Buffer.from('12 path=x/y\n')), end]), /global/],
    ['a malformed pax record', Buffer.concat([root, paxOf('99 path=content/x\n'), fileEntry('content/f'), end]), /malformed pax/],
    ['an unknown TETRIX record', Buffer.concat([root, paxOf(record('TETRIX.evil', 'yes')), fileEntry('content/f'), end]), /unknown pax record/],
    ['a GNU long name with ".."', Buffer.concat([root, withBody(rawHeader('././@LongLink', 'L', 20), Buffer.from('content/../../escape')), fileEntry('content/f'), end]), /"\.\." in path/],
    ['an extended header over 1 MiB', Buffer.concat([root, rawHeader('PaxHeaders/x', 'x', (1 << 20) + 1), end]), /too large/],
  ];
  for (const [name, tar, why] of cases) {
    const out = path.join(base, name.replace(/[^a-z]/gi, '-'));
    fs.mkdirSync(out);
    const tree = new TreeExtraction({ content: out }, { uidBase: UID_BASE });
    t.throws(() => {
      try {
        tree.feed(tar);
        tree.finish();
      } finally {
        tree.close();
      }
    }, { code: 'DATA_LOSS', message: why }, name);
  }
  t.same(fs.readdirSync(base).sort(), cases.map(([n]) => n.replace(/[^a-z]/gi, '-')).sort(), 'nothing next to the roots');
  t.notOk(fs.existsSync(path.join(path.dirname(base), 'escape')));

  // A GNU long name that stays inside is honoured.
  const long = `content/${'d'.repeat(200)}/${'l'.repeat(200)}`;
  const out = path.join(base, 'long-ok');
  fs.mkdirSync(out);
  const tree = new TreeExtraction({ content: out }, { uidBase: UID_BASE });
  tree.feed(Buffer.concat([root, withBody(rawHeader('././@LongLink', 'L', long.length + 1), Buffer.from(long + '\0')), fileEntry('content/short', Buffer.from('data')), end]));
  tree.finish();
  tree.close();
  t.equal(fs.readFileSync(path.join(out, 'd'.repeat(200), 'l'.repeat(200)), 'utf8'), 'data');
});

t.test('a walk paused before each file\'s data names the file as its header does, at the data\'s first byte', async (t) => {
  const dir = tempDir(t, 'pause');
  makeTree(dir);
  const deep = path.join(dir, 'd'.repeat(90));
  fs.mkdirSync(deep);
  fs.writeFileSync(path.join(deep, 'e'.repeat(90)), 'a name only a pax path record holds');
  fs.lchownSync(deep, UID_BASE, UID_BASE);
  fs.lchownSync(path.join(deep, 'e'.repeat(90)), UID_BASE, UID_BASE);
  const walk = new TreeWalk([{ name: 'content', dir }], { uidBase: UID_BASE, pauseFiles: true });
  const parts: Buffer[] = [];
  const paused: { path: string; size: number; at: number }[] = [];
  let total = 0;
  const buf = Buffer.allocUnsafe(3000);   // small: data and headers straddle fills
  while (!walk.done) {
    const n = walk.fill(buf);
    parts.push(Buffer.from(buf.subarray(0, n)));
    total += n;
    const f = walk.pendingFile;
    if (f) paused.push({ path: f.path, size: f.size, at: total });
  }
  walk.close();
  // The oracle's reading of the same bytes: every regular file with data, and where its data starts.
  const tar = Buffer.concat(parts);
  const files: typeof paused = [];
  let pax = new Map<string, Buffer>();
  for (let off = 0; off + BLOCK <= tar.length && !isZeroBlock(tar.subarray(off, off + BLOCK));) {
    const h = decodeUstar(tar.subarray(off, off + BLOCK));
    off += BLOCK;
    if (h.type === 'pax') pax = decodePax(tar.subarray(off, off + h.size));
    else {
      applyPax(h, pax);
      pax = new Map();
      if (h.type === 'file' && h.size > 0) files.push({ path: h.path, size: h.size, at: off });
    }
    off += h.size + padding(h.size);
  }
  t.ok(files.some((f) => f.path.length > 100) && files.length > 50, `${files.length} files, one under a long name`);
  t.same(paused, files);
});
