// Pulling from a real registry (Debian's docker-registry over TLS from a test CA) into the layer store:
// layers unpacked once, in overlay form, shared between images, one download per layer however many ask.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OciImageStore } from '../../src/images/store';
import { fsops } from '../../src/native';
import { buildImages, layerDigests, makeTestCa, startRegistry } from './fixture';

t.test('images from a TLS registry', async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-images-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const ca = makeTestCa(path.join(work, 'ca'));
  const registry = await startRegistry(t, ca);
  const built = buildImages(work, registry, ca, 'tetrix-test');
  const stateDir = path.join(work, 'state');
  const store = new OciImageStore({ stateDir, registry: { caFile: ca.caFile } });
  await store.open();

  await t.test('without the test CA the registry is not trusted', async (t) => {
    const untrusting = new OciImageStore({ stateDir: path.join(work, 'state-untrusting') });
    await untrusting.open();
    await t.rejects(untrusting.pull(built.refs.base), { code: 'UNAVAILABLE', message: /certificate/ });
  });

  await t.test('plain HTTP only to a host listed as insecure', async (t) => {
    const plain = await startRegistry(t, ca, { plain: true, dataDir: registry.dataDir });
    const ref = built.refs.base.replace(registry.host, plain.host);
    const strict = new OciImageStore({ stateDir: path.join(work, 'state-strict'), registry: { caFile: ca.caFile } });
    await strict.open();
    await t.rejects(strict.pull(ref), { code: 'UNAVAILABLE' }, 'not listed: TLS is spoken, and fails');
    t.equal(plain.log.filter((l) => l.includes('"GET /v2/')).length, 0, 'nothing was asked in clear text');
    const insecure = new OciImageStore({ stateDir: path.join(work, 'state-insecure'), registry: { insecureHosts: [plain.host] } });
    await insecure.open();
    t.match((await insecure.pull(ref)).digest, /^sha256:/, 'listed: pulled over plain HTTP');
  });

  await t.test('mirrors are tried first, and a mirror that is down hands over', async (t) => {
    const viaMirror = new OciImageStore({ stateDir: path.join(work, 'state-mirror'), registry: { caFile: ca.caFile, mirrors: new Map([['127.0.0.2:1', [registry.host]]]) } });
    await viaMirror.open();
    const img = await viaMirror.pull(built.refs.base.replace(registry.host, '127.0.0.2:1'));
    t.match(img.references, ['127.0.0.2:1/tetrix-test/base:v1'], 'pulled under its own name, from the mirror');
    const mirrorDown = new OciImageStore({ stateDir: path.join(work, 'state-mirror-down'), registry: { caFile: ca.caFile, mirrors: new Map([[registry.host, ['127.0.0.1:1']]]) } });
    await mirrorDown.open();
    t.equal((await mirrorDown.pull(built.refs.base)).digest, img.digest, 'from the registry itself');
  });

  await t.test('short names need a default registry', async (t) => {
    t.throws(() => store.parse('busybox:1'), { code: 'INVALID_ARGUMENT', message: /^image: .*--default-registry/ });
    const withDefault = new OciImageStore({ stateDir, defaultRegistry: registry.host });
    t.equal(withDefault.parse('tetrix-test/base:v1').registry, registry.host);
  });

  await t.test('four concurrent pulls download each layer once, and layers unpack in overlay form', async (t) => {
    const layers = layerDigests(built.layout, 'app');
    const before = layers.map((d) => registry.blobGets(d));
    const results = await Promise.all([1, 2, 3, 4].map(() => store.pull(built.refs.app)));
    t.ok(results.every((r) => r.digest === results[0].digest), 'one image');
    t.equal(layers.length, 3);
    layers.forEach((d, i) => t.equal(registry.blobGets(d) - before[i], 1, `layer ${d.slice(0, 19)} fetched once`));
    const resolved = await store.resolve(built.refs.app);
    t.equal(resolved.digest, results[0].digest);
    t.equal(resolved.lowerDirs.length, 4, 'base + three layers');
    const [, top, middle, bottom] = resolved.lowerDirs;
    // The opaque dir, in overlayfs's form.
    t.equal(fs.readFileSync(path.join(top, 'opq/fresh'), 'utf8'), 'only this\n');
    t.equal(xattr(path.join(top, 'opq'), 'trusted.overlay.opaque'), 'y');
    t.notOk(fs.existsSync(path.join(top, 'opq/.wh..wh..opq')), 'no .wh. marker left');
    // The whiteout: a 0/0 character device named as the deleted file.
    const wh = fs.lstatSync(path.join(middle, 'etc/gone'));
    t.ok(wh.isCharacterDevice() && wh.rdev === 0, 'etc/gone is a whiteout');
    t.notOk(fs.existsSync(path.join(middle, 'etc/.wh.gone')));
    // The base layer as built.
    t.equal(fs.readlinkSync(path.join(bottom, 'srv/to-root')), '/', 'a symlink to / is kept as it is');
    t.equal(fs.statSync(path.join(bottom, 'srv/original')).ino, fs.statSync(path.join(bottom, 'srv/hardlink')).ino, 'hard link');
    t.equal(fs.statSync(path.join(bottom, 'bin/suid')).mode & 0o7777, 0o4755, 'setuid kept inside the range');
    const outsider = fs.statSync(path.join(bottom, 'bin/suid-outsider'));
    t.equal(outsider.uid, 65534, 'an owner above the range becomes nobody');
    t.equal(outsider.mode & 0o7000, 0, 'and loses its setuid bit');
    t.same(fs.readdirSync(path.join(store.root, 'tmp')), [], 'nothing left in tmp');
  });

  await t.test('a layer shared by two images is stored and downloaded once', async (t) => {
    const before = fs.readdirSync(path.join(store.root, 'layers')).length;
    const sharedGets = registry.blobGets(layerDigests(built.layout, 'other')[0]);
    await store.pull(built.refs.other);
    const after = fs.readdirSync(path.join(store.root, 'layers')).length;
    t.equal(after - before, 1, 'only the other image\'s own layer is new');
    const shared = layerDigests(built.layout, 'other')[0];
    t.equal(shared, layerDigests(built.layout, 'app')[0]);
    t.equal(registry.blobGets(shared), sharedGets, 'the shared layer was not downloaded again');
  });

  await t.test('the config and the digest are recorded', async (t) => {
    const app = (await store.list()).find((i) => i.references.includes(built.refs.app))!;
    t.match(app.digest, /^sha256:[a-f0-9]{64}$/);
    const index = JSON.parse(fs.readFileSync(path.join(built.layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations: Record<string, string> }[] };
    t.equal(app.digest, index.manifests.find((m) => m.annotations['org.opencontainers.image.ref.name'] === 'app')!.digest, 'the manifest digest, as the registry names it');
    t.same(app.config.entrypoint, ['/bin/sh']);
    t.equal(app.config.workingDir, '/srv');
    t.ok(app.config.env.includes('IMAGE_VAR=from-image'));
  });

  await t.test('remove and GC keep what is in use and shared', async (t) => {
    const app = (await store.list()).find((i) => i.references.includes(built.refs.app))!;
    const inUse = new OciImageStore({ stateDir, registry: { caFile: ca.caFile }, inUse: () => new Map([[app.digest, 1]]) });
    await t.rejects(inUse.remove(built.refs.app), { code: 'FAILED_PRECONDITION', message: /used by 1 workspace/ });
    const layersBefore = fs.readdirSync(path.join(store.root, 'layers')).length;
    await store.remove(built.refs.other);
    t.equal(fs.readdirSync(path.join(store.root, 'layers')).length, layersBefore - 1, 'only the unshared layer went');
    await t.rejects(store.remove(built.refs.other), { code: 'NOT_FOUND' });
    t.ok(await store.storeBytes() > 1_000_000, 'the store size counts busybox');
  });

  await t.test('GC removes unused images by age and by store size, never one in use', async (t) => {
    await store.pull(built.refs.base);
    const age = (ref: string, ms: number): void => {
      const img = fs.readdirSync(path.join(store.root, 'images')).map((n) => path.join(store.root, 'images', n))
        .find((f) => (JSON.parse(fs.readFileSync(f, 'utf8')) as { references: string[] }).references.includes(ref))!;
      const rec = JSON.parse(fs.readFileSync(img, 'utf8')) as { lastUsedMs: number };
      rec.lastUsedMs = Date.now() - ms;
      fs.writeFileSync(img, JSON.stringify(rec));
    };
    const digestOf = async (ref: string): Promise<string> => (await store.list()).find((i) => i.references.includes(ref))!.digest;
    const appDigest = await digestOf(built.refs.app);
    const baseDigest = await digestOf(built.refs.base);
    age(built.refs.app, 3_600_000);
    age(built.refs.base, 3_600_000);
    const guarded = new OciImageStore({ stateDir, registry: { caFile: ca.caFile }, inUse: () => new Map([[appDigest, 1]]) });
    t.same(await guarded.collect({ maxAgeMs: 60_000, maxBytes: 0 }), [baseDigest], 'the old unused image goes; the one in use stays');
    t.same((await store.list()).map((i) => i.digest), [appDigest]);
    t.same(await store.collect({ maxAgeMs: 0, maxBytes: 1_000_000_000 }), [], 'under the size limit nothing goes');
    t.same(await store.collect({ maxAgeMs: 0, maxBytes: 1 }), [appDigest], 'over it, the least recently used goes');
    t.same(fs.readdirSync(path.join(store.root, 'layers')), [], 'and its layers with it');
    t.equal(await store.storeBytes(), 0);
  });
});

function xattr(file: string, name: string): string | undefined {
  return fsops.getXattr(file, name)?.toString();
}
