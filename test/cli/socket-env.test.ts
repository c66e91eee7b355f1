// One name for the socket: tetrixd and tetrixctl both read TETRIX_SOCKET_PATH. TETRIX_SOCKET, which only
// tetrixctl read, still works for one release and says on stderr what to use instead.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { loadConfig } from '../../src/config/config';
import { ctlMain, startDaemon } from '../helpers/daemon';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-socket-env-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

/** tetrixctl list with exactly these socket variables (none inherited from the caller's shell). */
function ctl(env: Record<string, string>, args: string[] = []) {
  const base = { ...process.env };
  delete base.TETRIX_SOCKET;
  delete base.TETRIX_SOCKET_PATH;
  return spawnSync(process.execPath, [ctlMain, ...args, 'list'], { encoding: 'utf8', timeout: 60_000, env: { ...base, ...env } });
}

const unreachable = (name: string): RegExp => new RegExp(`cannot reach tetrixd at unix:${path.join(dir, name).replace(/[.]/g, '\\.')}`);

t.test('tetrixd reads the socket from TETRIX_SOCKET_PATH', async (t) => {
  t.equal(loadConfig([], { TETRIX_SOCKET_PATH: path.join(dir, 'd.sock') }).socketPath, path.join(dir, 'd.sock'));
});

t.test('tetrixctl reads the same TETRIX_SOCKET_PATH, and warns of nothing', async (t) => {
  const r = ctl({ TETRIX_SOCKET_PATH: path.join(dir, 'new.sock') });
  t.equal(r.status, 1);
  t.match(r.stderr, unreachable('new.sock'), 'it went to the socket the variable names');
  t.notMatch(r.stderr, /deprecated/);
});

t.test('TETRIX_SOCKET still works, with a warning naming TETRIX_SOCKET_PATH', async (t) => {
  const r = ctl({ TETRIX_SOCKET: path.join(dir, 'old.sock') });
  t.match(r.stderr, unreachable('old.sock'));
  t.match(r.stderr, /TETRIX_SOCKET is deprecated .*set TETRIX_SOCKET_PATH/);
});

t.test('with both set, TETRIX_SOCKET_PATH wins and the old name is said to be ignored; --socket beats both', async (t) => {
  const both = ctl({ TETRIX_SOCKET: path.join(dir, 'old.sock'), TETRIX_SOCKET_PATH: path.join(dir, 'new.sock') });
  t.match(both.stderr, unreachable('new.sock'));
  t.match(both.stderr, /TETRIX_SOCKET is ignored: TETRIX_SOCKET_PATH is set/);
  const flag = ctl({ TETRIX_SOCKET_PATH: path.join(dir, 'new.sock') }, ['--socket', path.join(dir, 'flag.sock')]);
  t.match(flag.stderr, unreachable('flag.sock'));
});

t.test('a real daemon is reached through TETRIX_SOCKET_PATH', async (t) => {
  const d = await startDaemon(t);
  const r = ctl({ TETRIX_SOCKET_PATH: d.socketPath });
  t.equal(r.status, 0, r.stderr.trim());
  t.match(r.stdout, /^ID\s+STATE/m);
  t.equal(r.stderr, '');
});
