// Two node networks side by side in one namespace, as two daemons with `--network on` and bridges and
// tables of their own run them: neither one's rules, names or clean-up may reach the other's workspaces.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { NodeNetwork } from '../../src/network';
import { hostLinkName } from '../../src/network/links';
import { createTestNode, internet, probe, unique, workspaceLinks, type TestNode } from './fixture';

/** A second network in the test node: its own state dir, bridge, tables and subnet. */
async function secondNetwork(t: Test, node: TestNode): Promise<NodeNetwork> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-net-b-${unique()}-`));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  return NodeNetwork.open(node.options({ stateDir, bridge: `tetrixc${unique()}`.slice(0, 15), tableName: `${node.table}_b`, subnet: '10.89.0.0/16' }));
}

const reachesInternet = async (ns: string): Promise<boolean> => (await probe(ns, ['http', `http://${internet.ip}/`])).ok;

t.test("two networks in one namespace: each one's workspaces keep their traffic, names and veths", async (t) => {
  const node = await createTestNode(t);
  const a = await NodeNetwork.open(node.options());
  t.teardown(() => a.close());
  const b = await secondNetwork(t, node);
  t.teardown(() => b.close());

  const [aNs, bNs, aOnlyNs] = [await node.workspaceNetns(), await node.workspaceNetns(), await node.workspaceNetns()];
  await a.attach('ws', aNs, []);
  await b.attach('ws', bNs, []);
  t.pass('the same workspace id attaches in both (the veth names do not collide)');
  await a.attach('only-a', aOnlyNs, []);
  t.ok(await reachesInternet(aNs), "A's workspace reaches the internet past B's bridge table");
  t.ok(await reachesInternet(bNs), "B's workspace reaches the internet past A's bridge table");

  const before = await workspaceLinks(node);
  await b.detach('only-a');
  t.same(await workspaceLinks(node), before, 'B tearing down an id it never attached deletes no veth of A\'s');
  t.ok(await reachesInternet(aOnlyNs), "and A's workspace of that id is still on the network");

  await b.close();
  const reopened = await secondNetwork(t, node);
  t.teardown(() => reopened.close());
  await reopened.reconcile([]);
  t.ok(await reachesInternet(aNs), "a restart and reconcile of another network leaves A's workspace alone");
  t.ok(await reachesInternet(aOnlyNs), 'all of them');
});

t.test('a lease from before the per-bridge veth names keeps its port filtered', async (t) => {
  const node = await createTestNode(t);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-net-legacy-${unique()}-`));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  // The lease file an older daemon wrote: its veth is "twv" + 12 hex digits of the id.
  const legacy = 'twv' + '0123456789ab';
  const net = await NodeNetwork.open(node.options({ stateDir }));
  await net.attach('old', await node.workspaceNetns(), []);
  await net.close();
  const file = path.join(stateDir, 'network', 'leases.json');
  const leases = JSON.parse(fs.readFileSync(file, 'utf8')) as { leases: Record<string, { hostLink: string }> };
  leases.leases.old!.hostLink = legacy;
  fs.writeFileSync(file, JSON.stringify(leases));
  const current = hostLinkName(node.bridge, 'old');
  await node.sh(`ip link set ${current} down && ip link set ${current} name ${legacy} && ip link set ${legacy} up`);

  const reopened = await NodeNetwork.open(node.options({ stateDir }));
  t.teardown(() => reopened.close());
  const rules = await node.sh(`nft list chain bridge ${node.table} prerouting`);
  t.match(rules, `iifname "${legacy}" jump from_workspace_port`, 'its old name is filtered by name');
  t.match(rules, `iifname "${hostLinkName(node.bridge, 'x').slice(0, 7)}*" jump from_workspace_port`, 'new ports by this bridge\'s prefix');
  await reopened.attach('old', await node.workspaceNetns(), []);
  t.same(await workspaceLinks(node), [hostLinkName(node.bridge, 'old')], 'attached again, it takes the current name');
});
