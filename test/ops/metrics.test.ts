// Prometheus metrics as an operator's scraper sees them: a real daemon, a real HTTP client, and
// values that move when workspaces start, stop, fail, get OOM-killed and leave leftovers behind.
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startDaemon, type Daemon } from '../helpers/daemon';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

type Samples = Map<string, number>;

/** Parses the text exposition format into "name{labels}" -> value. */
function parseExposition(text: string): Samples {
  const samples: Samples = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

const busybox = (id: string, command: string[], resources = { memoryBytes: 256 << 20, cpuMillis: 500, pids: 64 }): StartWorkspaceRequest => ({
  id,
  ownerId: 'alice',
  image: 'builtin:busybox',
  command,
  resources,
});

t.test('metrics are served on their own port and move with the lifecycle', async (t) => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const d: Daemon = await startDaemon(t, ['--metrics-listen', `127.0.0.1:${port}`]);
  const scrape = async (): Promise<Samples> => {
    const res = await fetch(`${base}/metrics`);
    t.equal(res.status, 200, 'GET /metrics answers 200');
    t.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/, 'in the Prometheus text format');
    return parseExposition(await res.text());
  };
  const value = (s: Samples, key: string): number => s.get(key) ?? NaN;

  const before = await scrape();
  for (const name of [
    'tetrix_workspace_start_seconds_count', 'tetrix_workspace_stop_seconds_count', 'tetrix_backup_seconds_count',
    'tetrix_backup_bytes_total', 'tetrix_workspace_oom_kills_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes',
  ]) {
    t.ok(before.has(name), `${name} is exposed`);
  }
  t.equal(value(before, 'tetrix_workspaces{state="RUNNING"}'), 0, 'no workspace runs yet');
  t.equal((await fetch(`${base}/`)).status, 404, 'nothing but /metrics is served');
  t.equal((await fetch(`${base}/metrics`, { method: 'POST' })).status, 405, '/metrics is read-only');

  await d.start(busybox('metrics-sleeper', ['/bin/sh', '-c', 'exec sleep 600']));
  const running = await scrape();
  t.equal(value(running, 'tetrix_workspace_start_seconds_count'), 1, 'one start latency observed');
  t.ok(value(running, 'tetrix_workspace_start_seconds_sum') > 0, 'and it took time');
  t.equal(value(running, 'tetrix_workspaces{state="RUNNING"}'), 1, 'the gauge counts it as RUNNING');

  await d.stop('metrics-sleeper', 2000);
  const stopped = await scrape();
  t.equal(value(stopped, 'tetrix_workspace_stop_seconds_count'), 1, 'one stop latency observed');
  t.equal(value(stopped, 'tetrix_workspaces{state="RUNNING"}'), 0, 'no longer RUNNING');
  t.equal(value(stopped, 'tetrix_workspaces{state="STOPPED"}'), 1, 'now STOPPED');

  await d.start(busybox('metrics-broken', ['/no/such/program'])).catch(() => undefined);
  const failed = await scrape();
  t.equal(value(failed, 'tetrix_workspace_failures_total{reason="SPAWN_FAILED"}'), 1, 'a start that failed is counted by reason');
  t.equal(value(failed, 'tetrix_workspaces{state="FAILED"}'), 1, 'and shows as FAILED');

  // 64 MiB of buffer in a 16 MiB group: the kernel's OOM killer ends it.
  await d.start(busybox('metrics-oom', ['/bin/sh', '-c', 'dd if=/dev/zero of=/dev/null bs=64M count=4'], { memoryBytes: 16 << 20, cpuMillis: 500, pids: 64 }));
  const oom = await d.waitFor('metrics-oom', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  t.equal(oom.reason, 'STOP_REASON_OOM_KILLED', 'the workload was OOM-killed');
  const afterOom = await scrape();
  t.equal(value(afterOom, 'tetrix_workspace_oom_kills_total'), 1, 'the OOM kill is counted');
  t.equal(value(afterOom, 'tetrix_workspace_failures_total{reason="OOM_KILLED"}'), 1, 'and counted as a failure');

  for (const id of ['metrics-sleeper', 'metrics-broken', 'metrics-oom']) await d.teardown(id);
  const empty = await scrape();
  for (const state of ['CREATING', 'RUNNING', 'STOPPING', 'STOPPED', 'FAILED']) {
    t.equal(value(empty, `tetrix_workspaces{state="${state}"}`), 0, `no ${state} workspace after teardown`);
  }
});

t.test('a leftover found after a restart is cleaned and counted', async (t) => {
  const port = await freePort();
  const d = await startDaemon(t, ['--metrics-listen', `127.0.0.1:${port}`]);
  await d.terminate();
  // What a crash between creating a workspace directory and recording it would leave.
  const stray = path.join(d.stateDir, 'workspaces', 'metrics-stray');
  fs.mkdirSync(path.join(stray, 'content'), { recursive: true });
  await d.restart();
  t.notOk(fs.existsSync(stray), 'the daemon removed the directory no record accounts for');
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  t.match(text, /^tetrix_leaked_resource_cleanups_total\{kind="workspace_dir"\} 1$/m, 'and counted the cleanup by kind');
});

t.test('the scrape passes promtool check metrics, with workspaces in every kind of series', async (t) => {
  const port = await freePort();
  const d = await startDaemon(t, ['--metrics-listen', `127.0.0.1:${port}`]);
  await d.start(busybox('metrics-lint', ['/bin/sh', '-c', 'exec sleep 600']));
  await d.start(busybox('metrics-lint-broken', ['/no/such/program'])).catch(() => undefined);
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const lint = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  t.equal(lint.error, undefined, 'promtool ran (Debian prometheus, from deploy/packages.txt)');
  t.equal(lint.status, 0, `promtool accepts the scrape: ${lint.stdout}${lint.stderr}`);
  for (const id of ['metrics-lint', 'metrics-lint-broken']) await d.teardown(id);
});
