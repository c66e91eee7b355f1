// Links: the node's bridge and one veth per workspace, made through rtnetlink in the addon.
import crypto from 'node:crypto';
import { DomainError } from '../errors';
import { NativeError } from '../native';
import { netNative, type WorkspaceNetns } from '../native';
import type { Lease } from './pool';

/** Node-side veths are "twv" + 12 hex digits of the workspace id's hash: 15 characters, IFNAMSIZ-1. */
export const hostLinkPrefix = 'twv';
export const workspaceLinkName = 'eth0';

export function hostLinkName(workspaceId: string): string {
  return hostLinkPrefix + crypto.createHash('sha256').update(workspaceId).digest('hex').slice(0, 12);
}

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

  /** Deletes a node-side veth (its peer goes with it); false when it was already gone. */
  remove(hostLink: string): Promise<boolean> {
    return call('delete the veth', netNative.netDeleteLink({ ...this.ns(), name: hostLink }));
  }

  /** The workspace veths on the bridge now. */
  async workspacePorts(): Promise<string[]> {
    const ports = await call('list bridge ports', netNative.netListPorts({ ...this.ns(), bridge: this.bridge.name }));
    return ports.filter((name) => name.startsWith(hostLinkPrefix));
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
