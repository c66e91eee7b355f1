// The fetch's only way out. A sandboxed git has a network namespace with nothing but loopback; on that
// loopback the daemon serves (through sockets made in the namespace, native/netns-listen.c) a SOCKS5
// proxy for http(s) and a forwarder for git://. Every connection is checked here: the name is resolved
// by the daemon, each address is held against the deny list (the node's own addresses, loopback,
// link-local and the metadata service, the workspace pool and the operator's denied ranges), and the
// connection goes to the address that was checked, so a DNS answer cannot change between check and use.
// Why this network and not the workspace's own: docs/source.md ("The network of a fetch").
import dns from 'node:dns/promises';
import net from 'node:net';
import os from 'node:os';
import type { Logger } from 'pino';

export interface EgressRules {
  /** CIDRs never reached: the workspace pool, the operator's networkDenied. */
  deniedCidrs: string[];
  /** host:port reachable despite the rules (tests serve git on 127.0.0.1). */
  allowed: string[];
}

export class EgressRefused extends Error {
  override name = 'EgressRefused';
}

const ALWAYS_DENIED: Array<[string, number, 'ipv4' | 'ipv6']> = [
  ['0.0.0.0', 8, 'ipv4'], ['127.0.0.0', 8, 'ipv4'], ['169.254.0.0', 16, 'ipv4'], ['224.0.0.0', 4, 'ipv4'],
  ['240.0.0.0', 4, 'ipv4'], ['100.100.100.200', 32, 'ipv4'], // Alibaba's metadata service
  ['::', 128, 'ipv6'], ['::1', 128, 'ipv6'], ['fe80::', 10, 'ipv6'], ['ff00::', 8, 'ipv6'], ['fd00:ec2::254', 128, 'ipv6'],
];

/** Where a fetch may connect: a destination passes when none of its addresses is denied. */
export class EgressPolicy {
  private readonly allowed: Set<string>;

  constructor(private readonly rules: EgressRules) {
    this.allowed = new Set(rules.allowed.map((d) => d.toLowerCase()));
  }

  /** The address to connect to; EgressRefused naming the destination (never a secret) when none may be used. */
  async resolve(host: string, port: number): Promise<{ address: string; family: number }> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new EgressRefused(`port ${port} is not a port`);
    const found = net.isIP(host) ? [{ address: host, family: net.isIP(host) }] : await dns.lookup(host, { all: true }).catch(() => {
      throw new EgressRefused(`${host}: the name does not resolve`);
    });
    const denied = this.deniedList();
    // An operator's exception names an address and port exactly (sourceAllowedDestinations).
    for (const a of found) if (this.allowed.has(`${hostKey(a.address)}:${port}`)) return a;
    for (const a of found) {
      if (!denied.check(a.address, a.family === 6 ? 'ipv6' : 'ipv4')) return a;
    }
    throw new EgressRefused(`${host}:${port}: its address is one a fetch may not reach (the node, loopback, link-local, the workspaces or a denied range)`);
  }

  /** Built per check: the node's addresses change (DHCP, a new bridge). */
  private deniedList(): net.BlockList {
    const list = new net.BlockList();
    for (const [addr, prefix, type] of ALWAYS_DENIED) list.addSubnet(addr, prefix, type);
    for (const cidr of this.rules.deniedCidrs) {
      const [addr, bits] = cidr.split('/');
      const type = net.isIPv6(addr!) ? 'ipv6' : 'ipv4';
      list.addSubnet(addr!, Number(bits ?? (type === 'ipv6' ? 128 : 32)), type);
    }
    for (const addrs of Object.values(os.networkInterfaces())) {
      for (const a of addrs ?? []) list.addAddress(a.address.replace(/%.*$/, ''), a.family === 'IPv6' ? 'ipv6' : 'ipv4');
    }
    return list;
  }
}

const hostKey = (address: string): string => (net.isIPv6(address) ? `[${address}]` : address);

export interface ProxyCounters {
  connections: number;
  refused: number;
  bytesIn: number;
  /** The last error connecting to an allowed destination (ECONNREFUSED...), '' when none. */
  unreachable: string;
}

/** What one sandboxed run may reach: SOCKS5 on one fd, git:// forwarders on others. Closed with close(). */
export class FetchProxy {
  readonly counters: ProxyCounters = { connections: 0, refused: 0, bytesIn: 0, unreachable: '' };
  private readonly servers: net.Server[] = [];
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly policy: EgressPolicy, private readonly log: Logger, private readonly workspaceId: string) {}

  /** RFC 1928, CONNECT only, no authentication (the socket is reachable from this sandbox alone). */
  serveSocks(fd: number): void {
    this.serve(fd, (client) => void this.socksSession(client));
  }

  /** Every connection to fd goes to host:port (a git:// remote). */
  serveForward(fd: number, host: string, port: number): void {
    this.serve(fd, (client) => void this.connectOut(client, host, port).catch(() => client.destroy()));
  }

  close(): void {
    for (const s of this.servers) s.close();
    for (const s of this.sockets) s.destroy();
  }

  private serve(fd: number, onClient: (s: net.Socket) => void): void {
    const server = net.createServer((client) => {
      this.track(client);
      client.on('error', () => undefined);
      onClient(client);
    });
    server.on('error', (err) => this.log.warn({ workspace: this.workspaceId, err: err.message }, 'fetch proxy: listener failed'));
    server.listen({ fd });
    this.servers.push(server);
  }

  private track(s: net.Socket): void {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
  }

  private async socksSession(client: net.Socket): Promise<void> {
    try {
      const greeting = await readBytes(client, 2);
      if (greeting[0] !== 5) throw new Error('not SOCKS5');
      await readBytes(client, greeting[1]!);
      client.write(Buffer.from([5, 0]));
      const head = await readBytes(client, 4);
      if (head[1] !== 1) {
        client.end(Buffer.from([5, 7, 0, 1, 0, 0, 0, 0, 0, 0]));
        return;
      }
      let host: string;
      if (head[3] === 1) host = [...(await readBytes(client, 4))].join('.');
      else if (head[3] === 3) host = (await readBytes(client, (await readBytes(client, 1))[0]!)).toString('latin1');
      else if (head[3] === 4) host = ipv6Text(await readBytes(client, 16));
      else throw new Error('bad address type');
      const port = (await readBytes(client, 2)).readUInt16BE(0);
      await this.connectOut(client, host, port, true);
    } catch {
      client.destroy();
    }
  }

  private async connectOut(client: net.Socket, host: string, port: number, socks = false): Promise<void> {
    let target: { address: string; family: number };
    try {
      target = await this.policy.resolve(host, port);
    } catch (err) {
      this.counters.refused++;
      this.log.warn({ workspace: this.workspaceId, host, port, err: (err as Error).message }, 'source fetch: destination refused');
      if (socks) client.end(Buffer.from([5, 2, 0, 1, 0, 0, 0, 0, 0, 0]));
      else client.destroy();
      return;
    }
    const upstream = net.connect({ host: target.address, port, family: target.family });
    this.track(upstream);
    let connected = false;
    upstream.once('connect', () => {
      connected = true;
      this.counters.connections++;
      this.log.debug({ workspace: this.workspaceId, host, port, address: target.address }, 'source fetch: connected');
      if (socks) client.write(Buffer.from([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
      upstream.on('data', (chunk: Buffer) => (this.counters.bytesIn += chunk.length));
      upstream.pipe(client);
      client.pipe(upstream);
    });
    upstream.once('error', (err: NodeJS.ErrnoException) => {
      if (!connected) this.counters.unreachable = `${host}:${port}: ${err.code ?? err.message}`;
      if (socks && !connected) client.end(Buffer.from([5, 5, 0, 1, 0, 0, 0, 0, 0, 0]));
      else client.destroy();
    });
    upstream.once('close', () => client.destroy());
    client.once('close', () => upstream.destroy());
  }
}

/** Exactly n bytes from a socket that is paused between reads; what comes after stays unread. */
function readBytes(s: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (n === 0) return resolve(Buffer.alloc(0));
    const tryRead = (): void => {
      const chunk = s.read(n) as Buffer | null;
      if (chunk) {
        cleanup();
        resolve(chunk);
      }
    };
    const fail = (): void => {
      cleanup();
      reject(new Error('closed'));
    };
    const cleanup = (): void => {
      s.off('readable', tryRead);
      s.off('end', fail);
      s.off('close', fail);
    };
    s.on('readable', tryRead);
    s.once('end', fail);
    s.once('close', fail);
    tryRead();
  });
}

function ipv6Text(b: Buffer): string {
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(b.readUInt16BE(i).toString(16));
  return parts.join(':');
}
