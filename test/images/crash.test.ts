// A pull interrupted by kill -9 of the daemon leaves no half layer in the store; the next daemon clears the
// leftovers and the next pull completes.
import t from 'tap';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { refusal, startDaemon } from '../helpers/daemon';
import { makeTestCa, sha256 } from './fixture';

t.test('kill -9 in the middle of a pull', async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-images-crash-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const ca = makeTestCa(path.join(work, 'ca'));
  // One layer of incompressible data, so half of it is something on disk.
  const tree = path.join(work, 'tree');
  fs.mkdirSync(path.join(tree, 'data'), { recursive: true });
  for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(tree, 'data', `f${i}`), crypto.randomBytes(512 << 10));
  const { execFileSync } = await import('node:child_process');
  const tar = execFileSync('tar', ['--numeric-owner', '--owner=0', '--group=0', '-C', tree, '-cf', '-', 'data'], { maxBuffer: 64 << 20 });
  const layer = zlib.gzipSync(tar, { level: 1 });
  const config = Buffer.from(JSON.stringify({ os: 'linux', architecture: 'amd64', config: { Cmd: ['/bin/true'] }, rootfs: { type: 'layers', diff_ids: [sha256(tar)] } }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
    config: { mediaType: 'application/vnd.docker.container.image.v1+json', digest: sha256(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: sha256(layer), size: layer.length }],
  }));
  let holdFirst = true;
  let halfSent!: () => void;
  const sentHalf = new Promise<void>((r) => (halfSent = r));
  const server = https.createServer({ cert: fs.readFileSync(ca.certFile), key: fs.readFileSync(ca.keyFile) }, (req, res) => {
    const url = req.url ?? '';
    if (url.endsWith('/manifests/v1')) return void res.writeHead(200, { 'content-type': 'application/vnd.docker.distribution.manifest.v2+json' }).end(manifest);
    if (url.endsWith(`/blobs/${sha256(config)}`)) return void res.writeHead(200, { 'content-length': config.length }).end(config);
    if (!url.endsWith(`/blobs/${sha256(layer)}`)) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-length': layer.length });
    if (!holdFirst) return void res.end(layer);
    holdFirst = false;
    res.write(layer.subarray(0, layer.length >> 1), () => halfSent()); // and never the rest
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    server.closeAllConnections();
    return new Promise<void>((r) => server.close(() => r()));
  });
  const ref = `127.0.0.1:${(server.address() as { port: number }).port}/slow/image:v1`;
  const d = await startDaemon(t, ['--registry-ca-file', ca.caFile]);
  t.teardown(() => d.terminate());
  const oci = path.join(d.stateDir, 'oci');

  // (This daemon has no --default-registry.)
  const short = await refusal(d.start({ id: 'short-name', ownerId: 'alice', image: 'node:20', command: [] }));
  t.equal(short.code, grpc.status.INVALID_ARGUMENT, 'a short name without a default registry');
  t.match(short.details, /^image: "node:20" names no registry and this node has no --default-registry/);

  const stream = d.clients.images.PullImage({ image: ref });
  stream.on('error', () => undefined);
  await sentHalf;
  await new Promise((r) => setTimeout(r, 300)); // let the daemon write what it got
  const temps = fs.readdirSync(path.join(oci, 'tmp'));
  t.equal(temps.length, 1, 'a layer was being unpacked in tmp/');
  await d.kill9();
  t.same(fs.readdirSync(path.join(oci, 'layers')), [], 'no layer, half or whole, in the store');

  await d.restart();
  t.same(fs.readdirSync(path.join(oci, 'tmp')), [], 'the restarted daemon cleared the half layer');
  const done = await new Promise<string>((resolve, reject) => {
    const again = d.clients.images.PullImage({ image: ref });
    let digest = '';
    again.on('data', (ev: { image?: { digest: string } }) => (digest = ev.image?.digest ?? digest));
    again.on('error', reject);
    again.on('end', () => resolve(digest));
  });
  t.equal(done, sha256(manifest), 'the next pull completes');
  const layers = fs.readdirSync(path.join(oci, 'layers'));
  t.equal(layers.length, 1);
  t.equal(fs.readdirSync(path.join(oci, 'layers', layers[0], 'fs', 'data')).length, 8, 'all of the layer');
});
