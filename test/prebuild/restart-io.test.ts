// A daemon restart during a prebuild never makes the daemon open, as root, a path the workspace can
// write (review of December 2026, item 2): a task that swaps whatever it can find in its io directory
// for symlinks to host secrets, a directory, a regular file or a FIFO of another owner leaks nothing,
// and the prebuild ends with a clear status.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon } from '../helpers/daemon';
import { isFinalState, logChunks, logText, marker, prebuildRequest } from './daemon-fixtures';

const SWAP = String.raw`
io=/.tetrix/io
swap() { rm -rf "$io/$1" 2>/dev/null; shift; "$@" 2>/dev/null; }
swap 0.out ln -s "$HOST_SECRET" "$io/0.out"
swap 0.err ln -s "$HOST_KEK" "$io/0.err"
swap status ln -s "$HOST_SECRET" "$io/status"
swap 1.out mkdir "$io/1.out"
swap 1.err sh -c "echo planted > $io/1.err"
swap 2.out sh -c "mkfifo $io/2.out && chown 1000:1000 $io/2.out"
swap 2.err ln -s /proc/1/environ "$io/2.err"
echo swapped; touch /workspace/swapped
sleep 20
`;

t.test('after a restart, a prebuild whose task swapped its io files for symlinks and others leaks nothing and ends clearly', async (t) => {
  const d = await startDaemon(t);
  const hostSecret = path.join(d.dir, 'host-secret');
  const secret = marker('HOSTSECRET');
  fs.writeFileSync(hostSecret, `${secret}\n`, { mode: 0o600 });
  const kekName = fs.readdirSync(path.join(d.stateDir, 'keys')).find((f) => f.endsWith('.key'));
  t.ok(kekName, 'the node has a KEK file');
  const kekFile = path.join(d.stateDir, 'keys', kekName!);
  const kek = fs.readFileSync(kekFile);

  await d.start(prebuildRequest('pb-swap', [
    { name: 'swapper', script: SWAP, env: { HOST_SECRET: hostSecret, HOST_KEK: kekFile } },
    { name: 'second', script: 'echo second' },
    { name: 'third', script: 'echo third' },
  ]));
  const swapped = path.join(d.stateDir, 'workspaces', 'pb-swap', 'content', 'swapped');
  await d.waitFor('pb-swap', (w) => fs.existsSync(swapped) || isFinalState(w.state), 60_000);
  t.ok(fs.existsSync(swapped), 'the task swapped its io files');

  await d.kill9();
  await d.restart();
  const done = await d.waitFor('pb-swap', (w) => isFinalState(w.state), 90_000);
  t.equal(done.state, 'WORKSPACE_STATE_FAILED', 'the prebuild ends FAILED');
  t.match(done.message, /restart/, `saying why (${done.message})`);
  t.equal(done.failedTask, 'swapper', 'naming the task that was running');

  const log = logText(await logChunks(d, 'pb-swap'));
  t.notOk(log.includes(Buffer.from(secret)), 'the host file never reached the log');
  t.notOk(log.includes(kek) || log.includes(Buffer.from(kek.toString('hex'))) || log.includes(Buffer.from(kek.toString('base64'))), 'nor the KEK');
  t.ok((await d.list()).some((w) => w.id === 'pb-swap'), 'the daemon answers');
});
