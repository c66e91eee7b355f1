// Real parts for the image tests: a test CA, Debian's docker-registry on 127.0.0.1 with TLS (optionally
// with token auth), and images built from busybox-static with umoci and pushed with skopeo.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

interface TapLike {
  teardown(fn: () => unknown): void;
}

export interface TestCa {
  dir: string;
  caFile: string;
  certFile: string; // for 127.0.0.1 and localhost
  keyFile: string;
}

const run = (cmd: string, args: string[], opts: { cwd?: string; input?: string } = {}): string =>
  execFileSync(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], encoding: 'utf8', ...opts });

/** A CA and a server certificate for 127.0.0.1, made with openssl. */
export function makeTestCa(dir: string): TestCa {
  fs.mkdirSync(dir, { recursive: true });
  const caKey = path.join(dir, 'ca.key');
  const caFile = path.join(dir, 'ca.crt');
  const keyFile = path.join(dir, 'server.key');
  const csr = path.join(dir, 'server.csr');
  const certFile = path.join(dir, 'server.crt');
  const ext = path.join(dir, 'ext.cnf');
  run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', caKey, '-out', caFile, '-days', '2', '-subj', '/CN=tetrix test registry CA']);
  run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', csr, '-subj', '/CN=127.0.0.1']);
  fs.writeFileSync(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  run('openssl', ['x509', '-req', '-in', csr, '-CA', caFile, '-CAkey', caKey, '-CAcreateserial', '-out', certFile, '-days', '2', '-extfile', ext]);
  return { dir, caFile, certFile, keyFile };
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export interface Registry {
  host: string;      // 127.0.0.1:PORT
  dataDir: string;
  log: string[];     // the registry's log lines (access log included)
  /** GETs of each blob digest, from the registry's access log. */
  blobGets(digest: string): number;
  process: ChildProcess;
}

export interface RegistryOptions {
  /** docker-registry's token auth: realm URL, issuer, service and the cert the tokens are signed with. */
  token?: { realm: string; issuer: string; service: string; rootCertBundle: string };
  /** docker-registry's htpasswd auth (bcrypt lines). */
  htpasswd?: string;
  /** Serve this storage directory (another registry's), e.g. to pull with auth what was pushed without. */
  dataDir?: string;
  /** Plain HTTP, no TLS (an "insecure registry"). */
  plain?: boolean;
}

/** docker-registry serve on 127.0.0.1 with TLS from the test CA; stopped (by pid) at teardown. */
export async function startRegistry(t: TapLike, ca: TestCa, opts: RegistryOptions = {}): Promise<Registry> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-registry-'));
  const port = await freePort();
  let auth = '';
  if (opts.token) auth = `auth:\n  token:\n    realm: ${opts.token.realm}\n    service: ${opts.token.service}\n    issuer: ${opts.token.issuer}\n    rootcertbundle: ${opts.token.rootCertBundle}\n`;
  if (opts.htpasswd !== undefined) {
    fs.writeFileSync(path.join(dir, 'htpasswd'), opts.htpasswd);
    auth = `auth:\n  htpasswd:\n    realm: tetrix-test\n    path: ${dir}/htpasswd\n`;
  }
  const config = [
    'version: 0.1',
    'log:',
    '  level: info',
    '  accesslog:',
    '    disabled: false',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${opts.dataDir ?? `${dir}/data`}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    ...(opts.plain ? [] : ['  tls:', `    certificate: ${ca.certFile}`, `    key: ${ca.keyFile}`]),
    auth,
  ].join('\n');
  fs.writeFileSync(path.join(dir, 'config.yml'), config);
  const child = spawn('/usr/bin/docker-registry', ['serve', path.join(dir, 'config.yml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  const collect = (b: Buffer): void => void log.push(...b.toString().split('\n').filter(Boolean));
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  t.teardown(async () => {
    if (child.exitCode === null && child.pid) {
      process.kill(child.pid, 'SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const end = Date.now() + 20_000;
  while (!(await canConnect(port))) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited: ${log.slice(-5).join('\n')}`);
    if (Date.now() > end) throw new Error('docker-registry did not listen');
    await new Promise((r) => setTimeout(r, 50));
  }
  const host = `127.0.0.1:${port}`;
  return {
    host,
    dataDir: opts.dataDir ?? `${dir}/data`,
    log,
    process: child,
    blobGets: (digest: string) => log.filter((l) => l.includes(`"GET /v2/`) && l.includes(`/blobs/${digest} `) && / 200 /.test(l)).length,
  };
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

// --- images ----------------------------------------------------------------------------------------

export interface BuiltImages {
  layout: string;        // the OCI layout umoci built
  /** name -> pushed reference */
  refs: Record<string, string>;
}

/**
 * Builds, in one OCI layout, from busybox-static:
 *   base:  busybox and its sh link, /etc/passwd, a file later whited out, a dir later made opaque, a hard
 *          link, a symlink to /, a setuid file, a file owned by an id above the workspace range
 *   app:   base + a layer deleting etc/gone (whiteout) + a hand-made layer with an opaque dir, and a config
 *          (Env, Entrypoint, Cmd, WorkingDir)
 *   other: base + a different top layer (shares the base layer with app)
 * and pushes each to the registry with skopeo.
 */
export function buildImages(workDir: string, registry: Registry, ca: TestCa, repo: string): BuiltImages {
  const layout = path.join(workDir, 'oci');
  const certDir = path.join(workDir, 'certs');
  fs.mkdirSync(certDir, { recursive: true });
  fs.copyFileSync(ca.caFile, path.join(certDir, 'ca.crt'));
  run('umoci', ['init', '--layout', layout]);
  run('umoci', ['new', '--image', `${layout}:base`]);
  const bundle = path.join(workDir, 'bundle');
  run('umoci', ['unpack', '--image', `${layout}:base`, bundle]);
  const root = path.join(bundle, 'rootfs');
  for (const d of ['bin', 'etc', 'opq/sub', 'srv', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin/busybox'));
  fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
  for (const applet of ['sh', 'cat', 'ls', 'stat', 'id', 'echo', 'test', 'env', 'pwd', 'readlink']) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
  fs.writeFileSync(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n');
  fs.writeFileSync(path.join(root, 'etc/group'), 'root:x:0:\napp:x:1000:\ntools:x:2000:app\n');
  fs.writeFileSync(path.join(root, 'etc/gone'), 'deleted in the next layer\n');
  fs.writeFileSync(path.join(root, 'opq/sub/old'), 'hidden by the opaque dir\n');
  fs.writeFileSync(path.join(root, 'opq/kept-not'), 'hidden too\n');
  fs.mkdirSync(path.join(root, 'home/app'), { recursive: true });
  fs.writeFileSync(path.join(root, 'home/app/cache'), 'deleted in the next layer, whose tar has no home/app entry\n');
  fs.chownSync(path.join(root, 'home/app'), 1000, 1000);
  fs.chmodSync(path.join(root, 'home/app'), 0o700);
  fs.writeFileSync(path.join(root, 'srv/original'), 'hard linked\n');
  fs.linkSync(path.join(root, 'srv/original'), path.join(root, 'srv/hardlink'));
  fs.symlinkSync('/', path.join(root, 'srv/to-root'));
  fs.writeFileSync(path.join(root, 'bin/suid'), '#!/bin/sh\n');
  fs.chmodSync(path.join(root, 'bin/suid'), 0o4755);
  fs.writeFileSync(path.join(root, 'bin/suid-outsider'), '#!/bin/sh\n');
  fs.chownSync(path.join(root, 'bin/suid-outsider'), 70000, 70000);
  fs.chmodSync(path.join(root, 'bin/suid-outsider'), 0o4755);
  run('umoci', ['repack', '--refresh-bundle', '--image', `${layout}:base`, bundle]);
  // app: a whiteout (umoci writes .wh.gone), then an opaque dir in a layer made by hand.
  run('umoci', ['unpack', '--image', `${layout}:base`, path.join(workDir, 'app')]);
  fs.rmSync(path.join(workDir, 'app/rootfs/etc/gone'));
  fs.rmSync(path.join(workDir, 'app/rootfs/home/app/cache'));
  run('umoci', ['repack', '--image', `${layout}:app`, path.join(workDir, 'app')]);
  const opq = path.join(workDir, 'opq-layer');
  fs.mkdirSync(path.join(opq, 'opq'), { recursive: true });
  fs.writeFileSync(path.join(opq, 'opq/.wh..wh..opq'), '');
  fs.writeFileSync(path.join(opq, 'opq/fresh'), 'only this\n');
  run('tar', ['--numeric-owner', '--owner=0', '--group=0', '-C', opq, '-cf', path.join(workDir, 'opq.tar'), 'opq']);
  run('umoci', ['raw', 'add-layer', '--image', `${layout}:app`, path.join(workDir, 'opq.tar')]);
  run('umoci', ['config', '--image', `${layout}:app`, '--config.env', 'IMAGE_VAR=from-image', '--config.env', 'BOTH=image',
    '--config.entrypoint', '/bin/sh', '--config.cmd', '-c', '--config.cmd', 'echo "cmd ran in $(pwd) as $(id -u) with $IMAGE_VAR $BOTH"', '--config.workingdir', '/srv']);
  run('umoci', ['config', '--image', `${layout}:app`, '--tag', 'appuser', '--config.user', 'app']);
  // other: shares base's layer.
  run('umoci', ['unpack', '--image', `${layout}:base`, path.join(workDir, 'other')]);
  fs.writeFileSync(path.join(workDir, 'other/rootfs/etc/other'), 'other image\n');
  run('umoci', ['repack', '--image', `${layout}:other`, path.join(workDir, 'other')]);
  const refs: Record<string, string> = {};
  for (const name of ['base', 'app', 'appuser', 'other']) {
    refs[name] = `${registry.host}/${repo}/${name}:v1`;
    run('skopeo', ['copy', '--quiet', '--dest-cert-dir', certDir, `oci:${layout}:${name}`, `docker://${refs[name]}`]);
  }
  return { layout, refs };
}

/** The layer digests of an image in the layout (bottom first). */
export function layerDigests(layout: string, tag: string): string[] {
  const index = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)!;
  const manifest = JSON.parse(fs.readFileSync(path.join(layout, 'blobs', 'sha256', entry.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
  return manifest.layers.map((l) => l.digest);
}

export const sha256 = (b: Buffer | string): string => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;
