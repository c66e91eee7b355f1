// OCI images: a ~500 MB, 5-layer image in a loopback TLS registry (Debian's docker-registry), and
//   1. cold pull + unpack by Tetrix (the layer store) against `skopeo copy docker://… oci:…` followed by
//      `umoci raw unpack` of the same image: pull ratio tetrix/skopeo+umoci, a speed ratio (target >= 1.0)
//   2. StartWorkspace from the cached image against builtin:busybox: cached image start ratio (target <= 1.1)
//   3. four concurrent cold starts of the image on a fresh daemon: downloads per layer (target 1).
// Not a test: run by hand (bench/images/run.sh). Needs docker-registry, umoci, skopeo, openssl; root.
// BENCH_RUNS starts per candidate (default 20), BENCH_PULLS rounds of the pull comparison (default 2),
// BENCH_SKIP_PULL=1 leaves the pull comparison out.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { connect, unaryCall, type Clients } from '../../src/cli/client';
import { OciImageStore } from '../../src/images/store';
import { mountsUnder } from '../../src/sandbox/rootfs';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';

const RUNS = Number(process.env.BENCH_RUNS ?? 20);
const PULLS = Number(process.env.BENCH_PULLS ?? 2);
const LAYERS = 5;
const LAYER_BYTES = 100 << 20;
const root = path.resolve(__dirname, '..', '..', '..');
const work = fs.mkdtempSync('/var/tmp/tetrix-bench-images-');
const children: ChildProcess[] = [];
const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const run = (cmd: string, args: string[]): string => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

async function waitFor(what: string, pred: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function makeCa(): { caFile: string; certFile: string; keyFile: string; certDir: string } {
  const d = path.join(work, 'ca');
  fs.mkdirSync(d);
  const f = (n: string) => path.join(d, n);
  run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '1', '-subj', '/CN=bench CA']);
  run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1']);
  fs.writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  run('openssl', ['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.crt'), '-days', '1', '-extfile', f('ext.cnf')]);
  const certDir = path.join(work, 'certs');
  fs.mkdirSync(certDir);
  fs.copyFileSync(f('ca.crt'), path.join(certDir, 'ca.crt'));
  return { caFile: f('ca.crt'), certFile: f('server.crt'), keyFile: f('server.key'), certDir };
}

async function startRegistry(ca: ReturnType<typeof makeCa>): Promise<{ host: string; log: string[] }> {
  const port = await freePort();
  const config = path.join(work, 'registry.yml');
  fs.writeFileSync(config, `version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: ${work}/registry\nhttp:\n  addr: 127.0.0.1:${port}\n  tls:\n    certificate: ${ca.certFile}\n    key: ${ca.keyFile}\n`);
  const child = spawn('/usr/bin/docker-registry', ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const log: string[] = [];
  child.stdout!.on('data', (b: Buffer) => log.push(...b.toString().split('\n')));
  child.stderr!.on('data', (b: Buffer) => log.push(...b.toString().split('\n')));
  await waitFor('registry', () => new Promise((r) => net.connect(port, '127.0.0.1').once('connect', function (this: net.Socket) { this.destroy(); r(true); }).once('error', () => r(false))));
  return { host: `127.0.0.1:${port}`, log };
}

/** Five layers of ~100 MB: per layer 400 files of 256 KiB, half random (incompressible), half text. */
function buildImage(registry: string, certDir: string): string {
  const layout = path.join(work, 'build');
  run('umoci', ['init', '--layout', layout]);
  run('umoci', ['new', '--image', `${layout}:big`]);
  const bundle = path.join(work, 'bundle');
  run('umoci', ['unpack', '--image', `${layout}:big`, bundle]);
  const rootfs = path.join(bundle, 'rootfs');
  fs.mkdirSync(path.join(rootfs, 'bin'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
  fs.chmodSync(path.join(rootfs, 'bin', 'busybox'), 0o755);
  for (const a of ['sh', 'true']) fs.symlinkSync('busybox', path.join(rootfs, 'bin', a));
  const text = Buffer.from('Lorem ipsum dolor sit amet, consectetur adipiscing elit. '.repeat(4600)).subarray(0, 256 << 10);
  for (let l = 0; l < LAYERS; l++) {
    const dir = path.join(rootfs, `layer${l}`);
    fs.mkdirSync(dir);
    for (let i = 0; i < LAYER_BYTES / (256 << 10); i++) fs.writeFileSync(path.join(dir, `f${i}`), i % 2 ? text : crypto.randomBytes(256 << 10));
    run('umoci', ['repack', '--refresh-bundle', '--image', `${layout}:big`, bundle]);
  }
  const ref = `${registry}/bench/big:v1`;
  run('skopeo', ['copy', '--quiet', '--dest-cert-dir', certDir, `oci:${layout}:big`, `docker://${ref}`]);
  return ref;
}

async function tetrixPull(ref: string, caFile: string, round: number): Promise<number> {
  const store = new OciImageStore({ stateDir: path.join(work, `pull-${round}`), registry: { caFile } });
  await store.open();
  const t0 = now();
  await store.pull(ref);
  const ms = now() - t0;
  fs.rmSync(path.join(work, `pull-${round}`), { recursive: true, force: true });
  return ms;
}

function skopeoUmoci(ref: string, certDir: string, round: number): number {
  const dir = path.join(work, `skopeo-${round}`);
  const t0 = now();
  run('skopeo', ['copy', '--quiet', '--src-cert-dir', certDir, `docker://${ref}`, `oci:${dir}:big`]);
  run('umoci', ['raw', 'unpack', '--image', `${dir}:big`, `${dir}-rootfs`]);
  const ms = now() - t0;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(`${dir}-rootfs`, { recursive: true, force: true });
  return ms;
}

interface Daemon { clients: Clients; stop(): Promise<void>; stateDir: string }

async function startDaemon(name: string, caFile: string): Promise<Daemon> {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  const socket = path.join(dir, 'd.sock');
  const parent = `tetrix-bench-img-${process.pid}-${name}`;
  const child = spawn(process.execPath, [path.join(root, 'dist', 'src', 'main.js'), '--state-dir', path.join(dir, 'state'), '--socket', socket,
    '--cgroup-parent', parent, '--network', 'off', '--api-listen', '', '--log-level', 'warn', '--registry-ca-file', caFile], { stdio: ['ignore', 'ignore', 'inherit'] });
  children.push(child);
  await waitFor('tetrixd socket', () => fs.existsSync(socket));
  const clients = connect({ socketPath: socket });
  await waitFor('tetrixd answers', () => unaryCall((md, o, cb) => clients.node.GetNodeInfo({}, md, o, cb)).then(() => true, () => false));
  return {
    clients,
    stateDir: path.join(dir, 'state'),
    stop: async () => {
      clients.close();
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      for (const c of fs.readdirSync('/sys/fs/cgroup')) {
        try { fs.rmdirSync(path.join('/sys/fs/cgroup', c, parent)); } catch { /* not there */ }
      }
    },
  };
}

async function startOnce(d: Daemon, id: string, image: string): Promise<number> {
  const t0 = now();
  const w = await unaryCall<Workspace__Output>((md, o, cb) => d.clients.workspaces.StartWorkspace({ id, ownerId: 'bench', image, command: ['/bin/true'], network: 'NETWORK_MODE_NONE' }, md, o, cb));
  const ms = now() - t0;
  if (w.state === 'WORKSPACE_STATE_FAILED') throw new Error(`${id}: ${w.message}`);
  await unaryCall((md, o, cb) => d.clients.workspaces.TeardownWorkspace({ id }, md, o, cb));
  return ms;
}

async function main(): Promise<void> {
  const ca = makeCa();
  const registry = await startRegistry(ca);
  console.log('building a 5-layer, ~500 MB image (umoci) and pushing it (skopeo)...');
  const ref = buildImage(registry.host, ca.certDir);

  const tetrix: number[] = [];
  const reference: number[] = [];
  for (let r = 0; r < (process.env.BENCH_SKIP_PULL ? 0 : PULLS); r++) {
    tetrix.push(await tetrixPull(ref, ca.caFile, r));
    reference.push(skopeoUmoci(ref, ca.certDir, r));
  }
  if (tetrix.length > 0) console.log(`cold pull+unpack: tetrix ${tetrix.map((x) => x.toFixed(0)).join(', ')} ms; skopeo copy + umoci raw unpack ${reference.map((x) => x.toFixed(0)).join(', ')} ms`);
  // As the issue defines it: a speed ratio, >= 1.0 when Tetrix is as fast or faster.
  if (tetrix.length > 0) console.log(`pull ratio tetrix/skopeo+umoci: ${(median(reference) / median(tetrix)).toFixed(2)} (speed: skopeo+umoci time / tetrix time)`);

  const d = await startDaemon('starts', ca.caFile);
  await new Promise<void>((resolve, reject) => {
    const s = d.clients.images.PullImage({ image: ref });
    s.on('data', () => undefined).on('error', reject).on('end', () => resolve());
  });
  const busy: number[] = [];
  const img: number[] = [];
  for (let i = 0; i < 3; i++) {
    await startOnce(d, `warm-b-${i}`, 'builtin:busybox');
    await startOnce(d, `warm-i-${i}`, ref);
  }
  for (let i = 0; i < RUNS; i++) {
    busy.push(await startOnce(d, `b-${i}`, 'builtin:busybox'));
    img.push(await startOnce(d, `i-${i}`, ref));
  }
  console.log(`StartWorkspace median: builtin:busybox ${median(busy).toFixed(1)} ms, cached 5-layer image ${median(img).toFixed(1)} ms (${RUNS} each, interleaved)`);
  console.log(`cached image start ratio: ${(median(img) / median(busy)).toFixed(2)}`);
  await d.stop();

  const cold = await startDaemon('cold', ca.caFile);
  const before = registry.log.filter((l) => l.includes('/blobs/sha256:') && l.includes('"GET ')).length;
  const t0 = now();
  await Promise.all([0, 1, 2, 3].map((i) => startOnce(cold, `cold-${i}`, ref)));
  const gets = registry.log.filter((l) => l.includes('/blobs/sha256:') && l.includes('"GET ')).length - before;
  console.log(`4 concurrent cold starts: ${(now() - t0).toFixed(0)} ms; blob downloads ${gets} for ${LAYERS} layers + 1 config: downloads per layer ${((gets - 1) / LAYERS).toFixed(2)}`);
  if (mountsUnder(work).length > 0) console.error(`left mounted: ${mountsUnder(work).join(', ')}`);
  await cold.stop();
}

main()
  .catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
    setTimeout(() => fs.rmSync(work, { recursive: true, force: true }), 500);
  });
