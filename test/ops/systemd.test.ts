// tetrixd as systemd runs it: the unit file verifies, and the daemon speaks sd_notify(3) to a real
// unix datagram socket: READY=1 once it serves, WATCHDOG=1 while it lives, STOPPING=1 on SIGTERM.
import t, { type Test } from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot, startDaemon, type Daemon } from '../helpers/daemon';
import { DAEMON_ENV, DAEMON_NODE_FLAGS } from '../../src/node-flags';

const unitFile = path.join(repoRoot, 'deploy', 'tetrixd.service');

t.test('deploy/tetrixd.service passes systemd-analyze verify without a warning', async (t) => {
  const which = spawnSync('sh', ['-c', 'command -v systemd-analyze'], { encoding: 'utf8' });
  t.equal(which.status, 0, 'systemd-analyze is installed (deploy/packages.txt lists systemd)');
  const res = spawnSync('systemd-analyze', ['verify', unitFile], { encoding: 'utf8' });
  t.equal(res.status, 0, 'verify exits 0');
  // verify exits 0 even for directives it ignores; any line about the unit is a mistake in it.
  const complaints = `${res.stdout}${res.stderr}`.split('\n').filter((l) => l.includes('tetrixd.service'));
  t.same(complaints, [], 'and says nothing about the unit');
  const unit = fs.readFileSync(unitFile, 'utf8');
  for (const directive of ['Type=notify', 'NotifyAccess=main', 'KillMode=process', 'Delegate=yes', 'Restart=always']) {
    t.match(unit, new RegExp(`^${directive}$`, 'm'), directive);
  }
});

t.test('the unit and `npm start` run node with the memory settings of src/node-flags.ts', async (t) => {
  const unit = fs.readFileSync(unitFile, 'utf8');
  const execStart = unit.match(/^ExecStart=(.*)$/m)?.[1] ?? '';
  const start = (JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.start;
  const script = (cmd: string): number => cmd.split(' ').findIndex((w) => w.endsWith('dist/src/main.js'));
  for (const [name, cmd] of [['ExecStart', execStart], ['npm start', start]] as const) {
    const words = cmd.split(' ');
    for (const flag of DAEMON_NODE_FLAGS) t.ok(words.indexOf(flag) >= 0 && words.indexOf(flag) < script(cmd), `${name}: ${flag} before the script`);
  }
  for (const [key, value] of Object.entries(DAEMON_ENV)) {
    t.match(unit, new RegExp(`^Environment=${key}=${value}$`, 'm'), `unit: ${key}=${value}`);
    t.ok(start.split(' node ')[0].split(' ').includes(`${key}=${value}`), `npm start: ${key}=${value}`);
  }
});

/** A unix datagram socket like systemd's notify socket (Node has none): python3 prints each message as a JSON line. */
async function notifyListener(t: Test): Promise<{ socketPath: string; messages: string[]; waitFor(msg: string, timeoutMs?: number): Promise<number> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-notify-'));
  const socketPath = path.join(dir, 'notify.sock');
  const script = [
    'import json, socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    's.bind(sys.argv[1])',
    'print("LISTENING", flush=True)',
    'while True:',
    '    print(json.dumps(s.recv(4096).decode()), flush=True)',
  ].join('\n');
  const child: ChildProcess = spawn('python3', ['-c', script, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: string[] = [];
  let listening = false;
  let buffered = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const line of lines) {
      if (line === 'LISTENING') listening = true;
      else if (line) messages.push(...(JSON.parse(line) as string).split('\n').filter(Boolean));
    }
  });
  t.teardown(() => {
    child.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const until = async (what: string, pred: () => boolean, timeoutMs: number): Promise<void> => {
    const end = Date.now() + timeoutMs;
    while (!pred()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(messages)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  await until('the listener', () => listening, 10_000);
  return {
    socketPath,
    messages,
    waitFor: async (msg, timeoutMs = 30_000) => {
      await until(msg, () => messages.includes(msg), timeoutMs);
      return messages.indexOf(msg);
    },
  };
}

/** startDaemon with extra environment for the daemon process (the helper spawns with process.env). */
async function startDaemonWithEnv(t: Test, env: Record<string, string>): Promise<Daemon> {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await startDaemon(t);
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

t.test('the daemon notifies READY=1 once it serves, pings the watchdog, and STOPPING=1 on SIGTERM', async (t) => {
  const notify = await notifyListener(t);
  // 400 ms: systemd's WatchdogSec=30 scaled down; the daemon pings at half the interval.
  const d = await startDaemonWithEnv(t, { NOTIFY_SOCKET: notify.socketPath, WATCHDOG_USEC: '400000' });
  await notify.waitFor('READY=1');
  t.ok(fs.existsSync(d.socketPath), 'the API socket exists when READY=1 arrives');
  t.same(await d.list(), [], 'and answers');

  const w = await d.start({ id: 'notify-env', ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'] });
  const environ = fs.readFileSync(`/proc/${w.pid}/environ`, 'utf8');
  t.notMatch(environ, /NOTIFY_SOCKET|WATCHDOG_USEC/, "a workspace does not inherit the daemon's notify socket");

  const pingsBefore = notify.messages.filter((m) => m === 'WATCHDOG=1').length;
  await new Promise((r) => setTimeout(r, 1000));
  const pings = notify.messages.filter((m) => m === 'WATCHDOG=1').length - pingsBefore;
  t.ok(pings >= 3 && pings <= 8, `WATCHDOG=1 about every 200 ms (${pings} in 1 s)`);
  t.notOk(notify.messages.includes('STOPPING=1'), 'no STOPPING=1 while it serves');

  d.clients.close();
  d.process.kill('SIGTERM');
  const code = await new Promise<number | null>((resolve) => d.process.once('exit', (c) => resolve(c)));
  t.ok(notify.messages.indexOf('STOPPING=1') > notify.messages.indexOf('READY=1'), 'STOPPING=1 follows READY=1 on SIGTERM');
  t.equal(code, 0, 'and the daemon exits 0');
  t.ok(fs.existsSync(`/proc/${w.pid}`), 'leaving the workspace running (KillMode=process relies on this)');
});

t.test('without NOTIFY_SOCKET (not under systemd) the daemon serves as usual', async (t) => {
  const d = await startDaemonWithEnv(t, { NOTIFY_SOCKET: '', WATCHDOG_USEC: '' });
  t.same(await d.list(), [], 'it serves');
});

t.test("a workspace does not inherit the daemon's OOM score adjustment (OOMScoreAdjust=-999 in the unit)", async (t) => {
  const d = await startDaemon(t);
  // Raising needs no privilege. Under systemd the daemon's value is -999; setting that here would need
  // CAP_SYS_RESOURCE, which this machine's root lacks (so the floor-reset itself is not testable here).
  fs.writeFileSync(`/proc/${d.process.pid}/oom_score_adj`, '500');
  // The kernel lets a process lower its own value without privilege down to its floor: the workload
  // tries to go below 0.
  const script = 'echo -1 > /proc/self/oom_score_adj 2>/dev/null; echo "rc=$?" > /tmp/lowered; exec sleep 600';
  const w = await d.start({ id: 'oom-adj', ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', script] });
  const adjOf = (pid: number): string => fs.readFileSync(`/proc/${pid}/oom_score_adj`, 'utf8').trim();
  t.equal(adjOf(w.pid), '0', "the workspace's init is an ordinary OOM candidate");
  const workload = async (): Promise<number | undefined> => Number(fs.readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').trim().split(' ')[0]) || undefined;
  const lowered = path.join(d.stateDir, 'workspaces', 'oom-adj', 'rootfs', 'tmp', 'lowered');
  for (let i = 0; i < 100 && !fs.existsSync(lowered); i++) await new Promise((r) => setTimeout(r, 50));
  t.match(fs.readFileSync(lowered, 'utf8'), /^rc=[1-9]/, 'lowering its score below 0 is refused');
  t.equal(adjOf((await workload())!), '0', 'and so its workload stays an ordinary candidate');
});

// --- The KEK as a systemd credential (LoadCredentialEncrypted=, systemd.exec(5), systemd-creds(1)) ----------

t.test('the unit documents LoadCredentialEncrypted= for the KEK, and verifies with it switched on', async (t) => {
  const unit = fs.readFileSync(unitFile, 'utf8');
  const lines = ['LoadCredentialEncrypted=tetrix-kek:/etc/credstore.encrypted/tetrix-kek', 'Environment=TETRIX_KEK_SOURCE=systemd-credential:tetrix-kek'];
  for (const line of lines) t.match(unit, new RegExp(`^#${line}$`, 'm'), `the unit shows ${line}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-unit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const enabled = path.join(dir, 'tetrixd.service');
  fs.writeFileSync(enabled, lines.reduce((u, line) => u.replace(`#${line}`, line), unit));
  const res = spawnSync('systemd-analyze', ['verify', enabled], { encoding: 'utf8' });
  t.equal(res.status, 0, 'verify exits 0 with the credential switched on');
  t.same(`${res.stdout}${res.stderr}`.split('\n').filter((l) => l.includes('tetrixd.service')), [], 'and says nothing about the unit');
});

/** What systemd does at service start: decrypt the credential into a private ramfs, 0500 dir, 0400 file. */
function credentialsDirectory(t: Test, name: string, rootKey: Buffer): string {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-cred-'));
  const plain = path.join(base, 'plain');
  const encrypted = path.join(base, `${name}.cred`);
  const creds = path.join(base, 'credentials');
  const hadHostKey = fs.existsSync('/var/lib/systemd/credential.secret');
  t.teardown(() => {
    spawnSync('umount', [creds]);
    fs.rmSync(base, { recursive: true, force: true });
    // systemd-creds makes the host key on first use; leave the host as we found it.
    if (!hadHostKey) fs.rmSync('/var/lib/systemd/credential.secret', { force: true });
  });
  fs.writeFileSync(plain, rootKey, { mode: 0o600 });
  const enc = spawnSync('systemd-creds', ['encrypt', `--name=${name}`, '--with-key=host', plain, encrypted], { encoding: 'utf8' });
  fs.rmSync(plain);
  if (enc.status !== 0) throw new Error(`systemd-creds encrypt: ${enc.stderr}`);
  fs.mkdirSync(creds);
  const mnt = spawnSync('mount', ['-t', 'ramfs', '-o', 'mode=0700', 'ramfs', creds], { encoding: 'utf8' });
  if (mnt.status !== 0) throw new Error(`mount ramfs: ${mnt.stderr}`);
  const dec = spawnSync('systemd-creds', ['decrypt', `--name=${name}`, encrypted, path.join(creds, name)], { encoding: 'utf8' });
  if (dec.status !== 0) throw new Error(`systemd-creds decrypt: ${dec.stderr}`);
  fs.chmodSync(path.join(creds, name), 0o400);
  fs.chmodSync(creds, 0o500);
  return creds;
}

function filesHolding(dir: string, key: Buffer): string[] {
  const forms = [key, Buffer.from(key.toString('hex')), Buffer.from(key.toString('base64'))];
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath, e.name))
    .filter((p) => { const b = fs.readFileSync(p); return forms.some((f) => b.includes(f)); });
}

t.test('with a systemd credential, the daemon reads its root key from $CREDENTIALS_DIRECTORY and writes no key in the clear', async (t) => {
  const rootKey = crypto.randomBytes(32);
  const creds = credentialsDirectory(t, 'tetrix-kek', rootKey);
  const env = { CREDENTIALS_DIRECTORY: creds };
  const d = await startDaemon(t, ['--kek-source', 'systemd-credential:tetrix-kek'], { env });
  t.ok(d.output.some((l) => l.includes('"protection":"root-key:root-')), 'the keyring is sealed under the credential');
  t.notOk(d.output.some((l) => l.includes('stored in the clear')), 'and no warning about plaintext keys');
  const secret = `tetrix-cred-${crypto.randomBytes(8).toString('hex')}`;
  await d.start({ id: 'cred-ws', ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'echo "$TOKEN" > /workspace/t; exec sleep 600'], env: { TOKEN: secret } });
  await d.waitFor('cred-ws', (w) => w.state === 'WORKSPACE_STATE_RUNNING');

  const keyFiles = fs.readdirSync(path.join(d.stateDir, 'keys')).filter((n) => n.startsWith('kek-'));
  t.ok(keyFiles.length >= 2 && keyFiles.every((n) => n === 'kek-current' || n.endsWith('.sealed')), `only sealed KEKs in keys/: ${keyFiles.join(' ')}`);
  t.same(filesHolding(d.stateDir, rootKey), [], 'the root key is nowhere in the state dir');
  t.same(fs.readdirSync(creds), ['tetrix-kek'], 'nothing was written beside the credential');

  await d.terminate();
  const refused = await d.restart({}).then(() => undefined, (err: Error) => err);
  t.match(refused?.message, /systemd credential tetrix-kek: \$CREDENTIALS_DIRECTORY is not set/, 'without the credential the state dir opens nothing');
  await d.restart(env);
  t.equal((await d.get('cred-ws')).state, 'WORKSPACE_STATE_RUNNING', 'with it, the daemon adopts the workspace (its sealed env opens)');
});
