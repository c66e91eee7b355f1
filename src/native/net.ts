// native/net.c: links (rtnetlink) and nftables, each call optionally in the node's network namespace.
import type { NativePart } from './part';

export interface InNodeNamespace {
  netns?: string;
}

/** The workspace's network namespace: a pid (its /proc/<pid>/ns/net) or a path to a namespace file. */
export type WorkspaceNetns = { targetPid: number } | { targetPath: string };

export interface EnsureBridgeOptions extends InNodeNamespace {
  name: string;
  mac: string;
  addrs: string[];            // "10.88.0.1/16", "fd00::1/64"
  mtu?: number;
  forwardIpv4: boolean;       // net.ipv4.ip_forward=1 in the node's namespace
  forwardIpv6: boolean;
}

export type AttachVethOptions = InNodeNamespace & WorkspaceNetns & {
  name: string;               // node side, a port of bridge
  bridge: string;
  peerName: string;           // the workspace side, created inside its namespace
  mac: string;                // of the workspace side
  addrs: string[];            // the workspace's addresses with prefix
  gateways: string[];         // default routes
  mtu?: number;
};

export interface NetNative {
  /** Creates the bridge unless it exists, adds its addresses, brings it up. Resolves true if it existed. */
  netEnsureBridge(opts: EnsureBridgeOptions): Promise<boolean>;
  /** A veth whose peer is born in the workspace's namespace, an isolated bridge port, addresses, routes, lo up. */
  netAttachVeth(opts: AttachVethOptions): Promise<void>;
  /** Resolves false when no such link existed. */
  netDeleteLink(opts: InNodeNamespace & { name: string }): Promise<boolean>;
  /** Names of the links enslaved to a bridge ([] without the bridge). */
  netListPorts(opts: InNodeNamespace & { bridge: string }): Promise<string[]>;
  netLoopbackUp(opts: WorkspaceNetns): Promise<void>;
  /** Runs an nft script as one transaction; resolves with nft's output (JSON with json: true). */
  nftRun(opts: InNodeNamespace & { script: string; json?: boolean }): Promise<string>;
  /** Closes the kept nft context of a namespace. */
  nftRelease(opts: InNodeNamespace): Promise<void>;
}

export const netPart: NativePart<NetNative> = {
  file: 'native/net.c',
  functions: {
    netEnsureBridge: true, netAttachVeth: true, netDeleteLink: true, netListPorts: true, netLoopbackUp: true,
    nftRun: true, nftRelease: true,
  },
};
