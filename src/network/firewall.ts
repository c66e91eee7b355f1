// Isolation and NAT in two nftables tables of Tetrix's own: `inet <table>` (filter + masquerade) and
// `bridge <table>` (anti-spoofing on the workspace ports). Nothing else in the ruleset is read or
// changed. The rules are fixed at install time; workspaces come and go as set elements. docs/network.md
// explains each rule.
import { DomainError } from '../errors';
import { netNative } from '../native';
import type { Lease } from './pool';
import { hostLinkPrefix } from './links';

export interface FirewallSpec {
  table: string;              // name of both tables
  bridge: string;
  uplink?: string;            // when set, egress leaves only through it
  subnet: string;             // "10.88.0.0/16"
  subnet6?: string;
  gateway: string;            // the bridge's addresses
  gateway6?: string;
  dns: { v4: string[]; v6: string[] };      // resolvers workspaces may query, even inside a denied range
  denied: { v4: string[]; v6: string[] };   // addresses and ranges workspaces may not reach
}

/** Always denied: the link-local metadata service of the big clouds (AWS IPv6 included). */
export const metadataAddresses = { v4: ['169.254.169.254'], v6: ['fd00:ec2::254'] };

const q = (name: string): string => `"${name}"`;
const set = (items: string[]): string => `{ ${items.join(', ')} }`;
const elements = (items: string[]): string => (items.length ? ` elements = ${set(items)};` : '');

/** Both tables, replaced in one transaction with the elements of the given leases. */
export function tablesScript(spec: FirewallSpec, leases: readonly Lease[]): string {
  const br = q(spec.bridge);
  const legacy = leases.map((l) => l.hostLink).filter((name) => !name.startsWith(hostLinkPrefix(spec.bridge))).map(q);
  const v6 = Boolean(spec.subnet6);
  const egress = spec.uplink ? `oifname != ${q(spec.uplink)} reject with icmpx admin-prohibited` : '';
  const masquerade = [
    `ip saddr ${spec.subnet} oifname ${spec.uplink ? q(spec.uplink) : `!= ${br}`} masquerade`,
    v6 ? `ip6 saddr ${spec.subnet6} oifname ${spec.uplink ? q(spec.uplink) : `!= ${br}`} masquerade` : '',
  ];
  const nd = 'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept';
  const dns = [
    `meta l4proto { tcp, udp } th dport 53 ip daddr @dns4 accept`,
    `meta l4proto { tcp, udp } th dport 53 ip6 daddr @dns6 accept`,
  ];
  const reject = ['meta l4proto tcp reject with tcp reset', 'reject with icmpx admin-prohibited'];
  const inet = [
    `table inet ${spec.table} {`,
    `  set ports4 { type ipv4_addr . inet_service;${elements(leases.flatMap((l) => l.ports.map((p) => `${l.ip} . ${p}`)))} }`,
    `  set ports6 { type ipv6_addr . inet_service;${elements(leases.filter((l) => l.ip6).flatMap((l) => l.ports.map((p) => `${l.ip6} . ${p}`)))} }`,
    `  set dns4 { type ipv4_addr;${elements(spec.dns.v4)} }`,
    `  set dns6 { type ipv6_addr;${elements(spec.dns.v6)} }`,
    `  set denied4 { type ipv4_addr; flags interval; auto-merge;${elements(spec.denied.v4)} }`,
    `  set denied6 { type ipv6_addr; flags interval; auto-merge;${elements(spec.denied.v6)} }`,
    // Workspace -> workspace through the gateway, dropped before routing (a forward-path reject would
    // come after the node's ICMP redirect, which points the sender straight at its neighbour).
    `  chain prerouting { type filter hook prerouting priority filter; policy accept;`,
    `    iifname ${br} ip daddr ${spec.subnet} ip daddr != ${spec.gateway} drop`,
    v6 ? `    iifname ${br} ip6 daddr ${spec.subnet6} ip6 daddr != ${spec.gateway6} drop` : '',
    `  }`,
    // Workspace -> node: every local address (bridge, uplink, loopback) arrives here; only DNS passes.
    `  chain input { type filter hook input priority filter; policy accept; iifname ${br} jump workspace_to_node; }`,
    `  chain workspace_to_node {`,
    `    ct state established,related accept`,
    `    ${nd}`,
    ...dns.map((r) => `    ${r}`),
    ...reject.map((r) => `    ${r}`),
    `  }`,
    `  chain forward { type filter hook forward priority filter; policy accept;`,
    `    iifname ${br} jump from_workspace`,
    `    oifname ${br} jump to_workspace`,
    `  }`,
    `  chain from_workspace {`,
    // Backstop for the prerouting drop: nothing is routed from the bridge back onto it.
    `    oifname ${br} reject with icmpx admin-prohibited`,
    `    ct state invalid drop`,
    `    ct state established,related accept`,
    ...dns.map((r) => `    ${r}`),
    `    ip daddr @denied4 reject with icmpx admin-prohibited`,
    `    ip6 daddr @denied6 reject with icmpx admin-prohibited`,
    egress ? `    ${egress}` : '',
    `  }`,
    // Nothing from outside opens a connection to a workspace; exposed ports are reached from the node.
    `  chain to_workspace { ct state established,related accept; drop; }`,
    `  chain output { type filter hook output priority filter; policy accept; oifname ${br} jump node_to_workspace; }`,
    `  chain node_to_workspace {`,
    `    ct state established,related accept`,
    `    ${nd}`,
    `    ip daddr . tcp dport @ports4 accept`,
    `    ip6 daddr . tcp dport @ports6 accept`,
    ...reject.map((r) => `    ${r}`),
    `  }`,
    `  chain postrouting { type nat hook postrouting priority srcnat; policy accept;`,
    ...masquerade.filter(Boolean).map((r) => `    ${r}`),
    `  }`,
    `}`,
  ];
  const bridge = [
    `table bridge ${spec.table} {`,
    `  set ws_mac { type ifname . ether_addr;${elements(leases.map(macElement))} }`,
    `  set ws_src4 { type ifname . ether_addr . ipv4_addr;${elements(leases.map(src4Element))} }`,
    `  set ws_src6 { type ifname . ether_addr . ipv6_addr;${elements(leases.filter((l) => l.ip6).map(src6Element))} }`,
    // Only this network's ports: the hook sees every bridge in the namespace, and another network's ports
    // are not in this table's sets. Leases from before the per-bridge prefix are named one by one.
    `  chain prerouting { type filter hook prerouting priority filter; policy accept;`,
    `    iifname "${hostLinkPrefix(spec.bridge)}*" jump from_workspace_port`,
    legacy.length ? `    iifname { ${legacy.join(', ')} } jump from_workspace_port` : '',
    `  }`,
    // A workspace is root in its namespace and can change its addresses; only its own pass the port,
    // so it can neither take another's address (ARP included) nor poison the bridge's MAC table.
    `  chain from_workspace_port {`,
    `    iifname . ether saddr != @ws_mac drop`,
    `    ether type arp iifname . ether saddr . arp saddr ip @ws_src4 accept`,
    `    ether type ip iifname . ether saddr . ip saddr @ws_src4 accept`,
    v6 ? `    ether type ip6 ip6 saddr fe80::/10 accept` : '',
    v6 ? `    ether type ip6 iifname . ether saddr . ip6 saddr @ws_src6 accept` : '',
    `    drop`,
    `  }`,
    `}`,
  ];
  return [
    ...replaceTable('inet', spec.table),
    ...inet.filter(Boolean),
    ...replaceTable('bridge', spec.table),
    ...bridge.filter(Boolean),
  ].join('\n') + '\n';
}

// "add" creates it when missing, so the delete never fails; all in the caller's one transaction.
const replaceTable = (family: string, table: string): string[] => [`add table ${family} ${table}`, `delete table ${family} ${table}`];

const macElement = (l: Lease): string => `${q(l.hostLink)} . ${l.mac}`;
const src4Element = (l: Lease): string => `${q(l.hostLink)} . ${l.mac} . ${l.ip}`;
const src6Element = (l: Lease): string => `${q(l.hostLink)} . ${l.mac} . ${l.ip6}`;

/** One workspace's elements as (set, element) pairs, for the given ports. */
function workspaceElements(table: string, lease: Lease, ports: readonly number[]): Array<[string, string]> {
  const out: Array<[string, string]> = [
    [`bridge ${table} ws_mac`, macElement(lease)],
    [`bridge ${table} ws_src4`, src4Element(lease)],
  ];
  if (lease.ip6) out.push([`bridge ${table} ws_src6`, src6Element(lease)]);
  return [...out, ...portElements(table, lease, ports)];
}

function portElements(table: string, lease: Lease, ports: readonly number[]): Array<[string, string]> {
  const out: Array<[string, string]> = ports.map((p) => [`inet ${table} ports4`, `${lease.ip} . ${p}`]);
  if (lease.ip6) out.push(...ports.map((p): [string, string] => [`inet ${table} ports6`, `${lease.ip6} . ${p}`]));
  return out;
}

const addLines = (els: Array<[string, string]>): string[] => els.map(([s, e]) => `add element ${s} { ${e} }`);
// Adding first makes the delete succeed whether or not the element was there (nft 1.0.6 has no
// "destroy"), so removal is idempotent and still one transaction.
const deleteLines = (els: Array<[string, string]>): string[] => [...addLines(els), ...els.map(([s, e]) => `delete element ${s} { ${e} }`)];

export function addWorkspaceScript(table: string, lease: Lease): string {
  return addLines(workspaceElements(table, lease, lease.ports)).join('\n') + '\n';
}

export function removeWorkspaceScript(table: string, lease: Lease): string {
  return deleteLines(workspaceElements(table, lease, lease.ports)).join('\n') + '\n';
}

export function portsScript(table: string, lease: Lease, before: readonly number[], after: readonly number[]): string {
  const gone = before.filter((p) => !after.includes(p));
  const added = after.filter((p) => !before.includes(p));
  return [...deleteLines(portElements(table, lease, gone)), ...addLines(portElements(table, lease, added))].join('\n') + '\n';
}

export class Firewall {
  constructor(private readonly netns: string | undefined, private readonly spec: FirewallSpec) {}

  /** Replaces both tables atomically: the rules, and one set of elements per lease. */
  install(leases: readonly Lease[]): Promise<void> {
    return this.run('install the tables', tablesScript(this.spec, leases));
  }

  addWorkspace(lease: Lease): Promise<void> {
    return this.run(`add workspace ${lease.workspaceId}`, addWorkspaceScript(this.spec.table, lease));
  }

  removeWorkspace(lease: Lease): Promise<void> {
    return this.run(`remove workspace ${lease.workspaceId}`, removeWorkspaceScript(this.spec.table, lease));
  }

  async setPorts(lease: Lease, before: readonly number[], after: readonly number[]): Promise<void> {
    const script = portsScript(this.spec.table, lease, before, after);
    if (script.trim()) await this.run(`set ports of ${lease.workspaceId}`, script);
  }

  /** Lets go of the namespace's kept nft context. */
  release(): Promise<void> {
    return netNative.nftRelease(this.ns());
  }

  private async run(what: string, script: string): Promise<void> {
    try {
      await netNative.nftRun({ ...this.ns(), script });
    } catch (err) {
      throw new DomainError('INTERNAL', `network: nft: ${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }

  private ns(): { netns?: string } {
    return this.netns ? { netns: this.netns } : {};
  }
}
