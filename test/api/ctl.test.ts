// tetrixctl, the operators' tool, over both doors: the unix socket and mutual TLS with the admin
// certificate the daemon generated on first start. Every test runs the real CLI against a real daemon.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ctlMain, daemonMain, repoRoot, startDaemon, type Daemon } from '../helpers/daemon';

const run = (args: string[], opts: { timeout?: number } = {}) =>
  spawnSync(process.execPath, [ctlMain, ...args], { encoding: 'utf8', timeout: opts.timeout ?? 120_000 });
const viaSocket = (d: Daemon): string[] => ['--socket', d.socketPath];

t.test('tetrixctl works over the unix socket and over mTLS with the generated admin certificate', async (t) => {
  const d = await startDaemon(t);
  const ctl = (...args: string[]) => run(args);
  const viaTls = ['--address', `127.0.0.1:${d.tcpPort}`, '--pki-dir', path.join(d.stateDir, 'pki')];

  const started = ctl(...viaSocket(d), '--output', 'json', 'start', 'ctl-demo', '--owner', 'alice', '--', '/bin/sh', '-c', 'id -u; exec sleep 600');
  t.equal(started.status, 0, `start over the socket (${started.stderr.trim()})`);
  t.equal((JSON.parse(started.stdout) as { state: string }).state, 'WORKSPACE_STATE_RUNNING');

  const listed = ctl(...viaTls, 'list');
  t.equal(listed.status, 0, `list over mTLS (${listed.stderr.trim()})`);
  t.match(listed.stdout, /^ID\s+STATE/m, 'a table for people');
  t.match(listed.stdout, /ctl-demo\s+RUNNING\s+alice/);

  const got = ctl(...viaTls, '--output', 'json', 'get', 'ctl-demo');
  t.equal((JSON.parse(got.stdout) as { id: string }).id, 'ctl-demo', 'JSON for scripts');

  const stopped = ctl(...viaTls, 'stop', 'ctl-demo', '--grace', '1');
  t.equal(stopped.status, 0);
  t.match(stopped.stdout, /STOPPED/);
  t.equal(ctl(...viaTls, 'logs', 'ctl-demo').stdout, '0\n', 'logs over mTLS');
  t.match(ctl(...viaTls, 'teardown', 'ctl-demo').stdout, /ctl-demo torn down/);

  const noCert = ctl('--address', `127.0.0.1:${d.tcpPort}`, '--pki-dir', path.join(d.dir, 'nowhere'), 'list');
  t.equal(noCert.status, 1, 'no certificate, no access');
  t.notMatch(noCert.stderr, /undefined/, 'the error is a sentence, not "undefined: undefined"');
  t.match(noCert.stderr, new RegExp(`admin certificate.*${path.join(d.dir, 'nowhere')}/ca\\.crt does not exist.*--pki-dir`), 'it names the missing file and the flag');
  const noDaemon = ctl('--socket', path.join(d.dir, 'no-such.sock'), 'list');
  t.equal(noDaemon.status, 1);
  t.match(noDaemon.stderr, /cannot reach tetrixd at unix:.*no-such\.sock/, 'an unreachable daemon is named');
  const unknown = ctl(...viaSocket(d), 'get', 'nope');
  t.equal(unknown.status, 1);
  t.match(unknown.stderr, /NOT_FOUND/, 'errors name their status');
  t.equal(ctl(...viaSocket(d), 'frobnicate').status, 2, 'a usage error exits 2');
});

t.test('tetrixctl refuses what it does not understand: exit 2, naming the flag, and nothing is started', async (t) => {
  const d = await startDaemon(t);
  const refused: [string[], RegExp][] = [
    [['start', 'typo', '--imgae', 'ubuntu', '--memroy', '1G', '--', 'sleep', '100'], /unknown flag --imgae \(did you mean --image\?\)/],
    [['start', 'typo', '--memory', '1Q', '--', 'true'], /--memory: "1Q" is not a size/],
    [['start', 'typo', '--cpu', '0.5', '--', 'true'], /--cpu: "0\.5" is not millicores.*--cpus 0\.5/],
    [['start', 'typo', '--cpus', 'half', '--', 'true'], /--cpus: "half" is not a number of cores/],
    [['start', 'typo', '--pids', 'abc', '--', 'true'], /--pids: "abc" is not a whole number/],
    [['start', 'typo', '--network', 'bridge', '--', 'true'], /--network: "bridge" is not one of none, isolated/],
    [['start', 'typo', '--port', '70000', '--', 'true'], /--port: 70000 is outside 1-65535/],
    [['start', 'typo', 'extra', '--', 'true'], /unexpected argument "extra"/],
    [['start', '--', 'true'], /start needs ID/],
    [['stop', 'typo', '--grace', 'abc'], /--grace: "abc" is not a duration/],
    [['stop', 'typo', '--grace=-5'], /--grace: "-5" is not a duration/],
    [['stop', 'typo', '--grace', '-5'], /--grace needs a value/],
    [['stop', 'typo', '--grace', '2h'], /--grace: 2h is longer than an hour/],
    [['logs', 'typo', '--tail', 'many'], /--tail: "many" is not a whole number/],
    [['logs', 'typo', '--timestamps=yes'], /--timestamps is a switch and takes no value/],
    [['list', '--ownr', 'alice'], /unknown flag --ownr/],
    [['--output', 'yaml', 'list'], /--output: "yaml" is not one of table, json/],
    [['--sockt', d.socketPath, 'list'], /unknown flag --sockt \(did you mean --socket\?\)/],
    [['exex', 'typo', '--help'], /unknown command "exex" \(did you mean exec\?\)/],
    [['exec', 'typo', '--session', '--', 'sh'], /exec: --session needs -t/],
    [['exec', 'typo'], /exec needs a program after --/],
    [['frobnicate'], /unknown command "frobnicate"/],
    [['start', 'typo', '--memory', '1.5', '--', 'true'], /--memory: "1\.5" is not a whole number of bytes/],
    // A switch of another form of the command: `backup ID --dry-run` stored a real backup.
    [['backup', 'typo', '--dry-run'], /backup ID: --dry-run goes with backup prune/],
    [['backup', 'prune', '--include-upper'], /backup prune: --include-upper goes with backup ID/],
    [['backup', 'check', '--dry-run'], /backup check: --dry-run goes with backup prune/],
    // A flag for the other door would be unused: the socket was asked, not the certificate's TCP port.
    [['--pki-dir', '/nowhere', 'list'], /--pki-dir goes with --address/],
    [['--address', '127.0.0.1:7443', 'list'], /--socket and --address name two ways to the daemon/],
  ];
  for (const [args, message] of refused) {
    const r = run([...viaSocket(d), ...args]);
    t.equal(r.status, 2, `${args.join(' ')}: exit 2`);
    t.match(r.stderr, message, `${args.join(' ')}: ${r.stderr.split('\n')[0]}`);
    t.match(r.stderr, /See 'tetrixctl .*--help'/, 'and where the usage is');
    t.equal(r.stdout, '', 'nothing on stdout');
  }
  t.same(await d.list(), [], 'no workspace was started by any of them');
});

t.test('per-command help prints that command\'s usage and exits 0; tetrixd --version prints the version', async (t) => {
  for (const args of [['stop', '--help'], ['help', 'stop'], ['stop', '-h']]) {
    const r = run(args);
    t.equal(r.status, 0, `${args.join(' ')}: exit 0`);
    t.match(r.stdout, /^usage: tetrixctl \[global flags\] stop ID/, 'stop\'s usage');
    t.match(r.stdout, /--grace DURATION/);
    t.notMatch(r.stdout, /^commands:/m, 'not the general help');
  }
  // exec's own flags come before the program, so its --help is exec's, not the general help.
  const exec = run(['exec', '--help']);
  t.equal(exec.status, 0, 'exec --help: exit 0');
  t.match(exec.stdout, /^usage: tetrixctl \[global flags\] exec ID/, "exec's usage");
  t.match(exec.stdout, /--interactive/);
  t.notMatch(exec.stdout, /^commands:/m, 'not the general help');
  const general = run(['--help']);
  t.equal(general.status, 0);
  t.match(general.stdout, /^commands:/m);
  const version = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
  const tetrixd = spawnSync(process.execPath, [daemonMain, '--version'], { encoding: 'utf8' });
  t.equal(tetrixd.status, 0, `tetrixd --version (${tetrixd.stderr.trim()})`);
  t.equal(tetrixd.stdout, `tetrixd ${version.version}\n`);
  t.equal(run(['--version']).stdout, `tetrixctl ${version.version}\n`);
});

t.test('flags that take values are honoured: sizes, cores, millicores, grace 0, tail and timestamps', async (t) => {
  // A node default grace of an hour: `--grace 0` must not fall back to it.
  const d = await startDaemon(t, ['--stop-grace-ms', '3600000']);
  const ctl = (...args: string[]) => run([...viaSocket(d), ...args]);
  const started = ctl('--output', 'json', 'start', 'limits', '--memory', '64M', '--cpus', '0.5', '--pids', '100', '--network', 'none',
    '--', 'sh', '-c', 'trap "" TERM; while :; do sleep 1; done');
  t.equal(started.status, 0, started.stderr);
  const w = JSON.parse(started.stdout) as { resources: { memoryBytes: string; cpuMillis: string; pids: string }; network: string };
  // disk_bytes 0: this node has no volumes (storageBackend none), so no disk limit is in force.
  t.same(w.resources, { memoryBytes: String(64 << 20), cpuMillis: '500', pids: '100', diskBytes: '0', diskInodes: '0' }, '--memory 64M, --cpus 0.5, --pids 100');
  t.equal(w.network, 'NETWORK_MODE_NONE');
  const milli = ctl('--output', 'json', 'start', 'milli', '--cpu', '250m', '--memory', '1.5G', '--', 'true');
  t.equal(milli.status, 0, milli.stderr);
  t.match(JSON.parse(milli.stdout), { resources: { cpuMillis: '250', memoryBytes: String(1.5 * 2 ** 30) } }, '--cpu 250m, --memory 1.5G');

  // The workload ignores SIGTERM: only an immediate SIGKILL ends it before the node's hour.
  const stopped = run([...viaSocket(d), '--output', 'json', 'stop', 'limits', '--grace', '0'], { timeout: 60_000 });
  t.equal(stopped.status, 0, `stop --grace 0 returned (${stopped.stderr.trim()})`);
  t.match(JSON.parse(stopped.stdout || '{}'), { state: 'WORKSPACE_STATE_STOPPED', signal: 'SIGKILL' });

  t.equal(ctl('start', 'talk', '--', 'sh', '-c', 'echo one; echo two; echo three').status, 0);
  await d.waitFor('talk', (x) => x.state === 'WORKSPACE_STATE_STOPPED');
  const tail = ctl('logs', 'talk', '--tail', '1');
  t.equal(tail.status, 0, tail.stderr);
  t.equal(tail.stdout, 'three\n', '--tail 1: the last line only');
  const stamped = ctl('logs', 'talk', '--timestamps');
  t.equal(stamped.status, 0, stamped.stderr);
  t.match(stamped.stdout, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z one\n\S+ two\n\S+ three\n$/, 'each line starts with its time');
});

t.test('output written to a pipe is complete when tetrixctl exits', async (t) => {
  const d = await startDaemon(t);
  // Records of ~4 KiB each, 160 KiB in all: well past a pipe's 64 KiB, so most of it is still queued when
  // the last write returns.
  const filler = 'x'.repeat(4000);
  const ids = Array.from({ length: 40 }, (_, i) => `pipe-${i}`);
  for (const id of ids) await d.start({ id, image: 'builtin:busybox', ownerId: 'alice', command: ['true', filler] });
  const cmd = `"${process.execPath}" "${ctlMain}" --socket "${d.socketPath}" --output json list; echo "exit $?" >&2`;
  // A reader that starts late, as a busy jq does.
  const r = spawnSync('sh', ['-c', `{ ${cmd}; } | (sleep 1; jq -r .id) | sort`], { encoding: 'utf8', timeout: 120_000 });
  t.match(r.stderr, /exit 0/);
  const got = r.stdout.split('\n').filter(Boolean);
  t.equal(got.length, ids.length, `every record reached the reader (${got.length} of ${ids.length})`);
  t.ok(got.every((id) => ids.includes(id)), 'as whole records');
});

t.test('each command says what it did, with an exit code a script can rely on', async (t) => {
  const d = await startDaemon(t);
  const ctl = (...args: string[]) => run([...viaSocket(d), ...args]);
  t.equal(ctl('start', 'ended', '--', 'true').status, 0);
  await d.waitFor('ended', (x) => x.state === 'WORKSPACE_STATE_STOPPED');
  const stopAgain = ctl('stop', 'ended');
  t.equal(stopAgain.status, 0, 'stopping a workspace that already ended succeeds');
  t.match(stopAgain.stderr, /workspace ended was already STOPPED; nothing was stopped/, 'and says nothing was done');
  t.match(stopAgain.stdout, /ended\s+STOPPED/);
  t.equal(ctl('stop', 'nosuch').status, 1, 'stop of an unknown id exits 1');

  const gone = ctl('teardown', 'nosuch');
  t.equal(gone.status, 1, 'teardown of an unknown id exits 1, as docker rm does');
  t.match(gone.stderr, /no such workspace: nosuch/);

  const spec = ['start', 'same', '--owner', 'alice', '--', 'sleep', '600'];
  t.equal(ctl(...spec).status, 0);
  const again = ctl(...spec);
  t.equal(again.status, 0, 'an identical repeat succeeds');
  t.match(again.stderr, /workspace same already exists with this spec \(RUNNING\); nothing was started/);
  const other = ctl('start', 'same', '--owner', 'alice', '--memory', '64M', '--', 'sleep', '600');
  t.equal(other.status, 1, 'a conflicting repeat fails');
  t.match(other.stderr, /ALREADY_EXISTS: workspace "same" exists with a different spec: spec\.resources\.memory_bytes differs/);
  const argv = ctl('start', 'same', '--owner', 'alice', '--', 'sleep', '601');
  t.match(argv.stderr, /spec\.command\[1\] differs/);
  t.equal(ctl('start', 'secret', '--env', 'TOKEN=first-value', '--', 'sleep', '600').status, 0);
  const env = ctl('start', 'secret', '--env', 'TOKEN=second-value', '--', 'sleep', '600');
  t.match(env.stderr, /spec\.env differs/, 'an env difference names only the field');
  t.notMatch(env.stderr, /value/, 'never a value');

  const first = ctl('start', 'broken', '--', '/nonexistent');
  t.equal(first.status, 1, 'a start that fails exits 1');
  t.match(first.stderr, /FAILED_PRECONDITION: command: \/nonexistent cannot run in the image \(execve: ENOENT\)/, 'a missing program is the request\'s fault, named');
  const repeat = ctl('start', 'broken', '--', '/nonexistent');
  t.equal(repeat.status, 1, 'so does its repeat, which returns the FAILED workspace');
  t.match(repeat.stdout, /broken\s+FAILED/);
  t.match(repeat.stderr, /workspace broken already exists and FAILED \(execve: ENOENT\); nothing was started/);
  t.equal(ctl('teardown', 'broken').status, 0);
});

t.test('backup: the first progress carries the total; a terminal shows throughput and time left', async (t) => {
  const d = await startDaemon(t);
  // Enough content that the walk takes longer than the runner's first progress tick.
  const fill = 'dd if=/dev/urandom of=big bs=1M count=64 2>/dev/null; i=0; while [ $i -lt 2000 ]; do echo $i > f$i; i=$((i+1)); done';
  t.equal(run([...viaSocket(d), 'start', 'full', '--', 'sh', '-c', fill]).status, 0);
  await d.waitFor('full', (w) => w.state === 'WORKSPACE_STATE_STOPPED', 120_000);
  const json = run([...viaSocket(d), '--output', 'json', 'backup', 'full']);
  t.equal(json.status, 0, json.stderr);
  const lines = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { progress?: { bytesTotal: string; bytesDone: string } });
  const firstProgress = lines.find((l) => l.progress)!.progress!;
  t.ok(Number(firstProgress.bytesTotal) >= 64 << 20, `the first progress message has the total (${firstProgress.bytesTotal})`);

  // A real terminal for the bar: script(1) gives tetrixctl a pty.
  const tty = spawnSync('script', ['-qec', `"${process.execPath}" "${ctlMain}" --socket "${d.socketPath}" backup full`, '/dev/null'], { encoding: 'utf8', timeout: 120_000 });
  t.equal(tty.status, 0, tty.stderr);
  t.match(tty.stdout, /\[[#.]{25}\]\s+\d+%\s+[\d.]+ MiB \/ [\d.]+ MiB\s+\d+ files\s+[\d.]+ MiB\/s\s+\d+:\d\d left/, 'share, bytes, rate and time left');
  t.match(tty.stdout, /backup \S+: [\d.]+ MiB stored/);
});

t.test('the install puts tetrixd and tetrixctl on PATH, usable from any directory', async (t) => {
  const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-bin-'));
  t.teardown(() => fs.rmSync(bin, { recursive: true, force: true }));
  const script = path.join(repoRoot, 'deploy', 'install.sh');
  // A script without the flag would run the whole install (npm ci) instead: never run that from a test.
  if (!fs.readFileSync(script, 'utf8').includes('"--wrappers-only"')) return t.fail('install.sh has no --wrappers-only');
  const install = () => spawnSync('bash', [script, '--wrappers-only'], { encoding: 'utf8', env: { ...process.env, TETRIX_BIN_DIR: bin } });
  const first = install();
  t.equal(first.status, 0, first.stderr);
  const written = fs.readFileSync(path.join(bin, 'tetrixd'), 'utf8');
  t.match(written, /--max-semi-space-size=4 --heap-growing-percent=20 /, 'the daemon runs with its node flags');
  const second = install();
  t.equal(second.status, 0);
  t.equal(second.stdout, '', 'a second run changes nothing');
  const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-elsewhere-'));
  t.teardown(() => fs.rmSync(elsewhere, { recursive: true, force: true }));
  const env = { ...process.env, PATH: `${bin}:/usr/bin:/bin` };
  const help = spawnSync('tetrixctl', ['--help'], { cwd: elsewhere, encoding: 'utf8', env });
  t.equal(help.status, 0, `tetrixctl --help outside the checkout (${help.stderr})`);
  t.match(help.stdout, /^usage: tetrixctl/);
  const d = spawnSync('tetrixd', ['--version'], { cwd: elsewhere, encoding: 'utf8', env });
  t.match(d.stdout, /^tetrixd \d+\.\d+\.\d+\n$/);
});
