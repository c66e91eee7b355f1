// What a developer and an operator see of an ISOLATED workspace's network, on the real kernel, in a
// test node built in namespaces (fixture.ts).
import { spawn } from 'node:child_process';
import t from 'tap';
import { loopbackUp, NodeNetwork } from '../../src/network';
import { createTestNode, internet, ip, metadata, nodeResolverAnswer, nodeUplink, probe } from './fixture';

t.test('isolated workspaces', async (t) => {
  const node = await createTestNode(t);
  // Two resolvers: one out on the internet, one on the node itself (its bridge address).
  const net = await NodeNetwork.open(node.options({ subnet6: 'fd00:7e7a::/64', dnsServers: [internet.ip, '10.88.0.1'] }));
  t.teardown(() => net.close());

  const wsA = await node.workspaceNetns();
  const a = await net.attach('ws-a', wsA, [8080]);
  // A workspace given by pid, as the lifecycle does: a process in fresh user and network namespaces,
  // so its network namespace belongs to another user namespace, as a real workspace's does.
  const sleeper = spawn('unshare', ['--user', '--map-root-user', '--net', 'sleep', '600'], { stdio: 'ignore' });
  t.teardown(() => sleeper.exitCode === null && process.kill(sleeper.pid!, 'SIGKILL'));
  await new Promise((r) => setTimeout(r, 100));
  const wsB = `/proc/${sleeper.pid}/ns/net`;
  const b = await net.attach('ws-b', sleeper.pid!, []);
  await node.serve(wsA, 'ws-a', ['tcp:8080', 'tcp:8081']);
  await node.serve(wsB, 'ws-b', ['tcp:8080']);

  t.test('each gets its own address, a default route and only eth0 and lo', async (t) => {
    t.not(a.ip, b.ip);
    t.match(a.ip, /^10\.88\./);
    t.match(a.ip6, /^fd00:7e7a::/);
    const links = await ip('-n', wsA.split('/').pop()!, '-br', 'link');
    t.same(links.trim().split('\n').map((l) => l.split(/[\s@]/)[0]).sort(), ['eth0', 'lo']);
    t.match(await ip('-n', wsA.split('/').pop()!, 'route'), /default via 10\.88\.0\.1 dev eth0/);
    t.match(a.hosts, new RegExp(`${a.ip.replace(/\./g, '\\.')}\\tws-a`));
    t.match(a.resolvConf, /^nameserver 192\.0\.2\.1$/m);
  });

  t.test('egress reaches the internet: HTTP, and DNS through the configured resolver', async (t) => {
    t.match(await probe(wsA, ['http', `http://${internet.ip}/`]), { ok: true, body: 'hello from internet' });
    t.match(await probe(wsB, ['http', `http://${internet.ip}/`]), { ok: true, body: 'hello from internet' });
    t.match(await probe(wsA, ['lookup', 'web.tetrix.test'], a), { ok: true, addresses: [internet.ip] });
    t.match(await probe(wsA, ['lookup', 'ws-a'], a), { ok: true, addresses: [a.ip] }, '/etc/hosts names the workspace');
    t.match(await probe(wsA, ['http', `http://[${internet.ip6}]/`]), { ok: true, body: 'hello from internet' }, 'IPv6 egress');
  });

  t.test('the internet sees the node, not the workspace (masquerade)', async (t) => {
    // The internet namespace has no route to 10.88.0.0/16: a reply could only arrive if NATed.
    const routes = await ip('-n', node.inet, 'route');
    t.notMatch(routes, /10\.88\./);
    t.match(await probe(wsA, ['http', `http://${internet.ip}/`]), { ok: true });
  });

  t.test('a workspace cannot reach another workspace', async (t) => {
    t.match(await probe(wsB, ['tcp', a.ip, '8080', '1500']), { ok: false, error: /ETIMEDOUT|EHOSTUNREACH/ }, 'directly on the bridge');
    t.match(await probe(wsA, ['tcp', b.ip, '8080', '1500']), { ok: false }, 'the other way');
    // Even when it routes through the gateway on purpose.
    await ip('-n', wsA.split('/').pop()!, 'route', 'add', `${b.ip}/32`, 'via', '10.88.0.1');
    t.match(await probe(wsA, ['tcp', b.ip, '8080', '1500']), { ok: false, error: /ETIMEDOUT|EHOSTUNREACH/ }, 'through the gateway');
    t.match(await probe(wsA, ['tcp', `${b.ip6}`, '8080', '1500']), { ok: false, error: /ETIMEDOUT|EHOSTUNREACH/ }, 'over IPv6');
  });

  t.test('a workspace cannot reach the node, its services or the metadata service', async (t) => {
    // The same servers answer from the node itself: the refusal is the firewall's.
    t.match(await probe(node.netns, ['http', 'http://10.88.0.1/']), { ok: true, body: 'hello from node' });
    t.match(await probe(node.netns, ['http', `http://${metadata.ip}/`]), { ok: true, body: 'hello from node' });
    t.match(await probe(node.netns, ['http', `http://[${metadata.ip6}]/`]), { ok: true, body: 'hello from node' });
    for (const url of ['http://10.88.0.1/', `http://${nodeUplink.ip}/`, `http://${metadata.ip}/`, `http://[${metadata.ip6}]/`, 'http://[fd00:7e7a::1]/']) {
      t.match(await probe(wsA, ['http', url, '1500']), { ok: false, error: 'ECONNREFUSED' }, url);
    }
  });

  t.test("the node's own resolver is the one node service a workspace may use", async (t) => {
    t.match(a.resolvConf, /^nameserver 10\.88\.0\.1$/m);
    t.match(await probe(wsA, ['dns', '10.88.0.1', 'web.tetrix.test']), { ok: true, addresses: [nodeResolverAnswer] });
    t.match(await probe(wsA, ['http', 'http://10.88.0.1/', '1500']), { ok: false, error: 'ECONNREFUSED' }, 'but not its web server');
  });

  t.test('a denied range is refused; the rest of the internet is not', async (t) => {
    t.match(await probe(node.netns, ['http', `http://${internet.denied}/`]), { ok: true }, 'reachable from the node');
    t.match(await probe(wsA, ['http', `http://${internet.denied}/`, '1500']), { ok: false, error: 'EHOSTUNREACH' });
  });

  t.test('a listed port is reachable from the node, an unlisted one is not', async (t) => {
    t.match(await probe(node.netns, ['tcp', a.ip, '8080']), { ok: true, data: 'ok\n' });
    t.match(await probe(node.netns, ['tcp', a.ip, '8081', '1500']), { ok: false, error: 'ECONNREFUSED' }, 'refused though a server listens');
    t.match(await probe(node.netns, ['tcp', a.ip6, '8080']), { ok: true, data: 'ok\n' }, 'over IPv6 too');
    t.match(await probe(node.netns, ['tcp', b.ip, '8080', '1500']), { ok: false }, 'ws-b exposes nothing');

    await net.setPorts('ws-a', [8081]);
    t.match(await probe(node.netns, ['tcp', a.ip, '8081']), { ok: true, data: 'ok\n' }, 'after setPorts');
    t.match(await probe(node.netns, ['tcp', a.ip, '8080', '1500']), { ok: false }, 'no longer listed');
    t.same(net.address('ws-a')?.ports, [8081]);
    await net.setPorts('ws-a', [8080]);
    await t.rejects(net.setPorts('nope', [1]), { code: 'NOT_FOUND' });
  });

  t.test('nothing from outside the node opens a connection to a workspace', async (t) => {
    await ip('-n', node.inet, 'route', 'add', '10.88.0.0/16', 'via', nodeUplink.ip);
    t.teardown(() => ip('-n', node.inet, 'route', 'del', '10.88.0.0/16').catch(() => undefined));
    t.match(await probe(`/run/netns/${node.inet}`, ['tcp', a.ip, '8080', '1500']), { ok: false, error: 'ETIMEDOUT' }, 'not even a listed port');
  });

  t.test("a workspace that takes another's address gets nothing through", async (t) => {
    const nsA = wsA.split('/').pop()!;
    await ip('-n', nsA, 'addr', 'add', `${b.ip}/32`, 'dev', 'eth0');
    t.teardown(() => ip('-n', nsA, 'addr', 'del', `${b.ip}/32`, 'dev', 'eth0').catch(() => undefined));
    t.match(await probe(wsA, ['http', `http://${internet.ip}/`, '1500', b.ip]), { ok: false, error: 'ETIMEDOUT' }, 'spoofed source');
    t.match(await probe(wsA, ['http', `http://${internet.ip}/`]), { ok: true }, 'its own address still works');
  });

  t.test('NONE: loopback only', async (t) => {
    const ws = await node.workspaceNetns();
    await loopbackUp(ws);
    const links = await ip('-n', ws.split('/').pop()!, '-br', 'link');
    t.match(links, /^lo\s+UNKNOWN/m);
    t.equal(links.trim().split('\n').length, 1);
    t.match(await probe(ws, ['http', `http://${internet.ip}/`, '1500']), { ok: false, error: 'ENETUNREACH' });
  });
});
