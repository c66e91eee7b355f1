// The node's address pool: one lease per workspace, persisted in <stateDir>/network/leases.json.
// A lease is written before any kernel object exists for it, so after a crash every veth and rule
// Tetrix may have created is named by some lease, and reconcile can remove it.
import fs from 'node:fs/promises';
import path from 'node:path';
import { DomainError } from '../errors';
import { formatIpv4, formatIpv6, type Subnet4, type Subnet6 } from './cidr';

export interface Lease {
  readonly workspaceId: string;
  readonly offset: number;             // host number inside the subnet; the IPv6 address uses the same
  readonly ip: string;
  readonly ip6: string;                // '' when the node has no IPv6 subnet
  readonly hostLink: string;           // the node-side veth
  readonly mac: string;                // the workspace-side eth0
  readonly hostname: string;
  readonly ports: readonly number[];   // exposed TCP ports, sorted
}

/** What the caller decides about a lease once its address is known. */
export type LeaseDetails = Pick<Lease, 'hostLink' | 'mac' | 'hostname' | 'ports'>;

interface LeaseFile {
  version: 1;
  subnet: string;
  subnet6: string;
  next: number;                        // where the next search starts: addresses are not reused at once
  leases: Record<string, Lease>;
}

/** Offset 0 is the network, 1 the bridge (gateway), the last the IPv4 broadcast. */
export const gatewayOffset = 1;
const firstWorkspaceOffset = 2;

export class AddressPool {
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly file: string,
    private readonly subnet: Subnet4,
    private readonly subnet6: Subnet6 | undefined,
    private state: LeaseFile,
  ) {}

  static async open(stateDir: string, subnet: Subnet4, subnet6?: Subnet6): Promise<AddressPool> {
    if (subnet.size < 4) throw new DomainError('INVALID_ARGUMENT', `subnet: ${subnet.text} has no room for workspaces`);
    if (subnet6 && subnet6.prefix > 128 - (32 - subnet.prefix)) {
      throw new DomainError('INVALID_ARGUMENT', `subnet6: ${subnet6.text} is smaller than ${subnet.text}; use a /${128 - (32 - subnet.prefix)} or larger`);
    }
    const dir = path.join(stateDir, 'network');
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, 'leases.json');
    const state = await readLeaseFile(file, subnet, subnet6);
    return new AddressPool(file, subnet, subnet6, state);
  }

  get gateway(): { ip: string; ip6: string } {
    return this.addressesAt(gatewayOffset);
  }

  get(workspaceId: string): Lease | undefined {
    return this.state.leases[workspaceId];
  }

  all(): Lease[] {
    return Object.values(this.state.leases);
  }

  /** The workspace's lease: its existing one, or a new address no other lease holds. */
  acquire(workspaceId: string, describe: (addr: { ip: string; ip6: string }) => LeaseDetails): Promise<{ lease: Lease; existed: boolean }> {
    return this.serialized(async () => {
      const existing = this.state.leases[workspaceId];
      if (existing) return { lease: existing, existed: true };
      const offset = this.freeOffset();
      const addr = this.addressesAt(offset);
      const lease: Lease = { workspaceId, offset, ...addr, ...describe(addr) };
      await this.save({ ...this.state, next: offset + 1, leases: { ...this.state.leases, [workspaceId]: lease } });
      return { lease, existed: false };
    });
  }

  update(workspaceId: string, patch: Partial<LeaseDetails>): Promise<Lease> {
    return this.serialized(async () => {
      const existing = this.state.leases[workspaceId];
      if (!existing) throw new DomainError('NOT_FOUND', `workspace ${workspaceId} has no network lease`);
      const lease = { ...existing, ...patch };
      await this.save({ ...this.state, leases: { ...this.state.leases, [workspaceId]: lease } });
      return lease;
    });
  }

  /** Frees the address; false when there was no lease. */
  release(workspaceId: string): Promise<boolean> {
    return this.serialized(async () => {
      if (!this.state.leases[workspaceId]) return false;
      const leases = { ...this.state.leases };
      delete leases[workspaceId];
      await this.save({ ...this.state, leases });
      return true;
    });
  }

  private addressesAt(offset: number): { ip: string; ip6: string } {
    return {
      ip: formatIpv4(this.subnet.network + offset),
      ip6: this.subnet6 ? formatIpv6(this.subnet6.network + BigInt(offset)) : '',
    };
  }

  private freeOffset(): number {
    const used = new Set(Object.values(this.state.leases).map((l) => l.offset));
    const last = this.subnet.size - 2;
    const count = last - firstWorkspaceOffset + 1;
    const start = Math.min(Math.max(this.state.next, firstWorkspaceOffset), last);
    for (let i = 0; i < count; i++) {
      const offset = firstWorkspaceOffset + ((start - firstWorkspaceOffset + i) % count);
      if (!used.has(offset)) return offset;
    }
    throw new DomainError('RESOURCE_EXHAUSTED', `network: every address of ${this.subnet.text} is leased`);
  }

  // One writer at a time: each change is computed from the state the previous one left.
  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  // Write, flush, rename, flush the directory: a crash leaves the old file or the new, never half.
  private async save(next: LeaseFile): Promise<void> {
    const tmp = `${this.file}.tmp`;
    const handle = await fs.open(tmp, 'w', 0o600);
    try {
      await handle.writeFile(JSON.stringify(next, null, 1));
      await handle.datasync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, this.file);
    const dir = await fs.open(path.dirname(this.file), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.state = next;
  }
}

async function readLeaseFile(file: string, subnet: Subnet4, subnet6: Subnet6 | undefined): Promise<LeaseFile> {
  const fresh: LeaseFile = { version: 1, subnet: subnet.text, subnet6: subnet6?.text ?? '', next: firstWorkspaceOffset, leases: {} };
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return fresh;
    throw err;
  }
  let parsed: LeaseFile;
  try {
    parsed = JSON.parse(text) as LeaseFile;
    if (parsed.version !== 1 || typeof parsed.leases !== 'object' || parsed.leases === null) throw new Error('unknown layout');
  } catch (err) {
    // Starting empty could hand a running workspace's address to another one.
    throw new DomainError('DATA_LOSS', `network: ${file} is unreadable (${(err as Error).message}); move it away only once no workspace runs`);
  }
  const leases = Object.keys(parsed.leases).length;
  if (leases > 0 && (parsed.subnet !== subnet.text || parsed.subnet6 !== (subnet6?.text ?? ''))) {
    throw new DomainError('FAILED_PRECONDITION', `network: ${leases} leases are from subnet ${parsed.subnet} ${parsed.subnet6}; the configured subnet can change only once no workspace runs`);
  }
  return { ...parsed, subnet: subnet.text, subnet6: subnet6?.text ?? '' };
}
