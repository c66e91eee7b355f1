// Links: the node's bridge and one veth per workspace, made through rtnetlink in the addon.
import crypto from 'node:crypto';
import { DomainError } from '../errors';
import { NativeError } from '../native';
import { netNative, type WorkspaceNetns } from '../native';
import type { Lease } from './pool';

const sha256Hex = (text: string): string => crypto.createHash('sha256').update(text).digest('hex');

/**
 * Node-side veths are "tw" + 5 hex digits of the bridge's name + 8 of the workspace id's (sha256): 15
 * characters, IFNAMSIZ-1. The bridge part makes each node network's ports its own, so that two of them in
 * one namespace (daemons side by side, each with its bridge) never make or delete each other's veths, and
 * each one's bridge rules match only its own ports (this kernel has no nft `meta ibrname` to tell bridges
 * apart). Before, every veth was "twv" + 12 hex digits of the id: leases made then keep that name.
 */
export const hostLinkPrefix = (bridge: string): string => 'tw' + sha256Hex(bridge).slice(0, 5);
export const legacyHostLinkPrefix = 'twv';
export const workspaceLinkName = 'eth0';

/** The part of a node-side veth's name that comes from the workspace id. */
export const hostLinkIdPart = (workspaceId: string): string => sha256Hex(workspaceId).slice(0, 8);

export function hostLinkName(bridge: string, workspaceId: string): string {
  return hostLinkPrefix(bridge) + hostLinkIdPart(workspaceId);
}

/** A workspace veth of the network on this bridge: its prefix, or the old one of a lease from before. */
export const isHostLinkOf = (bridge: string, name: string): boolean => name.startsWith(hostLinkPrefix(bridge)) || name.startsWith(legacyHostLinkPrefix);

/** Locally administered, derived from the address: unique on the bridge while the lease is. */
export function workspaceMac(ip: string): string {
  return ['02', '54', ...ip.split('.').map((b) => Number(b).toString(16).padStart(2, '0'))].join(':');
}

/** A fixed bridge address, so the gateway's MAC never changes under a workspace's ARP cache. */
export function bridgeMac(bridge: string): string {
  const h = crypto.createHash('sha256').update(`bridge:${bridge}`).digest();
  return ['02', '54', 'ff', ...[h[0], h[1], h[2]].map((b) => (b ?? 0).toString(16).padStart(2, '0'))].join(':');
}

/** A pid (its /proc/<pid>/ns/net) or a path to a network namespace file. */
export type NetnsRef = number | string;

export function workspaceNetns(ref: NetnsRef): WorkspaceNetns {
  return typeof ref === 'number' ? { targetPid: ref } : { targetPath: ref };
}

export interface BridgeSpec {
  name: string;
  addrs: string[];     // gateway addresses with the subnet's prefix
  mtu?: number;
  ipv6: boolean;
}

export class Links {
  /** netns: the node's namespace as a path, or undefined for the process's own. */
  constructor(private readonly netns: string | undefined, private readonly bridge: BridgeSpec) {}

  /** Creates or adopts the bridge and turns forwarding on in the node's namespace. */
  async ensureBridge(): Promise<void> {
    await call('create the bridge', netNative.netEnsureBridge({
      ...this.ns(),
      name: this.bridge.name,
      mac: bridgeMac(this.bridge.name),
      addrs: this.bridge.addrs,
      forwardIpv4: true,
      forwardIpv6: this.bridge.ipv6,
      ...(this.bridge.mtu ? { mtu: this.bridge.mtu } : {}),
    }));
  }

  async attach(lease: Lease, target: NetnsRef, gateway: { ip: string; ip6: string }, prefix: { v4: number; v6: number }): Promise<void> {
    const addrs = [`${lease.ip}/${prefix.v4}`];
    const gateways = [gateway.ip];
    if (lease.ip6) {
      addrs.push(`${lease.ip6}/${prefix.v6}`);
      gateways.push(gateway.ip6);
    }
    await call('attach the workspace', netNative.netAttachVeth({
      ...this.ns(),
      ...workspaceNetns(target),
      name: lease.hostLink,
      bridge: this.bridge.name,
      peerName: workspaceLinkName,
      mac: lease.mac,
      addrs,
      gateways,
      ...(this.bridge.mtu ? { mtu: this.bridge.mtu } : {}),
    }));
  }

  /** The node-side veth name of a workspace on this bridge. */
  hostLinkOf(workspaceId: string): string {
    return hostLinkName(this.bridge.name, workspaceId);
  }

  /** Deletes a node-side veth (its peer goes with it); false when it was already gone. */
  remove(hostLink: string): Promise<boolean> {
    return call('delete the veth', netNative.netDeleteLink({ ...this.ns(), name: hostLink }));
  }

  /** The workspace veths on the bridge now. */
  async workspacePorts(): Promise<string[]> {
    const ports = await call('list bridge ports', netNative.netListPorts({ ...this.ns(), bridge: this.bridge.name }));
    return ports.filter((name) => isHostLinkOf(this.bridge.name, name));
  }

  private ns(): { netns?: string } {
    return this.netns ? { netns: this.netns } : {};
  }
}

/** NONE networking: the namespace keeps only its loopback, brought up. */
export function loopbackUp(target: NetnsRef): Promise<void> {
  return call('bring up loopback', netNative.netLoopbackUp(workspaceNetns(target)));
}

// The workspace process being gone is the caller's problem to report; anything else is ours.
async function call<T>(what: string, op: Promise<T>): Promise<T> {
  try {
    return await op;
  } catch (err) {
    if (err instanceof NativeError && err.step === 'open workspace netns' && (err.code === 'ENOENT' || err.code === 'ESRCH')) {
      throw new DomainError('FAILED_PRECONDITION', `network: ${what}: the workspace's process is gone`, { cause: err });
    }
    const detail = err instanceof Error ? err.message : String(err);
    throw new DomainError('INTERNAL', `network: ${what}: ${detail}`, { cause: err });
  }
}
