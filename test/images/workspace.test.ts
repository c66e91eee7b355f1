// Workspaces started from OCI images through the real daemon: pulled from a TLS registry on first use (one
// download per layer for four concurrent cold starts), the image's config applied under the request's,
// the mount points Tetrix provides, the image's files as the layers say, and ImageService / tetrixctl.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { unaryCall } from '../../src/cli/client';
import type { LogChunk__Output } from '../../src/generated/tetrix/agent/v1/LogChunk';
import type { ListImagesResponse__Output } from '../../src/generated/tetrix/agent/v1/ListImagesResponse';
import { ctlMain, mountsUnder, refusal, startDaemon, type Daemon } from '../helpers/daemon';
import { prebuildRequest } from '../prebuild/daemon-fixtures';
import { buildImages, freePort, layerDigests, makeTestCa, startRegistry } from './fixture';

function stdoutOf(d: Daemon, id: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: LogChunk__Output[] = [];
    const stream = d.clients.workspaces.StreamLogs({ id, follow: false });
    stream.on('data', (c: LogChunk__Output) => chunks.push(c));
    stream.on('error', reject);
    stream.on('end', () => resolve(Buffer.concat(chunks.filter((c) => c.stream === 'stdout').map((c) => c.data)).toString('utf8')));
  });
}

const NODE_ID = 'images-test-node';

/** User tokens as the control plane signs them (Ed25519), for the access rules. */
function tokenSigner(dir: string): { keyFile: string; as(sub: string): grpc.Metadata } {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
  const keyFile = path.join(dir, 'control-plane.pub');
  fs.writeFileSync(keyFile, publicKey.export({ type: 'spki', format: 'pem' }));
  const b64 = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  return {
    keyFile,
    as: (sub) => {
      const now = Math.floor(Date.now() / 1000);
      const signing = `${b64({ alg: 'EdDSA', typ: 'JWT' })}.${b64({ sub, teams: [], aud: NODE_ID, iat: now, exp: now + 300 })}`;
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${signing}.${crypto.sign(null, Buffer.from(signing), privateKey).toString('base64url')}`);
      return md;
    },
  };
}

const stopped = (w: { state: string }): boolean => w.state === 'WORKSPACE_STATE_STOPPED' || w.state === 'WORKSPACE_STATE_FAILED';

t.test('workspaces from OCI images', async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-images-ws-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const ca = makeTestCa(path.join(work, 'ca'));
  const registry = await startRegistry(t, ca);
  const built = buildImages(work, registry, ca, 'tetrix-ws');
  const metricsPort = await freePort();
  const signer = tokenSigner(work);
  const d = await startDaemon(t, ['--registry-ca-file', ca.caFile, '--default-registry', registry.host, '--metrics-listen', `127.0.0.1:${metricsPort}`,
    '--control-plane-key-file', signer.keyFile, '--node-id', NODE_ID, '--user-registries', registry.host]);
  const storeBytes = async (): Promise<number> => {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    return Number(/^tetrix_image_store_bytes (\d+)$/m.exec(text)?.[1] ?? NaN);
  };
  t.teardown(() => d.terminate());

  await t.test('four concurrent cold starts download each layer once and run the image\'s Entrypoint + Cmd', async (t) => {
    t.equal(await storeBytes(), 0, 'the store metric starts at 0');
    const ids = ['cold-1', 'cold-2', 'cold-3', 'cold-4'];
    const started = await Promise.all(ids.map((id) => d.start({ id, ownerId: 'alice', image: built.refs.app, command: [], env: { BOTH: 'request' } })));
    for (const w of started) t.not(w.state, 'WORKSPACE_STATE_FAILED', `${w.id} started: ${w.message}`);
    for (const digest of layerDigests(built.layout, 'app')) t.equal(registry.blobGets(digest), 1, `layer ${digest.slice(0, 19)} downloaded once`);
    for (const id of ids) {
      const w = await d.waitFor(id, stopped, 60_000);
      t.equal(w.exitCode, 0, `${id} exited 0 (${w.message})`);
      t.equal(await stdoutOf(d, id), 'cmd ran in /srv as 0 with from-image request\n', 'WorkingDir, Env (request wins per key), Entrypoint + Cmd');
    }
    const index = JSON.parse(fs.readFileSync(path.join(built.layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations: Record<string, string> }[] };
    const manifestDigest = index.manifests.find((m) => m.annotations['org.opencontainers.image.ref.name'] === 'app')!.digest;
    t.equal((await d.get('cold-1')).imageDigest, manifestDigest, 'the record carries the manifest digest');
    t.ok((await storeBytes()) > fs.statSync('/bin/busybox').size, 'tetrix_image_store_bytes counts the unpacked layers');
  });

  await t.test('the rootfs is the image\'s layers, with Tetrix\'s mount points, idmapped into the range', async (t) => {
    const script = [
      'for d in /proc/self /dev/null /sys/kernel /tmp /workspace; do test -e $d || echo "missing $d"; done',
      'test -e /etc/gone && echo "whiteout failed"',
      'ls /opq',
      'cat /srv/hardlink',
      'readlink /srv/to-root',
      'stat -c "%a %u" /bin/suid',
      'stat -c "%a %u" /bin/suid-outsider',
      'stat -c "%a %u:%g" /home/app; test -e /home/app/cache && echo "cache not whited out"',
      'echo hello > /etc/written && cat /etc/written',
      'cd /tmp && pwd',
    ].join('; ');
    await d.start({ id: 'inspect', ownerId: 'alice', image: built.refs.app, command: ['/bin/sh', '-c', script] });
    const w = await d.waitFor('inspect', stopped, 60_000);
    t.equal(w.exitCode, 0, w.message);
    t.equal(await stdoutOf(d, 'inspect'), ['fresh', 'hard linked', '/', '4755 0', '755 65534', '700 1000:1000', 'hello', '/tmp', ''].join('\n'));
    const layersDir = path.join(d.stateDir, 'oci', 'layers');
    for (const layer of fs.readdirSync(layersDir)) t.notOk(fs.existsSync(path.join(layersDir, layer, 'fs', 'etc', 'written')), 'a write lands in the upper, never in a layer');
  });

  await t.test('the image\'s User applies, the request\'s user wins, and ids stay in the range', async (t) => {
    await d.start({ id: 'as-app', ownerId: 'alice', image: built.refs.appuser, command: ['/bin/sh', '-c', 'echo $(id -u):$(id -g) $HOME; id -G; stat -c %u .; echo x > /srv/mine && echo wrote'] });
    let w = await d.waitFor('as-app', stopped, 60_000);
    t.equal(await stdoutOf(d, 'as-app'), '1000:1000 /srv\n1000 2000\n0\n', 'User app from /etc/passwd, its /etc/group groups, HOME from its entry, and no root power over root-owned /srv');
    t.not(w.exitCode, 0, 'the write to root-owned /srv was refused');
    await d.start({ id: 'as-num', ownerId: 'alice', image: built.refs.appuser, user: '1234:5678', command: ['/bin/sh', '-c', 'echo $(id -u):$(id -g)'] });
    w = await d.waitFor('as-num', stopped, 60_000);
    t.equal(await stdoutOf(d, 'as-num'), '1234:5678\n', 'the request overrides the image');
    const unknown = await refusal(d.start({ id: 'as-unknown', ownerId: 'alice', image: built.refs.appuser, user: 'nosuch', command: ['/bin/true'] }));
    t.equal(unknown.code, grpc.status.INVALID_ARGUMENT);
    t.match(unknown.details, /user: "nosuch" is not in the image's \/etc\/passwd/);
    const outside = await refusal(d.start({ id: 'as-outside', ownerId: 'alice', image: built.refs.appuser, user: '70000', command: ['/bin/true'] }));
    t.equal(outside.code, grpc.status.INVALID_ARGUMENT);
    t.match(outside.details, /outside the workspace's range/);
    for (const id of ['as-app', 'as-num', 'as-unknown', 'as-outside']) await d.teardown(id);
  });

  await t.test('a prebuild from an image: its tasks get the image\'s Env and User, and provenance names the digest', async (t) => {
    const req = prebuildRequest('pb-image', [{ name: 'build', script: 'echo "$IMAGE_VAR as $(id -u)" > /workspace/built' }]);
    await d.start({ ...req, image: built.refs.appuser });
    const done = await d.waitFor('pb-image', (w) => w.state === 'WORKSPACE_STATE_SUCCEEDED' || w.state === 'WORKSPACE_STATE_FAILED', 60_000);
    t.equal(done.state, 'WORKSPACE_STATE_SUCCEEDED', done.message);
    const backups = path.join(d.stateDir, 'backups');
    const verified = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, '--output', 'json', 'verify', done.snapshotId, '--backup-dir', backups], { encoding: 'utf8' });
    t.equal(verified.status, 0, verified.stderr);
    const statement = JSON.parse(verified.stdout) as { predicate: { buildDefinition: { resolvedDependencies: Array<{ uri: string; digest: { sha256: string } }> } } };
    t.same(statement.predicate.buildDefinition.resolvedDependencies[0], { uri: `oci://${built.refs.appuser}`, digest: { sha256: done.imageDigest.slice(7) } }, 'the image by its registry digest');
    await d.start({ id: 'pb-check', ownerId: 'alice', image: 'builtin:busybox', restoreFrom: done.snapshotId, command: ['/bin/cat', '/workspace/built'] });
    await d.waitFor('pb-check', stopped, 60_000);
    t.equal(await stdoutOf(d, 'pb-check'), 'from-image as 1000\n', 'the task ran with the image\'s Env as its User');
    for (const id of ['pb-image', 'pb-check']) await d.teardown(id);
  });

  await t.test('a short name resolves through --default-registry', async (t) => {
    const w = await d.start({ id: 'short', ownerId: 'alice', image: 'tetrix-ws/base:v1', command: ['/bin/sh', '-c', 'echo short'] });
    await d.waitFor(w.id, stopped, 60_000);
    t.equal(await stdoutOf(d, 'short'), 'short\n');
  });

  await t.test('bad references are refused naming the field, and leave nothing behind', async (t) => {
    const r = await refusal(d.start({ id: 'bad-ref', ownerId: 'alice', image: `${registry.host}/Upper/Case:v1`, command: ['/bin/true'] }));
    t.equal(r.code, grpc.status.INVALID_ARGUMENT);
    t.match(r.details, /^image: /);
    const missing = await refusal(d.start({ id: 'no-such', ownerId: 'alice', image: `${registry.host}/tetrix-ws/nothing:v1`, command: ['/bin/true'] }));
    t.equal(missing.code, grpc.status.NOT_FOUND);
    t.notOk((await d.list()).some((w) => w.id === 'bad-ref' || w.id === 'no-such'), 'no record');
    const noCmd = await refusal(d.start({ id: 'no-cmd', ownerId: 'alice', image: built.refs.base, command: [] }));
    t.equal(noCmd.code, grpc.status.INVALID_ARGUMENT);
    t.match(noCmd.details, /^command: .*Entrypoint or Cmd/);
  });

  await t.test('users: pull from the allowed registries only, no listing or removing', async (t) => {
    const alice = signer.as('alice');
    const pulled = await new Promise<string>((resolve, reject) => {
      let digest = '';
      const s = d.clients.images.PullImage({ image: built.refs.base }, alice);
      s.on('data', (ev: { image?: { digest: string } }) => (digest = ev.image?.digest ?? digest)).on('error', reject).on('end', () => resolve(digest));
    });
    t.match(pulled, /^sha256:/, 'a user pulls from an allowed registry');
    const elsewhere = await refusal(unaryCall((md, o, cb) => d.clients.workspaces.StartWorkspace({ id: 'elsewhere', ownerId: 'alice', image: '127.0.0.2:1/internal/probe:1', command: ['/bin/true'] }, md, o, cb), { metadata: alice }));
    t.equal(elsewhere.code, grpc.status.PERMISSION_DENIED, 'a start naming another registry is refused');
    t.match(elsewhere.details, /users may not pull from 127\.0\.0\.2:1/);
    const list = await refusal(unaryCall((md, o, cb) => d.clients.images.ListImages({}, md, o, cb), { metadata: alice }));
    t.equal(list.code, grpc.status.PERMISSION_DENIED, 'users may not list');
    const rm = await refusal(unaryCall((md, o, cb) => d.clients.images.RemoveImage({ image: built.refs.base }, md, o, cb), { metadata: alice }));
    t.equal(rm.code, grpc.status.PERMISSION_DENIED, 'nor remove');
  });

  await t.test('ImageService and tetrixctl: list with use counts, remove refused while in use', async (t) => {
    const listed = await unaryCall<ListImagesResponse__Output>((md, o, cb) => d.clients.images.ListImages({}, md, o, cb));
    const app = listed.images.find((i) => i.references.includes(built.refs.app))!;
    t.ok(app, 'app is listed');
    t.equal(app.inUse, 5, 'four cold starts and the inspection');
    const inUse = await refusal(unaryCall((md, o, cb) => d.clients.images.RemoveImage({ image: built.refs.app }, md, o, cb)));
    t.equal(inUse.code, grpc.status.FAILED_PRECONDITION);
    const pulled = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, '--output', 'json', 'pull', built.refs.other], { encoding: 'utf8' });
    t.equal(pulled.status, 0, pulled.stderr);
    const lines = pulled.stdout.trim().split('\n').map((l) => JSON.parse(l) as { layer?: { digest: string; cached: boolean }; image?: { digest: string } });
    t.ok(lines.slice(0, -1).every((l) => l.layer), 'layer progress first');
    t.ok(lines.some((l) => l.layer?.cached), 'the shared layer is cached');
    t.match(lines[lines.length - 1].image?.digest, /^sha256:[a-f0-9]{64}$/, 'the digest last');
    // On a terminal (script(1) gives it one): a bar per layer.
    const onTty = spawnSync('script', ['-qec', `${process.execPath} ${ctlMain} --socket ${d.socketPath} pull ${built.refs.other}`, '/dev/null'], { encoding: 'utf8' });
    t.equal(onTty.status, 0, onTty.stderr);
    t.match(onTty.stdout, /[0-9a-f]{12} \[#{30}\] cached/, 'a full bar per layer');
    t.match(onTty.stdout, /\x1b\[2K/, 'redrawn in place');
    t.match(onTty.stdout, /: sha256:[0-9a-f]{64} \(2 layers/, 'then the digest');
    const table = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, 'images'], { encoding: 'utf8' });
    t.match(table.stdout, /REFERENCE\s+DIGEST/);
    const rmi = spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, 'rmi', built.refs.other], { encoding: 'utf8' });
    t.equal(rmi.status, 0, rmi.stderr);
    t.match(rmi.stdout, /^removed sha256:/);
    for (const id of ['cold-1', 'cold-2', 'cold-3', 'cold-4', 'inspect', 'short']) await d.teardown(id);
    const removed = await unaryCall<{ digest: string }>((md, o, cb) => d.clients.images.RemoveImage({ image: built.refs.app }, md, o, cb));
    t.equal(removed.digest, app.digest, 'removable once no workspace uses it');
    t.same(mountsUnder(d.stateDir), [], 'nothing mounted');
  });
});
