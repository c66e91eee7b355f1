// tetrixctl, the operators' tool, over both doors: the unix socket and mutual TLS with the admin
// certificate the daemon generated on first start.
import t from 'tap';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ctlMain, startDaemon } from '../helpers/daemon';

t.test('tetrixctl works over the unix socket and over mTLS with the generated admin certificate', async (t) => {
  const d = await startDaemon(t);
  const ctl = (...args: string[]) => spawnSync(process.execPath, [ctlMain, ...args], { encoding: 'utf8' });
  const viaSocket = ['--socket', d.socketPath];
  const viaTls = ['--address', `127.0.0.1:${d.tcpPort}`, '--pki-dir', path.join(d.stateDir, 'pki')];

  const started = ctl(...viaSocket, '--output', 'json', 'start', 'ctl-demo', '--owner', 'alice', '--', '/bin/sh', '-c', 'id -u; exec sleep 600');
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
  t.not(noCert.status, 0, 'no certificate, no access');
  const unknown = ctl(...viaSocket, 'get', 'nope');
  t.equal(unknown.status, 1);
  t.match(unknown.stderr, /NOT_FOUND/, 'errors name their status');
  t.equal(ctl(...viaSocket, 'frobnicate').status, 2, 'a usage error exits 2');
});
