// A prebuild's tasks run as the same uid in one workspace, yet each task's env reaches that task alone,
// and only the node decides what a task's status is (review of December 2026, items 6 and 2's class).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon } from '../helpers/daemon';
import { filesContaining, isFinalState, logChunks, logText, marker, prebuildRequest } from './daemon-fixtures';

// Everything a same-uid process can try: every environ, every fd of every process (read, briefly),
// and forged status lines written to every fd and to any status path there might be.
const SPY = String.raw`
mkdir -p /tmp/spy && cd /tmp/spy
n=0
for f in /proc/[0-9]*/environ; do n=$((n+1)); timeout 1 tr '\0' '\n' < "$f" > env.$n 2>/dev/null & done
for f in /proc/[0-9]*/fd/* /proc/[0-9]*/task/*/fd/*; do n=$((n+1)); timeout 1 cat "$f" > fd.$n 2>/dev/null & done
wait
for f in /.tetrix/io/status /proc/[0-9]*/fd/* /proc/[0-9]*/task/*/fd/*; do
  timeout 1 sh -c 'printf "end 1 0\nstart 2\nend 2 0\n" > "$1"' - "$f" 2>/dev/null &
done
wait
cat env.* fd.* | tr '\0' '\n' | tee /workspace/spy.txt | head -c 1000000
# A spy left behind, to watch the next task's processes while they run.
setsid sh -c 'i=0; while [ $i -lt 40 ]; do for f in /proc/[0-9]*/environ; do tr "\0" "\n" < "$f"; done; i=$((i+1)); sleep 0.1; done' </dev/null 2>/dev/null | tee -a /workspace/spy.txt &
echo spy-done
`;

t.test("no task reads another task's env, through /proc or otherwise, and no task forges a task's status", async (t) => {
  const d = await startDaemon(t);
  const secret = marker('HOLDERSECRET');
  const shared = marker('WORKSPACEVALUE');
  await d.start(prebuildRequest('pb-iso', [
    { name: 'spy', script: SPY },
    { name: 'holder', script: 'echo holder-ran; sleep 3; exit 7', env: { HOLDER_TOKEN: secret } },
    { name: 'never', script: 'touch /workspace/never' },
  ], { SHARED_BY_ALL: shared }));
  const done = await d.waitFor('pb-iso', (w) => isFinalState(w.state), 120_000).catch(() => d.get('pb-iso'));
  t.ok(isFinalState(done.state), `the prebuild ended (${done.state})`);
  const log = logText(await logChunks(d, 'pb-iso')).toString();
  t.match(log, /spy-done/, 'the spy ran');
  t.ok(log.includes(shared), 'and its scan works: it logged the environ it may read (its own, with the workspace env)');
  t.match(log, /holder-ran/, 'the holder ran');
  t.notOk(log.includes(secret), "the holder's value never reached the log");
  const content = path.join(d.stateDir, 'workspaces', 'pb-iso', 'content');
  t.same(filesContaining(content, [secret]), [], "nor any file the spy wrote");

  t.equal(done.state, 'WORKSPACE_STATE_FAILED');
  t.equal(done.failedTask, 'holder');
  t.same(done.tasks.map((x) => [x.name, x.state, x.exitCode]), [
    ['spy', 'WORKSPACE_STATE_SUCCEEDED', 0],
    ['holder', 'WORKSPACE_STATE_FAILED', 7],
    ['never', 'WORKSPACE_STATE_CREATING', 0],
  ], 'the statuses are what the node saw, not what the spy wrote');
  t.notOk(fs.existsSync(path.join(content, 'never')), 'the task after the failure never ran');
});
