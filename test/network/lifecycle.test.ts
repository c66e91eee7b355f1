// The network across a workspace's life and the daemon's: teardown, restarts, crashes, and what
// Tetrix must leave alone. Real kernel, in a test node built in namespaces (fixture.ts).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';
import { NodeNetwork } from '../../src/network';
import { hostLinkName } from '../../src/network/links';
import { createTestNode, internet, ip, leasesOnFile, listTables, probe, unique, workspaceElements, workspaceLinks } from './fixture';

const run = promisify(execFile);

t.test('detach leaves no veth, lease or rule, and can be repeated', async (t) => {
  const node = await createTestNode(t);
  const net = await NodeNetwork.open(node.options({ subnet6: 'fd00:7e7a::/64' }));
  t.teardown(() => net.close());
  const [wsA, wsB] = [await node.workspaceNetns(), await node.workspaceNetns()];
  const a = await net.attach('ws-a', wsA, [80, 443]);
  await net.attach('ws-b', wsB, [8080]);
  t.equal((await workspaceElements(node)).filter((e) => e.includes(a.ip)).length, 3, 'ws-a: one source element, two ports');

  await net.detach('ws-a');
  t.same(await workspaceLinks(node), [hostLinkName(node.bridge, 'ws-b')], 'only ws-b keeps a veth');
  t.same(Object.keys(leasesOnFile(node)), ['ws-b']);
  const left = await workspaceElements(node);
  t.same(left.filter((e) => e.includes(a.ip) || e.includes(hostLinkName(node.bridge, 'ws-a'))), []);
  t.ok(left.length > 0, "ws-b's elements stay");
  t.notMatch(await ip('-n', path.basename(wsA), 'link'), /eth0/, 'the workspace lost its eth0');
  t.notMatch(await ip('-n', node.name, 'route'), new RegExp(a.ip.replace(/\./g, '\\.')), 'no route names it');

  await net.detach('ws-a');
  await net.detach('never-attached');
  await net.detach('ws-b');
  t.same(await workspaceLinks(node), []);
  t.same(leasesOnFile(node), {});
  t.same(await workspaceElements(node), []);
});

t.test('prepare reserves the address before the workspace exists; attach uses it', async (t) => {
  const node = await createTestNode(t);
  const net = await NodeNetwork.open(node.options());
  t.teardown(() => net.close());
  const early = await net.prepare('ws-a', 'dev-box', [3000]);
  t.match(early.hosts, /\tdev-box ws-a$/m, 'hosts names the hostname and the id');
  t.same(await workspaceLinks(node), [], 'no kernel object yet');
  const attached = await net.attach('ws-a', await node.workspaceNetns(), [3000], 'dev-box');
  t.equal(attached.ip, early.ip);
  t.same(Object.keys(leasesOnFile(node)), ['ws-a'], 'on disk once attach returned');
  await net.prepare('ws-b');
  await net.detach('ws-b');
  t.same(Object.keys(leasesOnFile(node)), ['ws-a'], 'a start abandoned after prepare leaves no lease');
});

t.test('attaching again keeps the address and replaces the old veth and ports', async (t) => {
  const node = await createTestNode(t);
  const net = await NodeNetwork.open(node.options());
  t.teardown(() => net.close());
  const ws = await node.workspaceNetns();
  const first = await net.attach('ws-a', ws, [80]);
  const second = await net.attach('ws-a', ws, [81]);
  t.equal(second.ip, first.ip);
  t.same(await workspaceLinks(node), [hostLinkName(node.bridge, 'ws-a')]);
  const ports = (await workspaceElements(node)).filter((e) => e.startsWith('ports4'));
  t.equal(ports.length, 1);
  t.match(ports[0], /81/);
  t.match(await probe(ws, ['http', `http://${internet.ip}/`]), { ok: true });
});

t.test('a failed attach leaves nothing', async (t) => {
  const node = await createTestNode(t);
  const net = await NodeNetwork.open(node.options());
  t.teardown(() => net.close());
  const gone = await run('sh', ['-c', 'echo $$']).then((r) => Number(r.stdout.trim()));
  await t.rejects(net.attach('ws-gone', gone, [80]), { code: 'FAILED_PRECONDITION' }, 'its process has exited');
  t.same(await workspaceLinks(node), []);
  t.same(leasesOnFile(node), {});
  t.same(await workspaceElements(node), []);
});

t.test('many workspaces at once get distinct addresses, and all go away', async (t) => {
  const node = await createTestNode(t);
  const net = await NodeNetwork.open(node.options());
  t.teardown(() => net.close());
  const targets = await Promise.all(Array.from({ length: 16 }, () => node.workspaceNetns()));
  const addrs = await Promise.all(targets.map((ns, i) => net.attach(`ws-${i}`, ns, [3000])));
  t.equal(new Set(addrs.map((a) => a.ip)).size, 16);
  t.equal((await workspaceLinks(node)).length, 16);
  t.match(await probe(targets[7]!, ['http', `http://${internet.ip}/`]), { ok: true });
  await Promise.all(targets.map((_, i) => net.detach(`ws-${i}`)));
  t.same(await workspaceLinks(node), []);
  t.same(leasesOnFile(node), {});
  t.same(await workspaceElements(node), []);
});

t.test('after a restart, a live workspace keeps its address and network; the dead are cleaned', async (t) => {
  const node = await createTestNode(t);
  const first = await NodeNetwork.open(node.options());
  const [wsA, wsB] = [await node.workspaceNetns(), await node.workspaceNetns()];
  const a = await first.attach('ws-a', wsA, [8080]);
  const b = await first.attach('ws-b', wsB, []);
  await node.serve(wsA, 'ws-a', ['tcp:8080']);
  await first.close();
  const rulesBefore = await listTables(node);

  const second = await NodeNetwork.open(node.options());
  t.teardown(() => second.close());
  t.equal(await listTables(node), rulesBefore, 'reopening installs the same tables, no duplicate rules');
  await second.reconcile(['ws-a']);
  t.same(second.address('ws-a')?.ip, a.ip, 'the adopted workspace keeps its address');
  t.same(second.address('ws-b'), undefined);
  t.same(await workspaceLinks(node), [hostLinkName(node.bridge, 'ws-a')]);
  t.same(Object.keys(leasesOnFile(node)), ['ws-a']);
  t.match(await probe(wsA, ['http', `http://${internet.ip}/`]), { ok: true }, 'egress still works');
  t.match(await probe(node.netns, ['tcp', a.ip, '8080']), { ok: true }, 'its port is still exposed');
  const c = await second.attach('ws-c', await node.workspaceNetns(), []);
  t.not(c.ip, a.ip, 'a new workspace never gets the adopted address');
  t.not(c.ip, b.ip, 'nor, right away, the one just released');
});

t.test('kill -9 in the middle of attaching: the next start cleans everything', async (t) => {
  const node = await createTestNode(t);
  const targets = await Promise.all(Array.from({ length: 8 }, () => node.workspaceNetns()));
  const optionsFile = path.join(node.stateDir, 'options.json');
  fs.writeFileSync(optionsFile, JSON.stringify(node.options()));
  // The child runs TypeScript the way tap runs this file (tap's hooks also reach spawned nodes).
  const tsImport = pathToFileURL(path.join(__dirname, '..', '..', 'node_modules', '@tapjs', 'typescript', 'dist', 'esm', 'import.mjs')).href;
  const child = path.join(__dirname, 'fixtures', 'attach-then-die.ts');
  // The daemon runs inside the node's namespace, as it would in production: no netns option.
  const died = await run('ip', ['netns', 'exec', node.name, process.execPath, `--import=${tsImport}`, child, optionsFile, ...targets])
    .then(() => 'exited', (err: { signal?: string; stderr?: string }) => err.signal ?? `failed: ${err.stderr}`);
  t.equal(died, 'SIGKILL');
  t.ok((await workspaceLinks(node)).length > 0, 'it had created veths');
  t.ok(Object.keys(leasesOnFile(node)).length > 0, 'and leases');

  const net = await NodeNetwork.open(node.options());
  t.teardown(() => net.close());
  await net.reconcile([]);
  t.same(await workspaceLinks(node), []);
  t.same(leasesOnFile(node), {});
  t.same(await workspaceElements(node), []);
  for (const ws of targets) t.notMatch(await ip('-n', path.basename(ws), 'link'), /eth0/);
});

t.test("Tetrix leaves others' tables, links and the machine's forwarding alone", async (t) => {
  const hostForward = fs.readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8');
  const node = await createTestNode(t);
  const id = unique();
  const foreignTable = `tetrix_foreign_${id}`;
  await node.sh(`nft add table inet ${foreignTable} && nft add set inet ${foreignTable} s '{ type ipv4_addr; }' && nft add element inet ${foreignTable} s '{ 10.88.0.9 }' && nft add chain inet ${foreignTable} c '{ type filter hook forward priority 10; }' && nft add rule inet ${foreignTable} c ip saddr 10.88.0.9 counter accept`);
  // A link that looks like a workspace veth but is not a port of Tetrix's bridge.
  const lookalike = 'twv000000000000';
  await ip('-n', node.name, 'link', 'add', lookalike, 'type', 'veth', 'peer', 'name', `tetrixp${id}`.slice(0, 15));
  const foreignBefore = await node.sh(`nft list table inet ${foreignTable}`);

  const net = await NodeNetwork.open(node.options());
  t.teardown(() => net.close());
  await net.attach('ws-a', await node.workspaceNetns(), [80]);
  await net.reconcile([]);
  t.equal(await node.sh(`nft list table inet ${foreignTable}`), foreignBefore, 'the foreign table is untouched');
  t.match(await ip('-n', node.name, 'link', 'show', lookalike), new RegExp(lookalike), 'the look-alike link stays');
  t.equal((await node.sh('cat /proc/sys/net/ipv4/ip_forward')).trim(), '1', "forwarding is on in the node's namespace");
  t.equal(fs.readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8'), hostForward, "the machine's own is unchanged");
});

t.test('bad options are refused before anything is created', async (t) => {
  const node = await createTestNode(t);
  for (const bad of [
    { subnet: '10.88.0.1/16' },
    { subnet: 'nope' },
    { dnsServers: [] },
    { dnsServers: ['127.0.0.53'] },
    { deniedRanges: ['10.0.0.0/33'] },
    { tableName: 'bad name' },
    { bridge: 'a-very-long-bridge-name' },
  ]) {
    await t.rejects(NodeNetwork.open(node.options(bad)), { code: 'INVALID_ARGUMENT' }, JSON.stringify(bad));
  }
  t.equal(await listTables(node), '\n', 'no table was installed');
  const net = await NodeNetwork.open(node.options());
  t.teardown(() => net.close());
  await t.rejects(net.attach('ws', 1, [0]), { code: 'INVALID_ARGUMENT' });
  await t.rejects(net.attach('ws', 1, [65536]), { code: 'INVALID_ARGUMENT' });
  await t.rejects(net.attach('', 1, []), { code: 'INVALID_ARGUMENT' });
});
