// Reading and writing cgroup control files, and the checks both cgroup drivers share.
// Every failure names the file and the errno, so "memory limit not applied" points at one write.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { DomainError, invalidArgument } from '../errors';
import type { Resources } from './cgroups';

const MIB = 1024 * 1024;
export const MAX_MEMORY_BYTES = 2 ** 50;   // 1 PiB: anything above is a unit mistake
export const MAX_CPU_MILLIS = 1024 * 1000; // 1024 cores
export const MAX_PIDS = 4194304;           // PID_MAX_LIMIT on 64-bit
export const CFS_PERIOD_US = 100000;
export const MIN_CFS_QUOTA_US = 1000;      // the kernel refuses smaller quotas

const GROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** A workspace group name: one path segment, never "." or "..", so it cannot climb out of the parent. */
export function checkGroupName(name: string, field: string): void {
  if (typeof name !== 'string' || !GROUP_NAME.test(name) || name === '..' || name === '.') {
    throw invalidArgument(field, `"${name}" is not a valid cgroup name`);
  }
}

/** The parent: one or more plain segments ("tetrix", "tetrix.slice/workspaces"). */
export function checkGroupPath(parent: string, field: string): void {
  if (typeof parent !== 'string' || parent === '') throw invalidArgument(field, 'must not be empty');
  for (const segment of parent.split('/')) checkGroupName(segment, field);
}

function checkCount(value: number, field: string, min: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw invalidArgument(field, `must be a non-negative integer, got ${value}`);
  }
  if (value !== 0 && (value < min || value > max)) {
    throw invalidArgument(field, `must be 0 (no limit) or between ${min} and ${max}, got ${value}`);
  }
}

/** The API layer validates first; this refuses what no kernel should be handed. */
export function checkLimits(limits: Resources): void {
  checkCount(limits.memoryBytes, 'resources.memory_bytes', MIB, MAX_MEMORY_BYTES);
  checkCount(limits.cpuMillis, 'resources.cpu_millis', 1, MAX_CPU_MILLIS);
  checkCount(limits.pids, 'resources.pids', 1, MAX_PIDS);
}

/** 1000 millis = one core = a full period of quota. */
export function cfsQuotaUs(cpuMillis: number): number {
  return Math.max(MIN_CFS_QUOTA_US, Math.round((cpuMillis * CFS_PERIOD_US) / 1000));
}

export function cgroupError(step: string, file: string, err: unknown, code: DomainError['code'] = 'INTERNAL'): DomainError {
  const errno = (err as NodeJS.ErrnoException)?.code ?? String(err);
  return new DomainError(code, `cgroup: ${step} ${file}: ${errno}`, { cause: err });
}

export function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException)?.code;
}

/** O_WRONLY without O_CREAT: a missing control file is ENOENT, never an attempt to create one.
 *  Synchronous inside: a control file write is an in-kernel call of microseconds, cheaper than the three
 *  thread-pool round trips of open, write and close (measured: ~1.5 ms per workspace start). */
export async function writeControl(dir: string, file: string, value: string): Promise<void> {
  const target = path.join(dir, file);
  let fd: number | undefined;
  try {
    fd = fs.openSync(target, fs.constants.O_WRONLY);
    fs.writeSync(fd, value);
  } catch (err) {
    throw cgroupError(`write "${value}" to`, target, err);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

export function readControl(dir: string, file: string): string {
  const target = path.join(dir, file);
  try {
    return fs.readFileSync(target, 'utf8');
  } catch (err) {
    throw cgroupError('read', target, err, errnoOf(err) === 'ENOENT' ? 'NOT_FOUND' : 'INTERNAL');
  }
}

export function controlExists(dir: string, file: string): boolean {
  return fs.existsSync(path.join(dir, file));
}

/** A flat-keyed file such as memory.events or memory.oom_control: "key value" per line. */
export function readKeyedValue(dir: string, file: string, key: string): number | undefined {
  for (const line of readControl(dir, file).split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k === key && v !== undefined) return Number(v);
  }
  return undefined;
}

/** Pids listed in a cgroup.procs; an already removed group lists none. */
export function listPids(dir: string): number[] {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8');
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw cgroupError('read', path.join(dir, 'cgroup.procs'), err);
  }
  return text.split('\n').filter((s) => s !== '').map(Number);
}

/** SIGKILL a pid; one that exited meanwhile is fine. */
export function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if (errnoOf(err) !== 'ESRCH') throw cgroupError('kill', `pid ${pid} in`, err);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll until `done()` or the deadline; returns whether it became done. */
export async function pollUntil(done: () => boolean, timeoutMs: number, stepMs = 10): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (done()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(stepMs);
    stepMs = Math.min(stepMs * 2, 200);
  }
}

/** mkdir that reports whether it made the directory. Synchronous inside, as writeControl. */
export async function makeGroupDir(dir: string): Promise<boolean> {
  try {
    fs.mkdirSync(dir);
    return true;
  } catch (err) {
    if (errnoOf(err) === 'EEXIST') return false;
    throw cgroupError('mkdir', dir, err);
  }
}

/** Makes a workspace's group directory, then its limits; a group whose limits fail is removed again. */
export async function createGroup<G extends { destroy(): Promise<void> }>(
  dir: string, at: { name: string; parent: string }, group: G, applyLimits: (group: G) => Promise<void>,
): Promise<G> {
  if (!(await makeGroupDir(dir))) {
    throw new DomainError('ALREADY_EXISTS', `cgroup: "${at.name}" already exists under ${at.parent}`);
  }
  try {
    await applyLimits(group);
  } catch (err) {
    await group.destroy().catch(() => undefined);
    throw err;
  }
  return group;
}

/** NOT_FOUND, naming the group, unless its directory exists. */
export function requireGroup(dir: string, at: { name: string; parent: string }): void {
  if (!fs.existsSync(dir)) throw new DomainError('NOT_FOUND', `cgroup: "${at.name}" does not exist under ${at.parent}`);
}

export function subgroupNames(dir: string): string[] {
  try {
    return fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name).sort();
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw cgroupError('list', dir, err);
  }
}

/**
 * rmdir a group and any subgroups, deepest first. rmdir answers EBUSY while killed tasks are still
 * exiting, so it is retried for a while before giving up.
 */
export async function removeGroupDir(dir: string, timeoutMs = 10000): Promise<void> {
  for (const child of subgroupNames(dir)) await removeGroupDir(path.join(dir, child), timeoutMs);
  const deadline = Date.now() + timeoutMs;
  for (let wait = 10; ; wait = Math.min(wait * 2, 200)) {
    try {
      await fsp.rmdir(dir);
      return;
    } catch (err) {
      const errno = errnoOf(err);
      if (errno === 'ENOENT') return;
      if (errno !== 'EBUSY' || Date.now() >= deadline) {
        throw cgroupError('rmdir', dir, err, errno === 'EBUSY' ? 'UNAVAILABLE' : 'INTERNAL');
      }
      await sleep(wait);
    }
  }
}
