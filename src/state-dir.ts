// The state directory belongs to one tetrixd at a time, and holds the node's small secrets.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DomainError } from './errors';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * A pid file taken with O_EXCL. A lock left by a dead daemon (kill -9) is taken over; one held by a
 * live process is refused, so two daemons never drive the same workspaces.
 */
export function acquireStateLock(stateDir: string): () => void {
  const file = path.join(stateDir, 'tetrixd.pid');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o600);
      fs.writeSync(fd, `${process.pid}\n`);
      fs.closeSync(fd);
      return () => fs.rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(fs.readFileSync(file, 'utf8').trim());
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && isAlive(holder)) {
        throw new DomainError('FAILED_PRECONDITION', `state directory ${stateDir} is held by another tetrixd (pid ${holder})`);
      }
      fs.rmSync(file, { force: true });
    }
  }
  throw new DomainError('FAILED_PRECONDITION', `could not lock state directory ${stateDir}`);
}

/** 32 random bytes kept 0600 in the state directory, created on first use. */
export function loadOrCreateSecret(file: string): Buffer {
  try {
    const st = fs.statSync(file);
    if ((st.mode & 0o077) !== 0) throw new DomainError('FAILED_PRECONDITION', `${file} is readable by group or others; chmod 600 it`);
    return fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const secret = crypto.randomBytes(32);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, secret, { mode: 0o600 });
  fs.renameSync(tmp, file);
  return secret;
}

/** A name on the node that one state dir's daemon owns: its cgroup parent, its bridge, its nft table. */
export interface NodeName {
  readonly kind: 'cgroup-parent' | 'bridge' | 'nftables-table';
  readonly name: string;
  readonly flag: string; // the setting that chooses another, for the refusal's message
}

interface ClaimRecord {
  stateDir: string;
  pid: number;
}

const claimFile = (claimsDir: string, n: NodeName): string => path.join(claimsDir, `${n.kind}-${n.name}`);

function readClaim(file: string): ClaimRecord | undefined {
  try {
    const c = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<ClaimRecord>;
    return typeof c.stateDir === 'string' ? { stateDir: c.stateDir, pid: Number(c.pid) } : undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function writeClaim(file: string, record: ClaimRecord): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(record), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

/**
 * Claims each name for this state dir, host-wide, and returns those it held no claim to before. A daemon cleans up everything under the names it owns
 * (a cgroup no record accounts for is a crash's leftover), so two state dirs must never share one: a name
 * recorded for another state dir that still exists is refused, whether or not its daemon runs now (its
 * workspaces outlive it). A claim whose state dir is gone is taken over. Claims live in /run, so they end
 * with the boot, as the cgroups and links they name do.
 */
export function claimNodeNames(claimsDir: string, stateDir: string, names: readonly NodeName[]): NodeName[] {
  fs.mkdirSync(claimsDir, { recursive: true, mode: 0o700 });
  const own = path.resolve(stateDir);
  const holders = names.map((n) => readClaim(claimFile(claimsDir, n)));
  // Every name checked before any is written: a refusal claims nothing.
  names.forEach((n, i) => {
    const holder = holders[i];
    if (holder && holder.stateDir !== own && fs.existsSync(holder.stateDir)) {
      throw new DomainError(
        'FAILED_PRECONDITION',
        `${n.kind} "${n.name}" belongs to the tetrixd of state dir ${holder.stateDir} (claimed in ${claimFile(claimsDir, n)}); give this daemon its own ${n.flag}`,
      );
    }
  });
  for (const n of names) writeClaim(claimFile(claimsDir, n), { stateDir: own, pid: process.pid });
  return names.filter((_, i) => holders[i]?.stateDir !== own);
}

/** Gives back this state dir's claims (a daemon that holds no workspace any more, or an uninstall). */
export function releaseNodeNames(claimsDir: string, stateDir: string, names: readonly NodeName[]): void {
  const own = path.resolve(stateDir);
  for (const n of names) {
    const file = claimFile(claimsDir, n);
    if (readClaim(file)?.stateDir === own) fs.rmSync(file, { force: true });
  }
}

/** The names a daemon with this config owns on the node. */
export function nodeNamesOf(config: { cgroupParent: string; network: string; networkBridge: string; networkTable: string }): NodeName[] {
  const names: NodeName[] = [{ kind: 'cgroup-parent', name: config.cgroupParent, flag: '--cgroup-parent' }];
  if (config.network === 'on') {
    names.push({ kind: 'bridge', name: config.networkBridge, flag: '--network-bridge' });
    names.push({ kind: 'nftables-table', name: config.networkTable, flag: '--network-table' });
  }
  return names;
}
