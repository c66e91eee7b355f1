// The node's workspace network: one bridge, an address per workspace, isolation and NAT. The
// lifecycle calls prepare/attach/setPorts/detach per workspace and reconcile once after a restart.
// docs/network.md describes the topology and every rule.
import os from 'node:os';
import { recordForwardingBefore, restoreForwarding } from './forwarding';
import { DomainError, invalidArgument } from '../errors';
import { allSettledOrThrow } from '../promises';
import { formatIpv4, parseIpv4, parseIpv6, parseRange, parseSubnet4, parseSubnet6, contains4, type Subnet4, type Subnet6 } from './cidr';
import { Firewall, metadataAddresses, type FirewallSpec } from './firewall';
import { Links, workspaceMac, type NetnsRef } from './links';
import { netNative } from '../native';
import { AddressPool, gatewayOffset, type Lease } from './pool';

export { loopbackUp, type NetnsRef } from './links';
export type { Lease } from './pool';

export interface NodeNetworkOptions {
  stateDir: string;            // leases live in <stateDir>/network/leases.json
  bridge?: string;             // default tetrix0
  subnet?: string;             // IPv4, default 10.88.0.0/16; the bridge takes the first address
  subnet6?: string;            // IPv6 as well when set, e.g. fd00:7e7a::/64
  uplink?: string;             // egress only through this interface; default: any but the bridge
  deniedRanges?: string[];     // addresses or CIDRs workspaces may not reach (metadata is always denied)
  dnsServers: string[];        // the resolvers written to resolv.conf; reachable even if denied
  tableName?: string;          // nft tables `inet <name>` and `bridge <name>`, default tetrix
  mtu?: number;
  netns?: string;              // the node's network namespace (a path); default: the process's own
}

export const networkDefaults = { bridge: 'tetrix0', subnet: '10.88.0.0/16', tableName: 'tetrix' } as const;

/** What a workspace needs to know about its network; the caller writes the files into its rootfs. */
export interface WorkspaceAddress {
  ip: string;
  ip6: string;                 // '' without an IPv6 subnet
  ports: number[];
  resolvConf: string;          // for /etc/resolv.conf
  hosts: string;               // for /etc/hosts
}

interface Settings {
  netns: string | undefined;
  subnet: Subnet4;
  subnet6: Subnet6 | undefined;
  dnsServers: string[];
}

export class NodeNetwork {
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly preparedOnly = new Set<string>();   // leases this process made and never attached
  private readonly inflight = new Set<Promise<unknown>>();
  private barrier: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly settings: Settings,
    private readonly pool: AddressPool,
    private readonly links: Links,
    private readonly firewall: Firewall,
  ) {}

  /**
   * Creates or adopts the bridge, turns forwarding on in the node's namespace, and installs the
   * tables with the elements of every lease on file (reconcile then drops the dead ones).
   */
  static async open(opts: NodeNetworkOptions): Promise<NodeNetwork> {
    if (typeof netNative.netAttachVeth !== 'function') {
      throw new DomainError('FAILED_PRECONDITION', 'network: the native addon was built without native/net.c; rebuild it (node-gyp rebuild -C native)');
    }
    const bridge = opts.bridge ?? networkDefaults.bridge;
    const table = opts.tableName ?? networkDefaults.tableName;
    const subnet = parseSubnet4('subnet', opts.subnet ?? networkDefaults.subnet);
    const subnet6 = opts.subnet6 ? parseSubnet6('subnet6', opts.subnet6) : undefined;
    checkLinkName('bridge', bridge);
    if (opts.uplink !== undefined) checkLinkName('uplink', opts.uplink);
    if (!/^[A-Za-z][A-Za-z0-9_-]{0,31}$/.test(table)) throw invalidArgument('tableName', `"${table}" is not a plain nft table name`);
    if (opts.mtu !== undefined && (!Number.isInteger(opts.mtu) || opts.mtu < 1280 || opts.mtu > 65535)) throw invalidArgument('mtu', 'must be 1280-65535');
    const dns = splitFamilies('dnsServers', opts.dnsServers, { single: true });
    if (dns.v4.length + dns.v6.length === 0) throw invalidArgument('dnsServers', 'at least one resolver is required');
    for (const d of dns.v4) {
      if (d.startsWith('127.')) throw invalidArgument('dnsServers', `${d} is a loopback address, which a workspace cannot reach`);
      if (contains4(subnet, parseIpv4(d) ?? 0) && d !== gatewayOf(subnet)) throw invalidArgument('dnsServers', `${d} is a workspace address`);
    }
    const denied = splitFamilies('deniedRanges', opts.deniedRanges ?? [], { single: false });

    if (!opts.netns) refuseSubnetInUse(subnet, subnet6, bridge);
    const pool = await AddressPool.open(opts.stateDir, subnet, subnet6);
    const gw = pool.gateway;
    const links = new Links(opts.netns, {
      name: bridge,
      addrs: [`${gw.ip}/${subnet.prefix}`, ...(subnet6 ? [`${gw.ip6}/${subnet6.prefix}`] : [])],
      ipv6: Boolean(subnet6),
      ...(opts.mtu ? { mtu: opts.mtu } : {}),
    });
    const spec: FirewallSpec = {
      table,
      bridge,
      ...(opts.uplink ? { uplink: opts.uplink } : {}),
      subnet: subnet.text,
      ...(subnet6 ? { subnet6: subnet6.text, gateway6: gw.ip6 } : {}),
      gateway: gw.ip,
      dns,
      denied: { v4: [...metadataAddresses.v4, ...denied.v4], v6: [...metadataAddresses.v6, ...denied.v6] },
    };
    const firewall = new Firewall(opts.netns, spec);
    // Rules before the bridge: no workspace port is ever up without them.
    await firewall.install(pool.all());
    if (!opts.netns) recordForwardingBefore(opts.stateDir);
    await links.ensureBridge();
    return new NodeNetwork({ netns: opts.netns, subnet, subnet6, dnsServers: [...dns.v4, ...dns.v6] }, pool, links, firewall);
  }

  /**
   * Reserves the workspace's address (persisted) without touching the kernel, so its resolv.conf and
   * hosts can be written before it starts. attach uses the same address.
   */
  async prepare(workspaceId: string, hostname: string = workspaceId, ports: number[] = []): Promise<WorkspaceAddress> {
    checkWorkspaceId(workspaceId);
    const wanted = checkPorts(ports);
    return this.perWorkspace(workspaceId, async () => {
      const { lease, existed } = this.acquire(workspaceId, hostname, wanted);
      if (!existed) this.preparedOnly.add(workspaceId);
      // The write overlaps whatever the caller does next; attach waits for it.
      this.pool.saved().catch(() => undefined);
      return this.describe(lease);
    });
  }

  /**
   * Gives the workspace's network namespace (a pid, or a namespace file) its eth0 on the bridge, its
   * address and default routes, lo up, and its isolation rules; `ports` are exposed to the node.
   * A failure leaves nothing behind (no veth, element or lease).
   */
  async attach(workspaceId: string, target: NetnsRef, ports: number[], hostname: string = workspaceId): Promise<WorkspaceAddress> {
    checkWorkspaceId(workspaceId);
    const wanted = checkPorts(ports);
    if (typeof target === 'number' && (!Number.isInteger(target) || target <= 0)) throw invalidArgument('pid', 'must be a positive integer');
    return this.perWorkspace(workspaceId, async () => {
      const { lease: held, existed } = this.acquire(workspaceId, hostname, wanted);
      let lease = held;
      if (existed) {
        // An earlier attach of this workspace (a retry, or one before a restart) may have left its veth
        // and elements, perhaps for other ports.
        if (!this.preparedOnly.delete(workspaceId)) {
          await this.links.remove(lease.hostLink);
          await this.firewall.removeWorkspace(lease);
        }
        if (!samePorts(lease.ports, wanted) || lease.hostname !== hostname) lease = this.pool.update(workspaceId, { ports: wanted, hostname });
        // A lease from before the per-bridge veth names takes the current one with its new veth.
        if (lease.hostLink !== this.links.hostLinkOf(workspaceId)) lease = this.pool.update(workspaceId, { hostLink: this.links.hostLinkOf(workspaceId) });
      }
      // The lease write, the links and the rules are independent: all three at once, all awaited.
      try {
        await allSettledOrThrow([
          this.pool.saved(),
          this.links.attach(lease, target, this.pool.gateway, { v4: this.settings.subnet.prefix, v6: this.settings.subnet6?.prefix ?? 128 }),
          this.firewall.addWorkspace(lease),
        ] as const);
      } catch (err) {
        await this.teardown(lease).catch(() => undefined);
        throw err;
      }
      return this.describe(lease);
    });
  }

  /** Replaces the exposed ports of an attached workspace. NOT_FOUND when it has no lease. */
  async setPorts(workspaceId: string, ports: number[]): Promise<void> {
    const wanted = checkPorts(ports);
    return this.perWorkspace(workspaceId, async () => {
      const lease = this.pool.get(workspaceId);
      if (!lease) throw new DomainError('NOT_FOUND', `workspace ${workspaceId} has no network`);
      if (samePorts(lease.ports, wanted)) return;
      await this.firewall.setPorts(lease, lease.ports, wanted);
      this.pool.update(workspaceId, { ports: wanted });
      await this.pool.saved();
    });
  }

  /** Removes the veth, the elements and the lease. Idempotent. */
  detach(workspaceId: string): Promise<void> {
    return this.perWorkspace(workspaceId, async () => {
      const lease = this.pool.get(workspaceId);
      if (lease) return this.teardown(lease);
      // No lease (an attach cut short): only a veth on our own bridge is ours to delete.
      const name = this.links.hostLinkOf(workspaceId);
      if ((await this.links.workspacePorts()).includes(name)) await this.links.remove(name);
    });
  }

  /**
   * After a restart: leases of workspaces not in liveIds are released with their veths, veths on the
   * bridge that no lease names are deleted, and the tables are rebuilt from the remaining leases.
   * Live workspaces keep their addresses.
   */
  reconcile(liveIds: readonly string[]): Promise<void> {
    return this.wholeNode(async () => {
      const live = new Set(liveIds);
      for (const lease of this.pool.all()) if (!live.has(lease.workspaceId)) await this.teardown(lease);
      const named = new Set(this.pool.all().map((l) => l.hostLink));
      for (const port of await this.links.workspacePorts()) if (!named.has(port)) await this.links.remove(port);
      await this.firewall.install(this.pool.all());
    });
  }

  /** The workspace's address and ports, if it has a lease (an adopted workspace keeps its own). */
  address(workspaceId: string): WorkspaceAddress | undefined {
    const lease = this.pool.get(workspaceId);
    return lease && this.describe(lease);
  }

  /** Waits for running operations and lets go of kernel handles. Workspaces keep their network. */
  close(): Promise<void> {
    return this.wholeNode(() => this.firewall.release());
  }

  private acquire(workspaceId: string, hostname: string, ports: number[]): { lease: Lease; existed: boolean } {
    return this.pool.acquire(workspaceId, ({ ip }) => ({ hostLink: this.links.hostLinkOf(workspaceId), mac: workspaceMac(ip), hostname, ports }));
  }

  // Kernel objects first, the lease last: the address is free only once nothing uses it.
  private async teardown(lease: Lease): Promise<void> {
    this.preparedOnly.delete(lease.workspaceId);
    await this.links.remove(lease.hostLink);
    await this.firewall.removeWorkspace(lease);
    this.pool.release(lease.workspaceId);
    await this.pool.saved();
  }

  private describe(lease: Lease): WorkspaceAddress {
    const names = lease.hostname === lease.workspaceId ? lease.hostname : `${lease.hostname} ${lease.workspaceId}`;
    return {
      ip: lease.ip,
      ip6: lease.ip6,
      ports: [...lease.ports],
      resolvConf: ['# Written by tetrixd: the resolvers this workspace may reach.', ...this.settings.dnsServers.slice(0, 3).map((d) => `nameserver ${d}`), ''].join('\n'),
      hosts: [
        '127.0.0.1\tlocalhost',
        '::1\tlocalhost ip6-localhost ip6-loopback',
        `${lease.ip}\t${names}`,
        ...(lease.ip6 ? [`${lease.ip6}\t${names}`] : []),
        '',
      ].join('\n'),
    };
  }

  // One operation per workspace at a time; different workspaces proceed together.
  private perWorkspace<T>(workspaceId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(workspaceId) ?? Promise.resolve();
    const op = Promise.all([this.barrier, previous.catch(() => undefined)]).then(fn);
    const settled = op.then(() => undefined, () => undefined);
    this.locks.set(workspaceId, settled);
    this.inflight.add(settled);
    void settled.then(() => {
      this.inflight.delete(settled);
      if (this.locks.get(workspaceId) === settled) this.locks.delete(workspaceId);
    });
    return op;
  }

  // Waits for every operation already started, and holds new ones back until done.
  private wholeNode<T>(fn: () => Promise<T>): Promise<T> {
    const op = Promise.allSettled([this.barrier, ...this.inflight]).then(fn);
    this.barrier = op.then(() => undefined, () => undefined);
    return op;
  }
}

function gatewayOf(subnet: Subnet4): string {
  return formatIpv4(subnet.network + gatewayOffset);
}

function checkLinkName(field: string, name: string): void {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw invalidArgument(field, `"${name}" is not an interface name (1-15 of A-Z a-z 0-9 _ . -)`);
}

function checkWorkspaceId(id: string): void {
  if (typeof id !== 'string' || id.length === 0) throw invalidArgument('workspace id', 'must not be empty');
}

function checkPorts(ports: readonly number[]): number[] {
  for (const p of ports) if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalidArgument('ports', `${p} is not a TCP port (1-65535)`);
  return [...new Set(ports)].sort((a, b) => a - b);
}

function samePorts(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((p, i) => p === b[i]);
}

function splitFamilies(field: string, items: readonly string[], o: { single: boolean }): { v4: string[]; v6: string[] } {
  const out = { v4: [] as string[], v6: [] as string[] };
  for (const item of items) {
    const r = parseRange(field, item);
    if (o.single && r.text.includes('/')) throw invalidArgument(field, `${item} must be a single address`);
    (r.family === 4 ? out.v4 : out.v6).push(r.text);
  }
  return out;
}

/**
 * A subnet another link already has an address in (another daemon's bridge, a VPN) would share its route
 * with ours: replies to one network's workspaces would leave by the other's link. Read in the process's
 * own namespace, where a daemon's node network lives.
 */
function refuseSubnetInUse(subnet: Subnet4, subnet6: Subnet6 | undefined, bridge: string): void {
  for (const [link, addrs] of Object.entries(os.networkInterfaces())) {
    if (link === bridge) continue;
    for (const a of addrs ?? []) {
      if (!a.cidr) continue;
      const prefix = Number(a.cidr.split('/')[1]);
      if (a.family === 'IPv4') {
        const size = 2 ** (32 - prefix);
        const network = Math.floor((parseIpv4(a.address) ?? 0) / size) * size;
        if (network < subnet.network + subnet.size && subnet.network < network + size) refuseOverlap(subnet.text, a.cidr, link, '--network-subnet');
      } else if (subnet6 && overlaps6(subnet6, parseIpv6(a.address.split('%')[0]), prefix)) {
        refuseOverlap(subnet6.text, a.cidr, link, '--network-subnet6');
      }
    }
  }
}

function overlaps6(subnet: Subnet6, address: bigint | undefined, prefix: number): boolean {
  if (address === undefined) return false;
  // Two prefixes overlap exactly when they agree on the shorter one's bits.
  const common = BigInt(128 - Math.min(prefix, subnet.prefix));
  return address >> common === subnet.network >> common;
}

function refuseOverlap(ours: string, theirs: string, link: string, flag: string): never {
  throw new DomainError('FAILED_PRECONDITION', `network: subnet ${ours} overlaps ${theirs} on ${link} (another daemon's bridge?); give this daemon its own ${flag}`);
}

/**
 * What an uninstall removes of the node network: the workspace veths on the bridge, the bridge, both nft
 * tables, and the forwarding settings as they were before Tetrix first changed them.
 */
export async function removeNodeNetwork(opts: { stateDir: string; bridge: string; tableName: string }): Promise<string[]> {
  const removed: string[] = [];
  for (const port of await netNative.netListPorts({ bridge: opts.bridge })) {
    if (await netNative.netDeleteLink({ name: port })) removed.push(`link ${port}`);
  }
  if (await netNative.netDeleteLink({ name: opts.bridge })) removed.push(`bridge ${opts.bridge}`);
  const tables = ['inet', 'bridge'].map((family) => `add table ${family} ${opts.tableName}\ndelete table ${family} ${opts.tableName}`);
  await netNative.nftRun({ script: tables.join('\n') + '\n' });
  await netNative.nftRelease({});
  removed.push(`nftables tables inet/bridge ${opts.tableName}`);
  const forwarding = restoreForwarding(opts.stateDir);
  for (const [family, value] of Object.entries(forwarding)) removed.push(`${family} forwarding restored to ${value}`);
  return removed;
}
