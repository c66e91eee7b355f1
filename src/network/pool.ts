// The node's address pool: one lease per workspace, persisted in <stateDir>/network/leases.json.
// A workspace is reported attached only once its lease is on disk, so a workspace that outlives the
// daemon always finds its address again. Kernel objects may exist briefly without a lease (the write
// runs alongside them); after a crash, reconcile removes every veth and element no lease names.
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

interface Waiter {
  version: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Offset 0 is the network, 1 the bridge (gateway), the last the IPv4 broadcast. */
export const gatewayOffset = 1;
const firstWorkspaceOffset = 2;

export class AddressPool {
  // Changes apply in memory at once (so concurrent callers never see the same address free) and
  // reach the disk in the background; saved() waits for them. Versions count changes.
  private version = 0;
  private savedVersion = 0;
  private writer: Promise<void> | undefined;
  private waiters: Waiter[] = [];

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

  /** The workspace's lease: its existing one, or a new address no other lease holds. Call saved() to persist. */
  acquire(workspaceId: string, describe: (addr: { ip: string; ip6: string }) => LeaseDetails): { lease: Lease; existed: boolean } {
    const existing = this.state.leases[workspaceId];
    if (existing) return { lease: existing, existed: true };
    const offset = this.freeOffset();
    const addr = this.addressesAt(offset);
    const lease: Lease = { workspaceId, offset, ...addr, ...describe(addr) };
    this.change({ ...this.state, next: offset + 1, leases: { ...this.state.leases, [workspaceId]: lease } });
    return { lease, existed: false };
  }

  update(workspaceId: string, patch: Partial<LeaseDetails>): Lease {
    const existing = this.state.leases[workspaceId];
    if (!existing) throw new DomainError('NOT_FOUND', `workspace ${workspaceId} has no network lease`);
    const lease = { ...existing, ...patch };
    this.change({ ...this.state, leases: { ...this.state.leases, [workspaceId]: lease } });
    return lease;
  }

  /** Frees the address; false when there was no lease. */
  release(workspaceId: string): boolean {
    if (!this.state.leases[workspaceId]) return false;
    const leases = { ...this.state.leases };
    delete leases[workspaceId];
    this.change({ ...this.state, leases });
    return true;
  }

  /** Resolves once every change made so far is on disk. */
  saved(): Promise<void> {
    if (this.savedVersion >= this.version) return Promise.resolve();
    const version = this.version;
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ version, resolve, reject }));
    this.writer ??= this.writeLoop();
    return done;
  }

  private change(next: LeaseFile): void {
    this.state = next;
    this.version++;
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

  // One write at a time, each of the whole current state: changes made during a write share the next.
  private async writeLoop(): Promise<void> {
    try {
      while (this.savedVersion < this.version) {
        const version = this.version;
        await this.writeFile(JSON.stringify(this.state, null, 1));
        this.savedVersion = version;
        this.settle((w) => w.version <= version, (w) => w.resolve());
      }
    } catch (err) {
      // The next saved() writes the whole state again.
      this.settle(() => true, (w) => w.reject(err));
    } finally {
      this.writer = undefined;
    }
  }

  private settle(which: (w: Waiter) => boolean, how: (w: Waiter) => void): void {
    const now = this.waiters.filter(which);
    this.waiters = this.waiters.filter((w) => !which(w));
    for (const w of now) how(w);
  }

  // Write, flush, rename, flush the directory: a crash leaves the old file or the new, never half.
  private async writeFile(text: string): Promise<void> {
    const tmp = `${this.file}.tmp`;
    const handle = await fs.open(tmp, 'w', 0o600);
    try {
      await handle.writeFile(text);
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
