// The network half of the addon (native/net.c), typed. It is the same .node that src/sandbox/native.ts
// loads; this file only declares the functions net.c registers on it.
import { native } from '../sandbox/native';

/** Every call may name the node's network namespace (a path); without it, the process's own. */
interface InNodeNamespace {
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

export const netNative = native as unknown as NetNative;
