// Host-wide allocation of the unprivileged uid/gid ranges that container ids map to. Two live workspaces
// must never share a host id, even when they belong to different tetrixd instances (different state
// dirs), so the claims live in one host-wide directory (a tmpfs under /run: a reboot ends every workspace
// and every claim together).
//
// A claim is a file named after the range's base, made visible with link(2), which fails with EEXIST if
// another allocator got there first: the file system is the lock, and a claim is never half written.
// A `layout` file pins the geometry (first base, range size) so allocators with other settings refuse
// instead of handing out overlapping ranges under different names.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DomainError, invalidArgument } from '../errors';

export interface IdRange {
  base: number;
  count: number;
}

export interface IdRangeOwner {
  stateDir: string;
  workspaceId: string;
}

export interface IdRangeAllocatorOptions {
  dir?: string;          // host-wide claims directory, default /run/tetrix/idmap
  firstBase?: number;    // default 1_000_000; at least 65536
  count?: number;        // ids per range, default 65536
  maxSlots?: number;     // default: as many ranges as fit below 2^31
  subidFiles?: string[]; // ranges handed to real users, never overlapped; default /etc/subuid, /etc/subgid
}

interface Claim extends IdRangeOwner, IdRange {
  pid: number;
  claimedAt: string;
}

const UID_LIMIT = 2 ** 32 - 1; // (uid_t)-1 is "no id"
const SIGNED_LIMIT = 2 ** 31;   // some tools misread ids above this; the default stays below
const LAYOUT_FILE = 'layout';

/** [start, end) ranges from subuid(5)-style files: "name:start:count" per line. */
function readSubidRanges(files: string[]): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  for (const file of files) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue; // no such file: no reserved ranges
    }
    for (const line of text.split('\n')) {
      const m = /^[^:#\s][^:]*:(\d+):(\d+)\s*$/.exec(line);
      if (m) ranges.push([Number(m[1]), Number(m[1]) + Number(m[2])]);
    }
  }
  return ranges;
}

function checkPositiveInteger(value: number, field: string, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) throw invalidArgument(field, `must be an integer >= ${min}, got ${value}`);
}

export class IdRangeAllocator {
  private readonly dir: string;
  private readonly firstBase: number;
  private readonly count: number;
  private readonly maxSlots: number;
  private readonly subidFiles: string[];
  private readonly held = new Map<string, number>();
  private readonly loadedStateDirs = new Set<string>();

  constructor(opts: IdRangeAllocatorOptions = {}) {
    this.dir = opts.dir ?? '/run/tetrix/idmap';
    this.firstBase = opts.firstBase ?? 1_000_000;
    this.count = opts.count ?? 65536;
    // Container ids 0..65535 may belong to host users and system accounts; never map onto them.
    checkPositiveInteger(this.firstBase, 'idmap.first_base', 65536);
    checkPositiveInteger(this.count, 'idmap.count', 1);
    this.maxSlots = opts.maxSlots ?? Math.max(1, Math.floor((SIGNED_LIMIT - this.firstBase) / this.count));
    checkPositiveInteger(this.maxSlots, 'idmap.max_slots', 1);
    if (this.firstBase + this.maxSlots * this.count > UID_LIMIT) {
      throw invalidArgument('idmap.max_slots', `ranges would run past the last valid id ${UID_LIMIT - 1}`);
    }
    this.subidFiles = opts.subidFiles ?? ['/etc/subuid', '/etc/subgid'];
  }

  /**
   * Claims the lowest free range for a workspace. A workspace that already holds one gets it again, so a
   * start retried after a crash does not leak a range. RESOURCE_EXHAUSTED when none is left.
   */
  allocate(owner: IdRangeOwner): IdRange {
    this.prepareDir();
    const held = this.heldBy(owner);
    if (held !== undefined) return { base: held, count: this.count };
    const claimed = new Set(this.claimFiles());
    const reserved = readSubidRanges(this.subidFiles);
    for (let slot = 0; slot < this.maxSlots; slot++) {
      const base = this.firstBase + slot * this.count;
      if (claimed.has(String(base)) || reserved.some(([s, e]) => base < e && s < base + this.count)) continue;
      if (this.tryClaim(base, owner)) {
        this.held.set(ownerKey(owner), base);
        return { base, count: this.count };
      }
    }
    throw new DomainError('RESOURCE_EXHAUSTED', `idmap: all ${this.maxSlots} uid/gid ranges under ${this.dir} are claimed`);
  }

  /** Frees a range; releasing one that is not claimed is a no-op, so cleanup can repeat. */
  release(base: number): void {
    if (!Number.isSafeInteger(base) || base < this.firstBase || (base - this.firstBase) % this.count !== 0) {
      throw invalidArgument('uid_base', `${base} is not the base of a range of this allocator`);
    }
    for (const [key, held] of this.held) if (held === base) this.held.delete(key);
    try {
      fs.unlinkSync(path.join(this.dir, String(base)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw idmapError('release', base, err);
    }
  }

  /** The ranges one state dir holds: after a restart, claims no record accounts for can be released. */
  claimedBy(stateDir: string): Array<{ base: number; workspaceId: string }> {
    const wanted = path.resolve(stateDir);
    const out: Array<{ base: number; workspaceId: string }> = [];
    for (const name of this.claimFiles()) {
      const claim = this.readClaim(name);
      if (claim && claim.stateDir === wanted) out.push({ base: claim.base, workspaceId: claim.workspaceId });
    }
    return out.sort((a, b) => a.base - b.base);
  }

  /** The range this owner already holds. Reading every claim costs a file per workspace on the node, so
   *  a state dir's claims are read once and then followed in memory (one daemon owns a state dir). */
  private heldBy(owner: IdRangeOwner): number | undefined {
    const stateDir = path.resolve(owner.stateDir);
    if (!this.loadedStateDirs.has(stateDir)) {
      for (const claim of this.claimedBy(stateDir)) this.held.set(ownerKey({ stateDir, workspaceId: claim.workspaceId }), claim.base);
      this.loadedStateDirs.add(stateDir);
    }
    const key = ownerKey(owner);
    const base = this.held.get(key);
    if (base === undefined) return undefined;
    if (fs.existsSync(path.join(this.dir, String(base)))) return base;
    this.held.delete(key); // removed behind our back: claim afresh
    return undefined;
  }

  private claimFiles(): string[] {
    try {
      return fs.readdirSync(this.dir).filter((n) => /^\d+$/.test(n));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw idmapError('list', this.dir, err);
    }
  }

  private readClaim(name: string): Claim | undefined {
    try {
      return JSON.parse(fs.readFileSync(path.join(this.dir, name), 'utf8')) as Claim;
    } catch {
      return undefined; // released meanwhile, or not ours to read
    }
  }

  /** Creates the directory and pins the geometry, or checks it against the pinned one. */
  private prepareDir(): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const layout = JSON.stringify({ firstBase: this.firstBase, count: this.count });
    const file = path.join(this.dir, LAYOUT_FILE);
    if (!fs.existsSync(file)) this.publish(file, `${layout}\n`);
    const pinned = fs.readFileSync(file, 'utf8').trim();
    if (pinned !== layout) {
      throw new DomainError('FAILED_PRECONDITION', `idmap: ${this.dir} holds ranges laid out as ${pinned}, this node is configured for ${layout}`);
    }
  }

  private tryClaim(base: number, owner: IdRangeOwner): boolean {
    const claim: Claim = {
      stateDir: path.resolve(owner.stateDir),
      workspaceId: owner.workspaceId,
      base,
      count: this.count,
      pid: process.pid,
      claimedAt: new Date().toISOString(),
    };
    return this.publish(path.join(this.dir, String(base)), `${JSON.stringify(claim)}\n`);
  }

  /** Writes a temp file completely, then links it into place; false if the name was taken. */
  private publish(target: string, content: string): boolean {
    const temp = path.join(this.dir, `.tmp-${process.pid}-${crypto.randomBytes(6).toString('hex')}`);
    fs.writeFileSync(temp, content, { mode: 0o600, flag: 'wx' });
    try {
      fs.linkSync(temp, target);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw idmapError('claim', target, err);
    } finally {
      fs.unlinkSync(temp);
    }
  }
}

function ownerKey(owner: IdRangeOwner): string {
  return `${path.resolve(owner.stateDir)}\0${owner.workspaceId}`;
}

function idmapError(step: string, what: string | number, err: unknown): DomainError {
  return new DomainError('INTERNAL', `idmap: ${step} ${what}: ${(err as NodeJS.ErrnoException).code ?? err}`, { cause: err });
}
