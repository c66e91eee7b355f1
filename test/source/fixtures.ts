// Real git servers on 127.0.0.1 for the source tests (not a test file itself): repositories made with
// git, served by `git daemon` and by git's smart HTTP (`git http-backend` as CGI behind an HTTPS server with
// a test CA and a token check).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';

const GIT_ENV = {
  ...process.env,
  GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null', HOME: '/nonexistent',
  // The tests read the workspaces' clones (owned by their uid ranges) as root: our own repositories.
  GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'safe.directory', GIT_CONFIG_VALUE_0: '*',
  GIT_AUTHOR_NAME: 'test', GIT_AUTHOR_EMAIL: 'test@example.test', GIT_COMMITTER_NAME: 'test', GIT_COMMITTER_EMAIL: 'test@example.test',
};

export function git(cwd: string, ...args: string[]): string {
  const r = spawnSync('git', args, { cwd, env: GIT_ENV, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`git ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}

export interface TestRepo {
  bare: string;           // the served bare repository
  work: string;           // a working clone to push new commits from
  commits: string[];      // main's commits, oldest first
  tagCommit: string;      // what tag v1.0 points to
  featureCommit: string;  // the tip of branch feature
}

/** A repository with `files` files, several commits on main, tag v1.0, branch feature, optionally a submodule. */
export function makeRepo(root: string, name: string, opts: { files?: number; submoduleUrl?: string; randomBytes?: number } = {}): TestRepo {
  const work = path.join(root, `${name}-work`);
  const bare = path.join(root, `${name}.git`);
  fs.mkdirSync(work, { recursive: true });
  git(work, 'init', '-q', '-b', 'main');
  const files = opts.files ?? 2000;
  for (let i = 0; i < files; i++) {
    const dir = path.join(work, 'src', `d${i % 50}`);
    fs.mkdirSync(dir, { recursive: true });
    // Incompressible when asked: a pack big enough to be cut in the middle.
    fs.writeFileSync(path.join(dir, `f${i}.txt`), opts.randomBytes ? crypto.randomBytes(opts.randomBytes).toString('hex') : `file ${i}\n`);
  }
  fs.writeFileSync(path.join(work, 'README'), 'one\n');
  git(work, 'add', '-A');
  git(work, 'commit', '-q', '-m', 'first');
  const commits = [git(work, 'rev-parse', 'HEAD')];
  fs.writeFileSync(path.join(work, 'README'), 'two\n');
  git(work, 'commit', '-q', '-am', 'second');
  commits.push(git(work, 'rev-parse', 'HEAD'));
  git(work, 'tag', '-a', '-m', 'v1.0', 'v1.0');
  const tagCommit = commits[1]!;
  git(work, 'checkout', '-q', '-b', 'feature');
  fs.writeFileSync(path.join(work, 'FEATURE'), 'feature\n');
  git(work, 'add', 'FEATURE');
  git(work, 'commit', '-q', '-m', 'feature');
  const featureCommit = git(work, 'rev-parse', 'HEAD');
  git(work, 'checkout', '-q', 'main');
  if (opts.submoduleUrl) {
    git(work, '-c', 'protocol.file.allow=always', 'submodule', 'add', '-q', opts.submoduleUrl, 'lib/sub');
  }
  fs.writeFileSync(path.join(work, 'README'), 'three\n');
  git(work, 'commit', '-q', '-am', 'third');
  commits.push(git(work, 'rev-parse', 'HEAD'));
  git(root, 'clone', '-q', '--bare', work, bare);
  git(work, 'remote', 'add', 'origin', bare);
  return { bare, work, commits, tagCommit, featureCommit };
}

/** A new commit on main that writes `file`, pushed to the served repository; returns its id. */
export function pushCommit(repo: TestRepo, file: string, text: string): string {
  fs.writeFileSync(path.join(repo.work, file), text);
  git(repo.work, 'add', file);
  git(repo.work, 'commit', '-q', '-m', `change ${file}`);
  git(repo.work, 'push', '-q', 'origin', 'main');
  return git(repo.work, 'rev-parse', 'HEAD');
}

/** A small repository to serve as a submodule. */
export function makeSubRepo(root: string, name: string): string {
  const work = path.join(root, `${name}-work`);
  const bare = path.join(root, `${name}.git`);
  fs.mkdirSync(work, { recursive: true });
  git(work, 'init', '-q', '-b', 'main');
  fs.writeFileSync(path.join(work, 'SUB'), 'submodule content\n');
  git(work, 'add', 'SUB');
  git(work, 'commit', '-q', '-m', 'sub');
  git(root, 'clone', '-q', '--bare', work, bare);
  return bare;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => (c.destroy(), resolve(true)));
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on 127.0.0.1:${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface GitDaemon {
  port: number;
  url(repo: string): string;
  log: string[];
  process: ChildProcess;
  kill(): Promise<void>;
}

/** `git daemon` serving every repository below base on 127.0.0.1:port. */
export async function startGitDaemon(base: string, port?: number): Promise<GitDaemon> {
  const p = port ?? (await freePort());
  const child = spawn('git', ['daemon', '--reuseaddr', `--base-path=${base}`, '--export-all', '--listen=127.0.0.1', `--port=${p}`, '--verbose', '--informative-errors', base], { env: GIT_ENV, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  const log: string[] = [];
  child.stderr!.setEncoding('utf8').on('data', (d: string) => log.push(...d.split('\n').filter(Boolean)));
  await waitForPort(p);
  return {
    port: p, log, process: child,
    url: (repo) => `git://127.0.0.1:${p}/${repo}`,
    // Its own process group: the connections' children go with it (they hold the log pipe open).
    kill: () => new Promise<void>((resolve) => {
      const done = (): void => {
        child.stderr!.destroy();
        resolve();
      };
      if (child.exitCode !== null || child.signalCode !== null) return done();
      child.once('exit', done);
      process.kill(-child.pid!, 'SIGKILL');
    }),
  };
}

export interface TestCa {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** A CA and a certificate for 127.0.0.1 made with openssl(1). */
export function makeTestCa(dir: string): TestCa {
  fs.mkdirSync(dir, { recursive: true });
  const f = (n: string): string => path.join(dir, n);
  const run = (...args: string[]): void => {
    const r = spawnSync('openssl', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args[0]}: ${r.stderr}`);
  };
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=tetrix source test CA');
  run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  run('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.pem'), '-days', '2', '-extfile', f('ext.cnf'));
  return { caFile: f('ca.pem'), certFile: f('server.pem'), keyFile: f('server.key') };
}

export interface SmartHttp {
  port: number;
  url(repo: string): string;
  /** Every request: method, path and whether it carried the right token. */
  requests: Array<{ method: string; path: string; authorized: boolean }>;
  close(): Promise<void>;
}

/** git's smart HTTP: `git http-backend` as CGI behind HTTPS; every request needs Basic auth with the token as password. */
export async function startSmartHttp(base: string, ca: TestCa, token: string): Promise<SmartHttp> {
  const requests: SmartHttp['requests'] = [];
  const server = https.createServer({ cert: fs.readFileSync(ca.certFile), key: fs.readFileSync(ca.keyFile) }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://127.0.0.1');
    const auth = req.headers.authorization ?? '';
    const password = auth.startsWith('Basic ') ? Buffer.from(auth.slice(6), 'base64').toString().split(':').slice(1).join(':') : '';
    const authorized = password === token;
    requests.push({ method: req.method ?? '', path: url.pathname, authorized });
    if (!authorized) {
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="test"' });
      res.end('unauthorized\n');
      return;
    }
    const cgi = spawn('/usr/lib/git-core/git-http-backend', [], {
      env: {
        ...GIT_ENV, GIT_PROJECT_ROOT: base, GIT_HTTP_EXPORT_ALL: '1', PATH_INFO: url.pathname, QUERY_STRING: url.search.slice(1),
        REQUEST_METHOD: req.method ?? 'GET', CONTENT_TYPE: req.headers['content-type'] ?? '', REMOTE_ADDR: '127.0.0.1',
        ...(req.headers['content-encoding'] ? { HTTP_CONTENT_ENCODING: String(req.headers['content-encoding']) } : {}),
        ...(req.headers['git-protocol'] ? { GIT_PROTOCOL: String(req.headers['git-protocol']) } : {}),
      },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    req.pipe(cgi.stdin!);
    let head = Buffer.alloc(0);
    let headersDone = false;
    cgi.stdout!.on('data', (chunk: Buffer) => {
      if (headersDone) return void res.write(chunk);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      headersDone = true;
      let status = 200;
      const headers: Record<string, string> = {};
      for (const line of head.subarray(0, end).toString().split('\r\n')) {
        const i = line.indexOf(':');
        const k = line.slice(0, i).trim();
        const v = line.slice(i + 1).trim();
        if (k.toLowerCase() === 'status') status = Number(v.split(' ')[0]);
        else headers[k] = v;
      }
      res.writeHead(status, headers);
      res.write(head.subarray(end + 4));
    });
    cgi.stdout!.on('end', () => res.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port, requests,
    url: (repo) => `https://127.0.0.1:${port}/${repo}`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

export interface CuttingRelay {
  port: number;
  connections: number;
  close(): Promise<void>;
}

/**
 * A TCP relay to 127.0.0.1:target that cuts the first `cut` connections after `afterBytes` bytes from the
 * server, as a server killed mid-clone would; with `dieAfterCut` it then stops listening (connection refused).
 */
export async function startCuttingRelay(target: number, o: { cut: number; afterBytes: number; dieAfterCut?: boolean }): Promise<CuttingRelay> {
  const sockets = new Set<net.Socket>();
  const relay: CuttingRelay = { port: 0, connections: 0, close: async () => undefined };
  const server = net.createServer((client) => {
    const n = ++relay.connections;
    const upstream = net.connect(target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.once('close', () => sockets.delete(s));
    }
    let bytes = 0;
    upstream.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      if (n <= o.cut && bytes > o.afterBytes) {
        client.resetAndDestroy();
        upstream.destroy();
        if (o.dieAfterCut) server.close();
        return;
      }
      client.write(chunk);
    });
    client.on('data', (chunk: Buffer) => upstream.write(chunk));
    upstream.once('end', () => client.end());
    client.once('end', () => upstream.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  relay.port = (server.address() as net.AddressInfo).port;
  relay.close = () => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
    if (!server.listening) resolve();
  });
  return relay;
}
