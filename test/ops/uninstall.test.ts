// `tetrixd uninstall` gives the node back as Tetrix found it: run inside a test node (its own network
// namespace, so the machine's forwarding and tables stay untouched) after a daemon with the network on
// ran workspaces there and was stopped with SIGTERM, which leaves the bridge, the tables and forwarding on.
import t from 'tap';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { cgroupDirsOf, daemonMain, isAlive, mountsUnder, repoRoot, startDaemon, type Daemon } from '../helpers/daemon';
import { createTestNode, listTables, type TestNode } from '../network/fixture';
import { DAEMON_NODE_FLAGS } from '../../src/node-flags';

const run = promisify(execFile);

const sleeper = (id: string) => ({
  id,
  ownerId: 'alice',
  image: 'builtin:busybox',
  command: ['/bin/sh', '-c', 'exec sleep 600'],
  network: 'NETWORK_MODE_ISOLATED' as const,
});

function daemonArgs(d: Daemon, node: TestNode): string[] {
  return [
    '--state-dir', d.stateDir, '--socket', d.socketPath, '--cgroup-parent', d.cgroupParent,
    '--network', 'on', '--network-bridge', node.bridge, '--network-table', node.table,
    '--network-subnet', '10.88.0.0/16', '--dns-servers', '192.0.2.1',
  ];
}

async function uninstall(node: TestNode, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run('nsenter', [`--net=${node.netns}`, process.execPath, ...DAEMON_NODE_FLAGS, daemonMain, 'uninstall', ...args], { timeout: 60_000, env: { ...process.env, ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const forwarding = async (node: TestNode): Promise<string> => (await node.sh('cat /proc/sys/net/ipv4/ip_forward')).trim();
const hasLink = async (node: TestNode, name: string): Promise<boolean> => (await node.sh(`ip -o link show ${name} 2>/dev/null || true`)).trim() !== '';
const idClaimsOf = (stateDir: string): string[] =>
  fs.readdirSync('/run/tetrix/idmap').filter((f) => {
    try {
      return (JSON.parse(fs.readFileSync(`/run/tetrix/idmap/${f}`, 'utf8')) as { stateDir?: string }).stateDir === stateDir;
    } catch {
      return false;
    }
  });

t.test('uninstall refuses while workspaces run, then with --force removes everything and restores forwarding', async (t) => {
  const node = await createTestNode(t);
  t.equal(await forwarding(node), '0', 'forwarding is off in the fresh node, as on a fresh machine');
  const tablesBefore = await listTables(node);
  const d = await startDaemon(t, ['--network', 'on', '--network-bridge', node.bridge, '--network-table', node.table, '--network-subnet', '10.88.0.0/16', '--dns-servers', '192.0.2.1'], { netns: node.netns });
  await d.start(sleeper('uninstall-a'));
  await d.start(sleeper('uninstall-b'));
  await d.stop('uninstall-b', 0);
  const pid = (await d.get('uninstall-a')).pid;
  await d.terminate();
  t.equal(await forwarding(node), '1', 'after SIGTERM forwarding is still on');
  t.ok(await hasLink(node, node.bridge), 'and the bridge is still there');
  t.match(await listTables(node), node.table, 'and so are the tables');

  const refused = await uninstall(node, daemonArgs(d, node));
  t.equal(refused.code, 1, 'uninstall refuses while a workspace runs');
  t.match(refused.stderr, /1 workspace\(s\) still run \(uninstall-a\).*--force/, 'naming it and the way out');
  t.ok(fs.existsSync(d.stateDir), 'and removed nothing');
  t.ok(fs.existsSync(`/proc/${pid}`), 'the workspace still runs');

  const done = await uninstall(node, [...daemonArgs(d, node), '--force']);
  t.equal(done.code, 0, `uninstall --force succeeds: ${done.stderr}`);
  t.match(done.stdout, 'ipv4 forwarding restored to 0', 'it says what it restored');
  t.equal(await forwarding(node), '0', 'forwarding is back to what it was');
  t.notOk(await hasLink(node, node.bridge), 'the bridge is gone');
  t.equal(await listTables(node), tablesBefore, 'the tables are as before');
  t.notOk(fs.existsSync(d.stateDir), 'the state dir (keys, PKI, records) is gone');
  t.notOk(fs.existsSync(d.socketPath), 'and the socket');
  t.same(cgroupDirsOf(d.cgroupParent), [], 'no cgroup is left');
  t.same(idClaimsOf(d.stateDir), [], 'no uid-range claim is left');
  t.notOk(isAlive(pid), 'the workspace process was killed');
  t.same(mountsUnder(d.dir), [], 'no mount is left');
});

t.test('uninstall refuses while its daemon runs, naming the pid', async (t) => {
  const node = await createTestNode(t);
  const d = await startDaemon(t, [], { netns: node.netns });
  const r = await uninstall(node, ['--state-dir', d.stateDir, '--socket', d.socketPath, '--cgroup-parent', d.cgroupParent, '--network', 'off']);
  t.equal(r.code, 1, 'uninstall exits 1');
  t.match(r.stderr, `(pid ${d.process.pid})`, 'naming the daemon that serves');
  t.ok(fs.existsSync(d.stateDir), 'and removed nothing');
  t.same(await d.list(), [], 'the daemon still answers');
});

t.test('uninstall removes the command wrappers install.sh wrote for this checkout, and nothing else in that directory', async (t) => {
  const node = await createTestNode(t);
  const binDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-bin-'));
  t.teardown(() => fs.rmSync(binDir, { recursive: true, force: true }));
  await run('bash', [path.join(repoRoot, 'deploy', 'install.sh'), '--wrappers-only'], { env: { ...process.env, TETRIX_BIN_DIR: binDir } });
  t.match(fs.readFileSync(path.join(binDir, 'tetrixctl'), 'utf8'), `# Written by ${repoRoot}/deploy/install.sh:`, 'install.sh wrote the wrappers');
  const foreign = '#!/bin/sh\n# Written by /opt/other-checkout/deploy/install.sh: another checkout\nexit 0\n';
  fs.writeFileSync(path.join(binDir, 'tetrixd'), foreign, { mode: 0o755 });
  fs.writeFileSync(path.join(binDir, 'unrelated'), 'someone else\n');
  const d = await startDaemon(t, [], { netns: node.netns });
  await d.terminate();
  const r = await uninstall(node, ['--state-dir', d.stateDir, '--socket', d.socketPath, '--cgroup-parent', d.cgroupParent, '--network', 'off'], { TETRIX_BIN_DIR: binDir });
  t.equal(r.code, 0, `uninstall succeeds: ${r.stderr}`);
  t.match(r.stdout, `removed ${path.join(binDir, 'tetrixctl')}`, 'it says it removed the wrapper');
  t.notOk(fs.existsSync(path.join(binDir, 'tetrixctl')), "this checkout's tetrixctl wrapper is gone");
  t.equal(fs.readFileSync(path.join(binDir, 'tetrixd'), 'utf8'), foreign, "another checkout's tetrixd is left as it was");
  t.equal(fs.readFileSync(path.join(binDir, 'unrelated'), 'utf8'), 'someone else\n', 'and so is any other file');
  t.notOk(fs.existsSync(d.stateDir), 'the state dir is gone');
});
