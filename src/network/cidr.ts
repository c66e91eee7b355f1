// Address arithmetic for the node's subnets: IPv4 as 32-bit numbers, IPv6 as bigints.
import net from 'node:net';
import { invalidArgument } from '../errors';

export interface Subnet4 {
  readonly text: string;     // canonical "10.88.0.0/16"
  readonly network: number;  // first address
  readonly prefix: number;
  readonly size: number;     // addresses in the subnet
}

export interface Subnet6 {
  readonly text: string;
  readonly network: bigint;
  readonly prefix: number;
}

export function parseIpv4(text: string): number | undefined {
  if (!net.isIPv4(text)) return undefined;
  return text.split('.').reduce((acc, part) => acc * 256 + Number(part), 0);
}

export function formatIpv4(n: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join('.');
}

export function parseIpv6(text: string): bigint | undefined {
  if (!net.isIPv6(text) || text.includes('.') || text.includes('%')) return undefined;
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

export function formatIpv6(n: bigint): string {
  const groups = Array.from({ length: 8 }, (_, i) => ((n >> BigInt(112 - 16 * i)) & 0xffffn).toString(16));
  // The URL parser prints the canonical compressed form (RFC 5952).
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}

export function parseSubnet4(field: string, text: string): Subnet4 {
  const [addr, len, extra] = text.split('/');
  const network = parseIpv4(addr ?? '');
  const prefix = Number(len);
  if (network === undefined || extra !== undefined || !/^\d+$/.test(len ?? '') || prefix > 32) {
    throw invalidArgument(field, `"${text}" is not an IPv4 CIDR such as 10.88.0.0/16`);
  }
  const size = 2 ** (32 - prefix);
  if (network % size !== 0) throw invalidArgument(field, `"${text}" has host bits set`);
  return { text: `${formatIpv4(network)}/${prefix}`, network, prefix, size };
}

export function parseSubnet6(field: string, text: string): Subnet6 {
  const [addr, len, extra] = text.split('/');
  const network = parseIpv6(addr ?? '');
  const prefix = Number(len);
  if (network === undefined || extra !== undefined || !/^\d+$/.test(len ?? '') || prefix > 128) {
    throw invalidArgument(field, `"${text}" is not an IPv6 CIDR such as fd00:7e7a::/64`);
  }
  if (network & ((1n << BigInt(128 - prefix)) - 1n)) throw invalidArgument(field, `"${text}" has host bits set`);
  return { text: `${formatIpv6(network)}/${prefix}`, network, prefix };
}

/** An operator's denied range or a single address, either family, in nft's notation. */
export function parseRange(field: string, text: string): { family: 4 | 6; text: string } {
  const bare = !text.includes('/');
  if (text.includes(':')) {
    const s = parseSubnet6(field, bare ? `${text}/128` : text);
    return { family: 6, text: s.prefix === 128 ? formatIpv6(s.network) : s.text };
  }
  const s = parseSubnet4(field, bare ? `${text}/32` : text);
  return { family: 4, text: s.prefix === 32 ? formatIpv4(s.network) : s.text };
}

export function contains4(subnet: Subnet4, addr: number): boolean {
  return addr >= subnet.network && addr < subnet.network + subnet.size;
}
