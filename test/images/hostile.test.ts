// A hostile registry, served by the test over TLS: blobs that do not match their digest, manifests that lie
// about sizes, layers with ../ and absolute entries, a symlink then a write through it, a device node.
// Each pull fails with a clear error (or, for the device, skips it), and afterwards the host file system
// and the layer store hold nothing of it.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import * as zstd from 'zstd-napi';
import { OciImageStore } from '../../src/images/store';
import { makeTestCa, sha256 } from './fixture';

interface Entry {
  name: string;
  type?: '0' | '1' | '2' | '3' | '5';
  body?: string;
  link?: string;
  mode?: number;
  devmajor?: number;
}

/** A ustar archive, written by hand so it can say what no honest tool would. */
function tarOf(entries: Entry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '');
    const h = Buffer.alloc(512);
    h.write(e.name, 0, 100);
    h.write(((e.mode ?? 0o644) & 0o7777).toString(8).padStart(7, '0'), 100);
    h.write('0000000', 108);
    h.write('0000000', 116);
    h.write(body.length.toString(8).padStart(11, '0'), 124);
    h.write('00000000000', 136);
    h.write(e.type ?? '0', 156);
    h.write(e.link ?? '', 157, 100);
    h.write('ustar\x0000', 257);
    h.write((e.devmajor ?? 0).toString(8).padStart(7, '0'), 329);
    h.write('0000000', 337);
    h.fill(' ', 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

interface Served {
  manifest: Buffer;
  blobs: Map<string, { bytes: Buffer; lengthHeader?: number | 'none' }>;
}

/** One image: the layer as given, its config naming the layer's true diff id unless told otherwise. */
function image(layerTar: Buffer, opts: { serveBlob?: Buffer; manifestSize?: number; lengthHeader?: number | 'none'; diffId?: string; zstd?: boolean } = {}): Served {
  const layer = opts.zstd ? Buffer.from(zstd.compress(layerTar)) : zlib.gzipSync(layerTar);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [opts.diffId ?? sha256(layerTar)] } }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
    layers: [{ mediaType: `application/vnd.oci.image.layer.v1.tar+${opts.zstd ? 'zstd' : 'gzip'}`, digest: sha256(layer), size: opts.manifestSize ?? layer.length }],
  }));
  return {
    manifest,
    blobs: new Map([
      [sha256(config), { bytes: config }],
      [sha256(layer), { bytes: opts.serveBlob ?? layer, ...(opts.lengthHeader !== undefined ? { lengthHeader: opts.lengthHeader } : {}) }],
    ]),
  };
}

t.test('a hostile registry cannot get anything into the store or onto the host', async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-hostile-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const ca = makeTestCa(path.join(work, 'ca'));
  const outside = path.join(work, 'outside');
  fs.mkdirSync(outside);
  const honest = tarOf([{ name: 'bin/', type: '5', mode: 0o755 }, { name: 'bin/true', body: 'x', mode: 0o755 }]);
  const sameLength = Buffer.from(zlib.gzipSync(honest));
  sameLength[sameLength.length - 9] ^= 0xff; // same size, other bytes
  const repos: Record<string, Served> = {
    'wrong-digest': image(honest, { serveBlob: sameLength }),
    'longer-than-said': image(honest, { manifestSize: 20, lengthHeader: 'none' }),
    'length-disagrees': image(honest, { manifestSize: 20 }),
    'wrong-diff-id': image(honest, { diffId: sha256('something else') }),
    'dot-dot': image(tarOf([{ name: `../escaped-${crypto.randomBytes(3).toString('hex')}`, body: 'pwned' }])),
    absolute: image(tarOf([{ name: `${outside}/absolute`, body: 'pwned' }])),
    'symlink-then-write': image(tarOf([{ name: 'evil', type: '2', link: outside }, { name: 'evil/pwned', body: 'pwned' }])),
    'symlink-to-dir-then-dir': image(tarOf([{ name: 'evil', type: '2', link: '/' }, { name: 'evil/tmp/pwned/', type: '5' }])),
    'hardlink-dot-dot': image(tarOf([{ name: 'h', type: '1', link: '../../../etc/hostname' }])),
    'hardlink-absolute': image(tarOf([{ name: 'h', type: '1', link: '/etc/hostname' }])),
    'hardlink-through-symlink': image(tarOf([{ name: 'l', type: '2', link: '/etc' }, { name: 'h', type: '1', link: 'l/hostname' }])),
    zstd: image(honest, { zstd: true }),
    'zstd-wrong-diff-id': image(honest, { zstd: true, diffId: sha256('other') }),
    device: image(tarOf([{ name: 'dev/', type: '5' }, { name: 'dev/mem-ish', type: '3', devmajor: 1 }, { name: 'ok', body: 'fine' }])),
  };
  // A multi-platform index (Docker's manifest list type) whose linux/amd64 entry is the honest image.
  const amd64 = image(honest);
  const arm64 = image(tarOf([{ name: 'wrong-platform', body: 'arm' }]));
  const entry = (m: Buffer, architecture: string) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha256(m), size: m.length, platform: { os: 'linux', architecture } });
  const indexOf = (entries: object[]): Served => ({
    manifest: Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.list.v2+json', manifests: entries })),
    blobs: new Map([...amd64.blobs, ...arm64.blobs]),
  });
  repos['multi-arch'] = indexOf([entry(arm64.manifest, 'arm64'), entry(amd64.manifest, 'amd64')]);
  repos['arm-only'] = indexOf([entry(arm64.manifest, 'arm64')]);
  const byDigest = new Map([[sha256(amd64.manifest), amd64.manifest], [sha256(arm64.manifest), arm64.manifest]]);
  const gets: string[] = [];
  const server = https.createServer({ cert: fs.readFileSync(ca.certFile), key: fs.readFileSync(ca.keyFile) }, (req, res) => {
    gets.push(req.url ?? '');
    const m = /^\/v2\/([a-z-]+)\/(manifests|blobs)\/(.+)$/.exec(req.url ?? '');
    const repo = m && repos[m[1]];
    if (!m || !repo) return void res.writeHead(404).end();
    if (m[2] === 'manifests') {
      const body = byDigest.get(m[3]) ?? repo.manifest;
      const type = body === repo.manifest && repo.manifest.includes('manifests') ? 'application/vnd.docker.distribution.manifest.list.v2+json' : 'application/vnd.oci.image.manifest.v1+json';
      return void res.writeHead(200, { 'content-type': type, 'content-length': body.length }).end(body);
    }
    const blob = repo.blobs.get(m[3]);
    if (!blob) return void res.writeHead(404).end();
    const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream' };
    if (blob.lengthHeader !== 'none') headers['content-length'] = blob.lengthHeader ?? blob.bytes.length;
    res.writeHead(200, headers).end(blob.bytes);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const host = `127.0.0.1:${(server.address() as { port: number }).port}`;
  const store = new OciImageStore({ stateDir: path.join(work, 'state'), registry: { caFile: ca.caFile } });
  await store.open();
  const nothingKept = (t: Tap.Test): void => {
    t.same(fs.readdirSync(path.join(store.root, 'layers')), [], 'no layer in the store');
    t.same(fs.readdirSync(path.join(store.root, 'tmp')), [], 'no temp left');
    t.same(fs.readdirSync(outside), [], 'nothing written outside');
    t.notOk(fs.readdirSync(path.join(store.root)).some((n) => n.startsWith('escaped-')), 'no ../ escape');
  };

  const cases: Array<[string, RegExp]> = [
    ['wrong-digest', /^image: layer sha256:[a-f0-9]{64} has digest sha256:/],
    ['longer-than-said', /^image: layer sha256:[a-f0-9]{64} is longer than the 20 bytes the manifest says/],
    ['length-disagrees', /^image: blob sha256:[a-f0-9]{64} is \d+ bytes at the registry, the manifest says 20/],
    ['wrong-diff-id', /^image: uncompressed layer sha256:[a-f0-9]{64} has digest/],
    ['dot-dot', /^image layer: archive entry "\.\.\/escaped-[a-f0-9]+" refused: "\.\." in path/],
    ['absolute', /refused: absolute path/],
    ['symlink-then-write', /^image layer: archive entry "evil\/pwned" refused: path goes through "evil", which is not a directory/],
    ['symlink-to-dir-then-dir', /refused: path goes through "evil"/],
    ['hardlink-dot-dot', /archive entry "h" refused: hard link source outside its root|"\.\." in path/],
    ['hardlink-absolute', /refused: (hard link source outside its root|absolute path)/],
    ['zstd-wrong-diff-id', /^image: uncompressed layer sha256:[a-f0-9]{64} has digest/],
    ['hardlink-through-symlink', /archive entry "h" refused: path goes through "l", which is not a directory/],
  ];
  for (const [repo, message] of cases) {
    await t.test(repo, async (t) => {
      await t.rejects(store.pull(`${host}/${repo}:v1`), { code: 'DATA_LOSS', message });
      nothingKept(t);
    });
  }

  await t.test('an index resolves to linux/amd64, and one without it is refused', async (t) => {
    const img = await store.pull(`${host}/multi-arch:v1`);
    t.equal(img.digest, sha256(repos['multi-arch'].manifest), 'the digest is the index\'s, as the registry names it');
    t.equal(img.manifestDigest, sha256(amd64.manifest), 'the image is the amd64 one');
    const [top] = (await store.resolve(`${host}/multi-arch:v1`)).lowerDirs.slice(1);
    t.ok(fs.existsSync(path.join(top, 'bin/true')) && !fs.existsSync(path.join(top, 'wrong-platform')));
    await store.remove(img.digest);
    await t.rejects(store.pull(`${host}/arm-only:v1`), { code: 'NOT_FOUND', message: /no linux\/amd64 manifest/ });
  });

  await t.test('a zstd layer (Node 20 zlib has none: zstd-napi)', async (t) => {
    const img = await store.pull(`${host}/zstd:v1`);
    const [top] = (await store.resolve(`${host}/zstd:v1`)).lowerDirs.slice(1);
    t.equal(fs.readFileSync(path.join(top, 'bin/true'), 'utf8'), 'x');
    await store.remove(img.digest);
  });

  await t.test('a device node in a layer is never created', async (t) => {
    const img = await store.pull(`${host}/device:v1`);
    const [top] = (await store.resolve(`${host}/device:v1`)).lowerDirs.slice(1);
    t.equal(fs.readFileSync(path.join(top, 'ok'), 'utf8'), 'fine');
    t.notOk(fs.existsSync(path.join(top, 'dev', 'mem-ish')), 'no device');
    await store.remove(img.digest);
  });
});
