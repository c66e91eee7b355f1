// Daemons side by side on one node, as an operator runs them following the README: each owns its own
// cgroup parent, socket and names, and no start, restart or crash of one ever touches the other's workspaces.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { daemonMain, isAlive, startDaemon, type Daemon } from '../helpers/daemon';
import { DAEMON_NODE_FLAGS } from '../../src/node-flags';
import { createTestNode } from '../network/fixture';

const sleeper = (id: string) => ({ id, ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'] });

/** Runs a daemon that is expected to refuse to start: its exit code and what it said. */
async function refusedDaemon(args: string[], netns?: string): Promise<{ code: number | null; stderr: string }> {
  const argv = [process.execPath, ...DAEMON_NODE_FLAGS, daemonMain, '--log-level', 'debug', ...args];
  const [cmd, ...rest] = netns ? ['nsenter', `--net=${netns}`, ...argv] : argv;
  const child = spawn(cmd!, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  child.stdout.resume();
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  return { code, stderr };
}

/** The claims in /run/tetrix/owners held for a state dir. */
const claimsOf = (stateDir: string): string[] =>
  fs.readdirSync('/run/tetrix/owners').filter((f) => {
    try {
      return (JSON.parse(fs.readFileSync(path.join('/run/tetrix/owners', f), 'utf8')) as { stateDir?: string }).stateDir === stateDir;
    } catch {
      return false;
    }
  });

async function runningPids(d: Daemon, ids: string[]): Promise<number[]> {
  const pids: number[] = [];
  for (const id of ids) {
    const w = await d.get(id);
    if (w.state !== 'WORKSPACE_STATE_RUNNING') throw new Error(`${id} is ${w.state}`);
    pids.push(w.pid);
  }
  return pids;
}

t.test('two daemons started the README way keep their workspaces through each other\'s kill -9 restarts', async (t) => {
  const a = await startDaemon(t, [], { derivedCgroupParent: true });
  const b = await startDaemon(t, [], { derivedCgroupParent: true });
  t.not(a.cgroupParent, b.cgroupParent, 'each daemon has a cgroup parent of its own, derived from its state dir');
  const aIds = ['side-a1', 'side-a2'];
  const bIds = ['side-b1'];
  for (const id of aIds) await a.start(sleeper(id));
  for (const id of bIds) await b.start(sleeper(id));
  const aPids = await runningPids(a, aIds);
  const bPids = await runningPids(b, bIds);

  for (let round = 0; round < 3; round++) {
    await b.kill9();
    await b.restart();
    t.same(await runningPids(b, bIds), bPids, `round ${round}: the restarted daemon adopted its own workspace`);
    t.same(await runningPids(a, aIds), aPids, `round ${round}: the other daemon's workspaces run on, same pids`);
    t.ok(aPids.every(isAlive), `round ${round}: and their processes are alive`);
    t.notOk(b.output.some((l) => l.includes('removing a cgroup no workspace accounts for')), `round ${round}: nothing was swept`);
  }
  await a.kill9();
  await a.restart();
  t.same(await runningPids(b, bIds), bPids, 'a restart of the first daemon leaves the second one\'s workspace alone too');
  for (const id of aIds) await a.teardown(id);
  for (const id of bIds) await b.teardown(id);
});

t.test('a daemon given the cgroup parent of another state dir refuses to start, naming it', async (t) => {
  const a = await startDaemon(t);
  await a.start(sleeper('side-owner'));
  const [pid] = await runningPids(a, ['side-owner']);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = await refusedDaemon(['--state-dir', path.join(dir, 'state'), '--socket', path.join(dir, 's.sock'), '--cgroup-parent', a.cgroupParent]);
  t.equal(r.code, 1, 'the second daemon exits 1');
  t.match(r.stderr, `cgroup-parent "${a.cgroupParent}" belongs to the tetrixd of state dir ${a.stateDir}`, 'and names the owner');
  t.match(r.stderr, '--cgroup-parent', 'and the flag that picks another');
  t.same(claimsOf(path.join(dir, 'state')), [], 'it claimed nothing');
  t.same(await runningPids(a, ['side-owner']), [pid], 'the owner\'s workspace runs on');
  t.ok(isAlive(pid));
  await a.teardown('side-owner');
});

t.test('a daemon given the socket of a live daemon refuses, naming its pid, and the first stays reachable', async (t) => {
  const a = await startDaemon(t);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = await refusedDaemon(['--state-dir', path.join(dir, 'state'), '--socket', a.socketPath]);
  t.equal(r.code, 1, 'the second daemon exits 1');
  t.match(r.stderr, `socket ${a.socketPath} is served by another process (pid ${a.process.pid})`, 'naming the pid that serves it');
  t.notOk(r.stderr.includes('tetrixd serving'), 'it never served');
  t.ok(fs.existsSync(a.socketPath), 'the socket is still there');
  t.same(await a.list(), [], 'and the first daemon still answers on it');
});

t.test('a second daemon refuses an IPv6 subnet the first one uses, even with an IPv4 subnet of its own', async (t) => {
  const node = await createTestNode(t);
  const a = await startDaemon(t, ['--network', 'on', '--network-subnet', '10.89.0.0/16', '--network-subnet6', 'fd00:7e7a:89::/64', '--dns-servers', '192.0.2.1',
    '--network-bridge', node.bridge, '--network-table', node.table], { netns: node.netns });
  await a.start({ ...sleeper('side-net6'), network: 'NETWORK_MODE_ISOLATED' });
  const [pid] = await runningPids(a, ['side-net6']);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // A /56 that holds the first daemon's /64: the routes would overlap as well.
  const r = await refusedDaemon(['--state-dir', path.join(dir, 'state'), '--socket', path.join(dir, 's.sock'), '--cgroup-parent', `${a.cgroupParent}-b`,
    '--network', 'on', '--network-subnet', '10.90.0.0/16', '--network-subnet6', 'fd00:7e7a:89::/56', '--dns-servers', '192.0.2.1',
    '--network-bridge', `${node.bridge.slice(0, 13)}b2`, '--network-table', `${node.table}_b`], node.netns);
  t.equal(r.code, 1, 'the second daemon exits 1');
  t.match(r.stderr, `subnet fd00:7e7a:89::/56 overlaps fd00:7e7a:89::1/64 on ${node.bridge}`, 'naming the link and address that has it');
  t.match(r.stderr, '--network-subnet6', 'and the flag that picks another');
  t.notOk((await node.sh('ip -o link show')).includes(`${node.bridge.slice(0, 13)}b2`), 'it made no bridge');
  t.same(claimsOf(path.join(dir, 'state')), [], 'and gave back the names it had claimed');
  t.same(await runningPids(a, ['side-net6']), [pid], "the first daemon's workspace runs on");
  await a.teardown('side-net6');
});

t.test('grpc.health.v1 answers for the server and for each service by name', async (t) => {
  const d = await startDaemon(t);
  const Health = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
  const client = new Health(`unix:${d.socketPath}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void;
  };
  t.teardown(() => client.close());
  const check = (service: string): Promise<string> =>
    new Promise((resolve) => client.check({ service }, (err, res) => resolve(err ? `error ${err.code}` : res!.status)));
  for (const service of ['', ...['WorkspaceService', 'NodeService', 'ExecService', 'ImageService', 'BackupService'].map((s) => `tetrix.agent.v1.${s}`)]) {
    t.equal(await check(service), 'SERVING', `"${service}" is SERVING`);
  }
  t.equal(await check('tetrix.agent.v1.NoSuchService'), `error ${grpc.status.NOT_FOUND}`, 'an unknown service is NOT_FOUND');
});

t.test('a second daemon with the network on in the same namespace refuses a subnet the first one uses', async (t) => {
  const node = await createTestNode(t);
  const network = ['--network', 'on', '--network-subnet', '10.88.0.0/16', '--dns-servers', '192.0.2.1'];
  const a = await startDaemon(t, [...network, '--network-bridge', node.bridge, '--network-table', node.table], { netns: node.netns });
  await a.start({ ...sleeper('side-net'), network: 'NETWORK_MODE_ISOLATED' });
  const [pid] = await runningPids(a, ['side-net']);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // Its own bridge and tables, but the first one's subnet: both bridges would carry the subnet's route.
  const r = await refusedDaemon(['--state-dir', path.join(dir, 'state'), '--socket', path.join(dir, 's.sock'), '--cgroup-parent', `${a.cgroupParent}-b`,
    ...network, '--network-bridge', `${node.bridge.slice(0, 13)}b2`, '--network-table', `${node.table}_b`], node.netns);
  t.equal(r.code, 1, 'the second daemon exits 1');
  t.match(r.stderr, `subnet 10.88.0.0/16 overlaps 10.88.0.1/16 on ${node.bridge}`, 'naming the link that has it');
  t.match(r.stderr, '--network-subnet', 'and the flag that picks another');
  t.notOk((await node.sh('ip -o link show')).includes(`${node.bridge.slice(0, 13)}b2`), 'it made no bridge');
  t.same(claimsOf(path.join(dir, 'state')), [], 'and gave back the names it had claimed');
  t.same(await runningPids(a, ['side-net']), [pid], "the first daemon's workspace runs on");
  await a.teardown('side-net');
});
