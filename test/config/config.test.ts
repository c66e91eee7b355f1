// One validated, immutable config: defaults < file < environment < flags, and clear refusals.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { loadConfig, parseFlags, usage } from '../../src/config/config';
import { daemonMain } from '../helpers/daemon';

t.test('flags beat the environment, which beats the file, which beats the defaults', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-config-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'tetrixd.json');
  fs.writeFileSync(file, JSON.stringify({ logLevel: 'warn', stopGraceMs: 5000, nodeId: 'from-file' }));
  const c = loadConfig(['--config', file, '--node-id', 'from-flag'], { TETRIX_STOP_GRACE_MS: '7000', TETRIX_NODE_ID: 'from-env' });
  t.equal(c.logLevel, 'warn', 'file');
  t.equal(c.stopGraceMs, 7000, 'environment over file');
  t.equal(c.nodeId, 'from-flag', 'flag over environment');
  t.ok(Object.isFrozen(c), 'immutable');
  t.equal(loadConfig([], {}).stateDir, '/var/lib/tetrix', 'embedded default');
  t.equal(loadConfig([], {}).operatorIdentities, 'dns:tetrix-admin', 'operators: the DNS SAN of the generated admin certificate');
  t.equal(loadConfig([], {}).tokenMaxLifetimeSeconds, 3600, 'user tokens live at most an hour');
  const limits = loadConfig([], {});
  t.same([limits.defaultMemoryBytes, limits.defaultCpuMillis, limits.defaultPids], [Math.min(1 << 30, os.totalmem()), 1000, 4096], 'a workspace that names no limits gets 1 GiB, one core and 4096 pids');
  t.equal(loadConfig(['--operator-identities', 'uri:spiffe://tetrix.test/ops, dns:ops.tetrix.test'], {}).operatorIdentities, 'uri:spiffe://tetrix.test/ops, dns:ops.tetrix.test', 'typed names are accepted');
});

t.test('a daemon beside the main one leaves the node TCP port and network alone unless told', async (t) => {
  const main = loadConfig([], {});
  t.equal(main.apiListen, '0.0.0.0:7443');
  t.equal(main.network, 'on');
  const side = loadConfig(['--state-dir', '/tmp/tetrix-side', '--socket', '/tmp/tetrix-side.sock'], {});
  t.equal(side.socketPath, '/tmp/tetrix-side.sock', '--socket is the socket path');
  t.equal(side.apiListen, '', 'unix socket only');
  t.equal(side.network, 'off', 'no bridge or tables of its own');
  t.equal(side.defaultNetwork, 'none');
  const told = loadConfig(['--state-dir', '/tmp/tetrix-side', '--network', 'on', '--api-listen', '127.0.0.1:0'], {});
  t.equal(told.network, 'on');
  t.equal(told.apiListen, '127.0.0.1:0');
});

t.test('bad settings are refused with a message naming the setting', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['--state-dir', 'relative/dir'], /^stateDir: must be an absolute path/],
    [['--stop-grace-ms', '-1'], /^stopGraceMs: must be a non-negative integer/],
    [['--log-level', 'loud'], /^logLevel: unknown level/],
    [['--api-listen', 'nowhere'], /^apiListen: expected host:port/],
    [['--cgroup-parent', '../escape'], /^cgroupParent:/],
    [['--no-such-flag', 'x'], /^unknown flag --no-such-flag/],
    [['--network', 'maybe'], /^network:/],
    [['--backup-storage', 's3'], /s3Bucket/],
    [['--socket'], /--socket needs a value/],
    // A misspelt flag is named as unknown, even when nothing follows it (it said "needs a value").
    [['--bogus'], /^unknown flag --bogus$/],
    [['--socket', '--state-dir', '/tmp/x'], /^--socket needs a value \(one that starts with '-' is written --socket=VALUE\)/],
    [['--config'], /--config needs a value/],
    // Issue 13, item 11: operator identities are typed SAN names; a token lifetime bound is positive.
    [['--operator-identities', 'tetrix-admin'], /^operatorIdentities: "tetrix-admin" needs a name type/],
    [['--operator-identities', 'dns:tetrix-admin,cn:tetrix-admin'], /^operatorIdentities: "cn:tetrix-admin" needs a name type/],
    [['--token-max-lifetime-seconds', '0'], /^tokenMaxLifetimeSeconds: must be at least 1/],
    [['--token-max-lifetime-seconds', '1e300'], /^tokenMaxLifetimeSeconds: must be a non-negative integer/],
    // Issue 13, item 7: every workspace default is a real bound within the node's maximum.
    [['--default-memory-bytes', '0'], /^defaultMemoryBytes: must be at least 8388608/],
    [['--default-cpu-millis', '0'], /^defaultCpuMillis: must be at least 10/],
    [['--default-pids', '0'], /^defaultPids: must be at least 8/],
    [['--default-memory-bytes', String(2 ** 31), '--max-memory-bytes', String(2 ** 30)], /^defaultMemoryBytes: 2147483648 is above maxMemoryBytes \(1073741824\)/],
    [['--default-cpu-millis', '4000', '--max-cpu-millis', '2000'], /^defaultCpuMillis: 4000 is above maxCpuMillis \(2000\)/],
    [['--default-pids', '100', '--max-pids', '50'], /^defaultPids: 100 is above maxPids \(50\)/],
  ];
  for (const [argv, message] of cases) t.throws(() => loadConfig(argv, {}), { message }, argv.join(' '));
  t.throws(() => loadConfig(['--config', '/nonexistent/tetrixd.json'], {}), { message: /^config file \/nonexistent\/tetrixd\.json:/ });
});

t.test('tetrixd --help lists every setting as a flag and an environment variable, and exits 0', async (t) => {
  const res = spawnSync(process.execPath, [daemonMain, '--help'], { encoding: 'utf8' });
  t.equal(res.status, 0, res.stderr);
  t.equal(res.stdout, usage());
  t.match(res.stdout, /--state-dir\s+TETRIX_STATE_DIR/);
  t.match(res.stdout, /--api-listen\s+TETRIX_API_LISTEN/);
  const flags = res.stdout.split('\n').filter((l) => l.startsWith('  --')).map((l) => l.trim().split(/\s+/)[0]);
  t.ok(flags.length > 20, `${flags.length} settings listed`);
  for (const flag of flags) t.doesNotThrow(() => parseFlags([flag, 'x']), `${flag} is a flag the daemon takes`);
});

t.test('ptyLimit: the ptys one workspace may hold has a node default and is refused outside 1..1048576', async (t) => {
  t.equal(loadConfig([], {}).ptyLimit, 128, 'the default');
  t.equal(loadConfig(['--pty-limit', '16'], {}).ptyLimit, 16, 'a flag');
  t.equal(loadConfig([], { TETRIX_PTY_LIMIT: '32' }).ptyLimit, 32, 'the environment');
  for (const value of ['0', '1048577', 'many', '-3']) {
    t.throws(() => loadConfig(['--pty-limit', value], {}), { message: /^ptyLimit: must be/ }, value);
  }
});

t.test('the KEK source is one validated setting: state-dir, file:PATH, systemd-credential:NAME or kms:URL with token and CA', async (t) => {
  t.same(loadConfig([], {}).kek, { kind: 'state-dir' }, 'default: keys in the clear in the state dir');
  t.same(loadConfig(['--kek-source', 'file:/mnt/usb/tetrix-root.key'], {}).kek, { kind: 'file', path: '/mnt/usb/tetrix-root.key' });
  t.same(loadConfig([], { TETRIX_KEK_SOURCE: 'systemd-credential:tetrix-kek' }).kek, { kind: 'systemd-credential', name: 'tetrix-kek' }, 'as the unit sets it');
  const url = 'https://vault.internal:8200/v1/transit/keys/tetrix-node';
  t.same(loadConfig(['--kek-source', `kms:${url}`, '--kms-token-file', 'systemd-credential:vault-token', '--kms-ca-file', '/etc/tetrix/vault-ca.pem'], {}).kek, {
    kind: 'kms', url, tokenFile: { kind: 'systemd-credential', name: 'vault-token' }, caFile: '/etc/tetrix/vault-ca.pem',
  });
  const kms = ['--kek-source', `kms:${url}`];
  const cases: Array<[string[], RegExp]> = [
    [['--kek-source', 'vault'], /^kekSource: "vault" is none of state-dir, file:\/PATH, systemd-credential:NAME, kms:/],
    [['--kek-source', 'file:relative.key'], /^kekSource: must be an absolute path/],
    [['--kek-source', 'file:/var/lib/tetrix/keys/root.key'], /^kekSource: the root key file .* must not be in the state dir it protects/],
    [['--kek-source', 'systemd-credential:../etc/shadow'], /^kekSource: "\.\.\/etc\/shadow" is not a systemd credential name/],
    [['--kek-source', 'kms:http://vault:8200/v1/transit/keys/x', '--kms-token-file', '/t', '--kms-ca-file', '/c'], /^kekSource: kms: needs a Vault key URL https:/],
    [[...kms, '--kms-ca-file', '/c'], /^kmsTokenFile: kekSource kms: needs the file holding the Vault token/],
    [[...kms, '--kms-token-file', '/t'], /^kmsCaFile: kekSource kms: needs the CA certificate/],
    [[...kms, '--kms-token-file', 'token', '--kms-ca-file', '/c'], /^kmsTokenFile: must be an absolute path or systemd-credential:NAME/],
    [[...kms, '--kms-token-file', '/var/lib/tetrix/vault-token', '--kms-ca-file', '/c'], /^kmsTokenFile: .* must not be in the state dir/],
    [['--kms-token-file', '/t'], /^kmsTokenFile: only for kekSource kms:URL/],
    [['--key-file', '/etc/tetrix/kek'], /^keyFile: replaced by kekSource/],
  ];
  for (const [argv, message] of cases) t.throws(() => loadConfig(argv, {}), { message }, argv.join(' '));
});
