// The escape battery's storage probe (test/security/battery.c, issue 19) inside a workspace whose
// /workspace is an encrypted volume: the workload cannot take its volume's key out of the kernel.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { contentDir, waitForMarker } from '../content/daemon-backup-fixture';
import { startStorageDaemon } from './daemon-fixture';

t.test('a workload cannot remove its volume key from the kernel', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-storage-battery-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'images', 'battery');
  for (const sub of ['bin', 'dev', 'proc', 'sys', 'tmp', 'etc', 'workspace']) fs.mkdirSync(path.join(root, sub), { recursive: true });
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  for (const applet of ['sh', 'sleep', 'touch']) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
  execFileSync('gcc', ['-static', '-O2', '-o', path.join(root, 'battery'), path.join(__dirname, '..', 'security', 'battery.c')]);
  const d = await startStorageDaemon(t, ['--images-dir', path.join(dir, 'images')]);
  await d.start({
    id: 'battery-volume', ownerId: 'mallory', image: 'battery',
    command: ['/bin/sh', '-c', '/battery volume_key_removal > /workspace/report; touch /workspace/done; while :; do sleep 1; done'],
    resources: { memoryBytes: 64 << 20, cpuMillis: 500, pids: 32 },
  });
  await waitForMarker(d, 'battery-volume', 'done', 60_000);
  const report = fs.readFileSync(path.join(contentDir(d, 'battery-volume'), 'report'), 'utf8');
  t.match(report, /^PROBE volume_key_removal blocked .*the key stays present/m, report.trim());
  t.notMatch(report, /not on an encrypted volume/, 'the probe ran against a real encrypted volume');
  await d.teardown('battery-volume');
});
