// The address pool on its own: leases on disk, no address handed out twice, nothing lost on restart.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { formatIpv6, parseIpv6, parseSubnet4, parseSubnet6 } from '../../src/network/cidr';
import { AddressPool } from '../../src/network/pool';

const details = (ip: string) => ({ hostLink: 'twvtest', mac: `02:54:${ip}`, hostname: 'h', ports: [] });

function stateDir(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-pool-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('addresses are unique, skip the network, gateway and broadcast, and persist', async (t) => {
  const dir = stateDir(t);
  const subnet = parseSubnet4('subnet', '10.1.0.0/29');   // .1 gateway, .2-.6 workspaces, .7 broadcast
  const pool = await AddressPool.open(dir, subnet);
  t.equal(pool.gateway.ip, '10.1.0.1');
  const ips = [];
  for (let i = 0; i < 5; i++) ips.push(pool.acquire(`ws-${i}`, ({ ip }) => details(ip)).lease.ip);
  t.same(ips, ['10.1.0.2', '10.1.0.3', '10.1.0.4', '10.1.0.5', '10.1.0.6']);
  t.throws(() => pool.acquire('ws-5', ({ ip }) => details(ip)), { code: 'RESOURCE_EXHAUSTED' });

  const again = pool.acquire('ws-3', ({ ip }) => details(ip));
  t.same(again, { lease: pool.get('ws-3'), existed: true }, 'a second acquire returns the same lease');

  await pool.saved();
  const reopened = await AddressPool.open(dir, subnet);
  t.same(reopened.all().map((l) => l.ip).sort(), ips, 'leases survive a restart');
  t.same(fs.readdirSync(path.join(dir, 'network')), ['leases.json'], 'no temporary file is left');
});

t.test('a released address is not reused at once, and is reused once the pool wraps', async (t) => {
  const pool = await AddressPool.open(stateDir(t), parseSubnet4('subnet', '10.1.0.0/29'));
  pool.acquire('a', ({ ip }) => details(ip));
  pool.acquire('b', ({ ip }) => details(ip));
  t.equal(pool.release('a'), true);
  t.equal(pool.release('a'), false, 'releasing twice is harmless');
  t.equal(pool.acquire('c', ({ ip }) => details(ip)).lease.ip, '10.1.0.4');
  for (const id of ['d', 'e', 'f']) pool.acquire(id, ({ ip }) => details(ip));
  t.same(pool.all().map((l) => l.ip).sort(), ['10.1.0.2', '10.1.0.3', '10.1.0.4', '10.1.0.5', '10.1.0.6']);
});

t.test('changes made while a write runs are saved together, and all are on disk when saved() resolves', async (t) => {
  const dir = stateDir(t);
  const subnet = parseSubnet4('subnet', '10.2.0.0/24');
  const pool = await AddressPool.open(dir, subnet);
  const saves: Array<Promise<void>> = [];
  for (let i = 0; i < 100; i++) {
    pool.acquire(`ws-${i}`, ({ ip }) => details(ip));
    if (i % 10 === 0) pool.release(`ws-${i}`);
    saves.push(pool.saved());
  }
  await Promise.all(saves);
  const onDisk = (await AddressPool.open(dir, subnet)).all();
  t.equal(onDisk.length, 90);
  t.equal(new Set(onDisk.map((l) => l.ip)).size, 90, 'no address twice');
});

t.test('IPv6 addresses follow the IPv4 host number', async (t) => {
  const pool = await AddressPool.open(stateDir(t), parseSubnet4('subnet', '10.3.0.0/16'), parseSubnet6('subnet6', 'fd00:7e7a::/64'));
  t.same(pool.gateway, { ip: '10.3.0.1', ip6: 'fd00:7e7a::1' });
  const { lease } = pool.acquire('a', ({ ip }) => details(ip));
  t.same([lease.ip, lease.ip6], ['10.3.0.2', 'fd00:7e7a::2']);
  await t.rejects(AddressPool.open(stateDir(t), parseSubnet4('subnet', '10.3.0.0/16'), parseSubnet6('subnet6', 'fd00::/120')), { code: 'INVALID_ARGUMENT' });
});

t.test('an unreadable lease file or a changed subnet stops the start instead of reusing addresses', async (t) => {
  const dir = stateDir(t);
  const pool = await AddressPool.open(dir, parseSubnet4('subnet', '10.4.0.0/24'));
  pool.acquire('a', ({ ip }) => details(ip));
  await pool.saved();
  await t.rejects(AddressPool.open(dir, parseSubnet4('subnet', '10.5.0.0/24')), { code: 'FAILED_PRECONDITION' });
  fs.writeFileSync(path.join(dir, 'network', 'leases.json'), '{"version":1,"leases":');
  await t.rejects(AddressPool.open(dir, parseSubnet4('subnet', '10.4.0.0/24')), { code: 'DATA_LOSS' });
});

t.test('address notation', async (t) => {
  t.equal(formatIpv6(parseIpv6('fd00:0:0:0:0:0:0:1')!), 'fd00::1');
  t.equal(formatIpv6(parseIpv6('::')!), '::');
  t.equal(parseIpv6('1.2.3.4'), undefined);
  t.throws(() => parseSubnet4('subnet', '10.0.0.1/8'), { code: 'INVALID_ARGUMENT' });
  t.throws(() => parseSubnet6('subnet6', 'fd00::1/64'), { code: 'INVALID_ARGUMENT' });
});
