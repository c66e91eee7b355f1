// Workspace networking through the real daemon: tetrixd runs inside a test node (fixture.ts) with the
// network on, starts busybox workspaces, and the workloads themselves fetch, resolve and get refused.
// Exposed ports are tried from the node; teardown and a kill -9 mid-start leave nothing behind.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, isAlive, type Daemon } from '../helpers/daemon';
import { unaryCall } from '../../src/cli/client';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';
import { createTestNode, internet, ip, metadata, nodeUplink, probe, workspaceElements, workspaceLinks, type TestNode } from './fixture';

const SUBNET = '10.88.0.0/16';
const GATEWAY = '10.88.0.1';
const DENIED = '198.51.100.0/24';

/** tetrixd inside the test node, owning its bridge and tables, the internet's resolver configured. */
function nodeDaemon(t: Test, node: TestNode, env?: NodeJS.ProcessEnv): Promise<Daemon> {
  const args = [
    '--network', 'on',
    '--network-bridge', node.bridge,
    '--network-table', node.table,
    '--network-subnet', SUBNET,
    '--dns-servers', internet.ip,
    '--network-denied', DENIED,
    '--default-network', 'isolated',
  ];
  return startDaemon(t, args, { netns: node.netns, ...(env ? { env } : {}) });
}

// Belt and braces: init holds the workload until eth0 is attached (checked below), and scripts wait for it.
const WAIT_FOR_ETH0 = 'i=0; until ip -4 addr show eth0 2>/dev/null | grep -q inet || [ $i -ge 100 ]; do sleep 0.05; i=$((i+1)); done';

const busybox = (id: string, script: string, extra: Partial<StartWorkspaceRequest> = {}): StartWorkspaceRequest => ({
  id,
  ownerId: 'alice',
  image: 'builtin:busybox',
  command: ['/bin/sh', '-c', script],
  resources: { memoryBytes: 128 << 20, pids: 64 },
  network: 'NETWORK_MODE_ISOLATED',
  ...extra,
});

/** A workspace serving "hello from <id>" with busybox httpd on each port (in the background but the last). */
function webServer(id: string, serve: number[], exposed: number[]): StartWorkspaceRequest {
  const last = serve[serve.length - 1];
  const script = [
    'mkdir -p /tmp/www',
    `echo "hello from ${id}" > /tmp/www/index.html`,
    ...serve.slice(0, -1).map((p) => `httpd -p ${p} -h /tmp/www`),
    `exec httpd -f -p ${last} -h /tmp/www`,
  ].join('; ');
  return busybox(id, script, { ports: exposed });
}

function contentFile(d: Daemon, id: string, file: string): string {
  return path.join(d.stateDir, 'workspaces', id, 'content', file);
}

async function waitForFile(d: Daemon, id: string, file: string, timeoutMs = 30_000): Promise<string> {
  const p = contentFile(d, id, file);
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(p)) {
    if (Date.now() > end) throw new Error(`${file} never appeared in workspace ${id}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return fs.readFileSync(p, 'utf8');
}

/** Polls a probe from the node until it answers (a server inside a workspace takes a moment to listen). */
async function untilReachable(node: TestNode, url: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await probe(node.netns, ['http', url, '1000'])).ok) {
    if (Date.now() > end) throw new Error(`${url} never answered from the node`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function leasesOf(d: Daemon): Record<string, { ip: string }> {
  const file = path.join(d.stateDir, 'network', 'leases.json');
  if (!fs.existsSync(file)) return {};
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { leases: Record<string, { ip: string }> }).leases;
}

/** The node's routes, minus what follows the bridge's carrier (linkdown, its link-local route) rather than a workspace. */
async function routesOf(node: TestNode): Promise<string[]> {
  const all = (await ip('-n', node.name, 'route')) + (await ip('-n', node.name, '-6', 'route'));
  return all
    .split('\n')
    .map((l) => l.replace(/ linkdown\b/, '').trim())
    .filter((l) => l !== '' && !l.startsWith(`fe80::/64 dev ${node.bridge} `));
}

/** Everything a workspace's network leaves on the node: veths, leases, nft elements. */
async function networkLeftovers(node: TestNode, d: Daemon): Promise<{ links: string[]; leases: string[]; elements: string[] }> {
  return { links: await workspaceLinks(node), leases: Object.keys(leasesOf(d)), elements: await workspaceElements(node) };
}

const updatePorts = (d: Daemon, id: string, ports: number[]): Promise<Workspace__Output> =>
  unaryCall<Workspace__Output>((md, o, cb) => d.clients.workspaces.UpdatePorts({ id, ports }, md, o, cb));

/** Runs each probe inside the workload, in parallel, and records "<exit code>\n<output>" per name. */
function probeScript(probes: Record<string, string>): string {
  const lines = Object.entries(probes).map(([name, cmd]) => `( ${cmd} ) > /tmp/out.${name} 2>&1; echo "$? $(cat /tmp/out.${name} | tr '\\n' ' ')" > /workspace/${name}.result &`);
  // The first command records eth0 as the workload found it: init holds the workload until it is attached.
  return ['ip -4 addr show eth0 > /workspace/eth0-at-start 2>&1', WAIT_FOR_ETH0, 'cat /etc/resolv.conf > /workspace/resolv.conf', ...lines, 'wait', 'touch /workspace/done', 'exec sleep 600'].join('\n');
}

t.test('an ISOLATED workspace, through the daemon', async (t) => {
  const node = await createTestNode(t);
  const d = await nodeDaemon(t, node);
  const routesBefore = await routesOf(node);

  // A server workspace: 8080 exposed, 8081 listening but not exposed.
  const web = await d.start(webServer('web', [8081, 8080], [8080]));
  t.equal(web.state, 'WORKSPACE_STATE_RUNNING', 'web runs');
  t.equal(web.network, 'NETWORK_MODE_ISOLATED', 'with the ISOLATED network');
  t.match(web.ipAddress, /^10\.88\.\d+\.\d+$/, `it has an address from the node's pool (${web.ipAddress})`);
  t.same(web.ports, [8080], 'and its listed port');

  await t.test('a listed port is reachable from the node; an unlisted one is not', async (t) => {
    await untilReachable(node, `http://${web.ipAddress}:8080/`);
    t.match(await probe(node.netns, ['http', `http://${web.ipAddress}:8080/`]), { ok: true, body: 'hello from web\n' }, '8080 (listed)');
    // The server on 8081 is up (seen from inside the workspace's own namespace): the refusal is the firewall.
    t.match(await probe(`/proc/${web.pid}/ns/net`, ['http', 'http://127.0.0.1:8081/']), { ok: true, body: 'hello from web\n' }, '8081 listens');
    t.match(await probe(node.netns, ['http', `http://${web.ipAddress}:8081/`, '1500']), { ok: false, error: 'ECONNREFUSED' }, '8081 (not listed) is refused');
  });

  await t.test('UpdatePorts flips which port is reachable', async (t) => {
    const updated = await updatePorts(d, 'web', [8081]);
    t.same(updated.ports, [8081], 'the workspace reports its new ports');
    t.same((await d.get('web')).ports, [8081], 'GetWorkspace agrees');
    t.match(await probe(node.netns, ['http', `http://${web.ipAddress}:8081/`]), { ok: true, body: 'hello from web\n' }, '8081 is now reachable');
    t.match(await probe(node.netns, ['http', `http://${web.ipAddress}:8080/`, '1500']), { ok: false, error: 'ECONNREFUSED' }, '8080 is now refused');
    await updatePorts(d, 'web', [8080]);
    t.match(await probe(node.netns, ['http', `http://${web.ipAddress}:8080/`]), { ok: true }, 'and back');
    t.match(await probe(node.netns, ['http', `http://${web.ipAddress}:8081/`, '1500']), { ok: false, error: 'ECONNREFUSED' }, 'and 8081 refused again');
  });

  await t.test('the workload fetches from the internet, resolves names, and is refused everything it must not reach', async (t) => {
    const wget = (url: string): string => `timeout 5 wget -q -O - ${url}`;
    const client = await d.start(busybox('client', probeScript({
      internet: wget(`http://${internet.ip}/`),
      byname: wget('http://files.tetrix.test/'),
      lookup: 'nslookup registry.tetrix.test',
      neighbour: wget(`http://${web.ipAddress}:8080/`),
      neighbournc: `echo x | timeout 5 nc ${web.ipAddress} 8080`,
      gateway: wget(`http://${GATEWAY}/`),
      uplink: wget(`http://${nodeUplink.ip}/`),
      nodedns: `timeout 5 nslookup registry.tetrix.test ${GATEWAY}`,
      metadata: wget(`http://${metadata.ip}/`),
      denied: wget(`http://${internet.denied}/`),
    })));
    t.not(client.ipAddress, web.ipAddress, 'two workspaces, two addresses');
    await waitForFile(d, 'client', 'done');
    const result = (name: string): { code: number; out: string } => {
      const text = fs.readFileSync(contentFile(d, 'client', `${name}.result`), 'utf8');
      const [code, ...rest] = text.trim().split(' ');
      return { code: Number(code), out: rest.join(' ') };
    };
    t.match(fs.readFileSync(contentFile(d, 'client', 'eth0-at-start'), 'utf8'), new RegExp(`inet ${client.ipAddress.replace(/\./g, '\\.')}/16`), 'eth0 had its address before the workload ran');
    t.match(fs.readFileSync(contentFile(d, 'client', 'resolv.conf'), 'utf8'), new RegExp(`^nameserver ${internet.ip}$`, 'm'), 'resolv.conf names the configured resolver');
    t.match(result('internet'), { code: 0, out: /hello from internet/ }, 'HTTP to the test internet by address');
    t.match(result('byname'), { code: 0, out: /hello from internet/ }, 'HTTP by name, resolved through the configured resolver');
    t.match(result('lookup'), { code: 0, out: new RegExp(`Address: ${internet.ip.replace(/\./g, '\\.')}`) }, 'nslookup answers from the resolver');
    // The same servers answer the node itself, so each refusal below is the firewall's.
    t.match(await probe(node.netns, ['http', `http://${GATEWAY}/`]), { ok: true, body: 'hello from node' }, 'the node serves on its bridge address');
    t.match(await probe(node.netns, ['http', `http://${metadata.ip}/`]), { ok: true, body: 'hello from node' }, 'and on the metadata address');
    t.match(await probe(node.netns, ['http', `http://${web.ipAddress}:8080/`]), { ok: true }, 'and web answers the node');
    for (const name of ['neighbour', 'neighbournc', 'gateway', 'uplink', 'nodedns', 'metadata', 'denied']) {
      const r = result(name);
      t.not(r.code, 0, `${name}: refused (${r.out.trim() || `exit ${r.code}`})`);
      t.notMatch(r.out, /hello from/, `${name}: nothing came back`);
    }
  });

  await t.test('NONE has only loopback, up, and nothing on the node', async (t) => {
    const before = await networkLeftovers(node, d);
    // No waiting: init holds the workload until the daemon has brought lo up.
    const script = 'ip -o link > /workspace/links; ip -o addr > /workspace/addrs; touch /workspace/done; exec sleep 600';
    const w = await d.start(busybox('offline', script, { network: 'NETWORK_MODE_NONE' }));
    t.equal(w.network, 'NETWORK_MODE_NONE', 'NONE as asked');
    t.equal(w.ipAddress, '', 'no address');
    await waitForFile(d, 'offline', 'done');
    const links = fs.readFileSync(contentFile(d, 'offline', 'links'), 'utf8').trim().split('\n');
    t.equal(links.length, 1, `one link: ${links.join(' | ')}`);
    t.match(links[0], /^1: lo: <[^>]*\bUP\b[^>]*>/, 'lo, and it is up when the workload starts');
    t.match(fs.readFileSync(contentFile(d, 'offline', 'addrs'), 'utf8'), /inet 127\.0\.0\.1\/8/, 'lo has 127.0.0.1');
    t.same(await networkLeftovers(node, d), before, 'no veth, lease or element was made for it');
    await d.teardown('offline');
  });

  await t.test('teardown leaves no veth, lease, element or route', async (t) => {
    const during = await networkLeftovers(node, d);
    t.equal(during.links.length, 2, 'two veths while web and client run');
    t.same(during.leases.sort(), ['client', 'web']);
    t.ok(during.elements.some((e) => e.includes(web.ipAddress)), "web's elements are in the tables");
    for (const id of ['client', 'web']) t.equal((await d.teardown(id)).existed, true, `${id} torn down`);
    t.same(await networkLeftovers(node, d), { links: [], leases: [], elements: [] }, 'nothing is left on the node');
    t.same(await routesOf(node), routesBefore, "the node's routes are as before");
    t.notOk(isAlive(web.pid), 'the workload is gone');
    t.match(await probe(node.netns, ['http', `http://${web.ipAddress}:8080/`, '1000']), { ok: false }, 'its old address answers nothing');
  });
});

t.test('a daemon killed mid-start leaves nothing that the next start does not clean', async (t) => {
  const node = await createTestNode(t);
  const d = await nodeDaemon(t, node);
  const routesBefore = await routesOf(node);
  // after-rootfs: the address is reserved; after-spawn: the workload runs without its veth;
  // after-network: veth, lease and elements all exist.
  for (const point of ['after-rootfs', 'after-spawn', 'after-network'] as const) {
    await d.kill9();
    await d.restart({ TETRIX_TEST_CRASH_AT: point });
    const id = `half-${point}`;
    await t.rejects(d.start(busybox(id, 'exec sleep 600')), `${point}: the daemon died under the call`);
    if (point === 'after-network') {
      // The veth may already be gone: init, abandoned at its gate, exits and takes its namespace along.
      const half = await networkLeftovers(node, d);
      t.same(half.leases, [id], `${point}: the kill came after the lease was written`);
      t.ok(half.elements.length > 0, `${point}: and after the elements were added`);
    }
    await d.restart({});
    const w = await d.get(id);
    t.equal(w.state, 'WORKSPACE_STATE_FAILED', `${point}: the start is reported FAILED`);
    t.match(w.message, /interrupted by a daemon restart/, `${point}: and says why`);
    t.same(await networkLeftovers(node, d), { links: [], leases: [], elements: [] }, `${point}: the restart removed its veth, lease and elements`);
    t.same(await routesOf(node), routesBefore, `${point}: no route is left`);
    await d.teardown(id);
  }

  // The next workspace gets the network as usual, and keeps its address across a kill -9 of the daemon.
  const next = await d.start(webServer('next', [8080], [8080]));
  await untilReachable(node, `http://${next.ipAddress}:8080/`);
  await d.kill9();
  await d.restart({});
  const adopted = await d.get('next');
  t.equal(adopted.state, 'WORKSPACE_STATE_RUNNING', 'a running workspace is adopted after a kill -9');
  t.equal(adopted.ipAddress, next.ipAddress, 'with the same address');
  t.same(Object.keys(leasesOf(d)), ['next'], 'and the same single lease');
  t.match(await probe(node.netns, ['http', `http://${next.ipAddress}:8080/`]), { ok: true, body: 'hello from next\n' }, 'its exposed port still answers');
  await d.teardown('next');
  t.same(await networkLeftovers(node, d), { links: [], leases: [], elements: [] }, 'and its teardown leaves nothing');
});
