// Resource limits for workspaces: one interface, a driver for cgroup v1 and one for v2, chosen by what
// the host has mounted. Hybrid hosts (v1 controllers plus a controller-less cgroup2 at unified/) use v1.
//
// CVE-2022-0492: Tetrix never writes release_agent, and v1 groups it creates get notify_on_release=0.
import fs from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';
import { checkGroupPath } from './cgroupfs';
import { CgroupV1Driver } from './cgroups-v1';
import { CgroupV2Driver } from './cgroups-v2';

/** A workspace's limits, the one type for the request, the record and the cgroup. 0 in a request: the node
 *  default (a record always holds the limit in force); to a driver 0 means no limit (it writes nothing),
 *  but a workspace's group never has a 0: see boundedLimits. */
export interface Resources {
  memoryBytes: number;
  cpuMillis: number;     // 1000 = one core
  pids: number;
}

/** The limits of a workspace's group: every one a real bound. Issue 13: a workspace whose request named
 *  none ran with memory.limit_in_bytes 2^63 and no CPU quota; the lifecycle fills in the node defaults,
 *  and this refuses a 0 that got past it rather than start a workspace without a bound. */
export function boundedLimits(limits: Resources): Resources {
  for (const [field, value] of [['resources.memory_bytes', limits.memoryBytes], ['resources.cpu_millis', limits.cpuMillis], ['resources.pids', limits.pids]] as const) {
    if (!(value > 0)) throw new DomainError('INVALID_ARGUMENT', `${field}: a workspace's cgroup must have a limit, got ${value}`);
  }
  return limits;
}

/** How spawn puts a new workspace into its group without a migration under the kernel's global lock:
 *  on v1 the child writes itself into each hierarchy's `tasks`, on v2 it is cloned into the directory. */
export interface CgroupPlacement {
  cgroupTasks: string[];
  cgroupDir: string;
}

export interface WorkspaceCgroup {
  readonly name: string;
  /** The cgroup.procs files a new process's pid is written to (one per v1 hierarchy, one on v2). */
  procsFiles(): string[];
  placement(): CgroupPlacement;
  /** How often the kernel's OOM killer killed a process in this group. */
  oomKillCount(): number;
  /** Highest memory use in bytes, when the kernel reports it (v1 max_usage, v2 memory.peak). */
  memoryPeak(): number | undefined;
  /** Kill every process in the group, then remove the group everywhere. Idempotent. */
  destroy(): Promise<void>;
}

export interface CgroupDriver {
  readonly mode: 'v1' | 'v2';
  /** Rejects with ALREADY_EXISTS if the group exists, INVALID_ARGUMENT for bad names or limits. */
  create(name: string, limits: Resources): Promise<WorkspaceCgroup>;
  /** An existing group (after a daemon restart); NOT_FOUND if it does not exist. */
  open(name: string): WorkspaceCgroup;
  /** Names of the workspace groups under the parent. */
  list(): string[];
  /** Removes the parent group everywhere, with any empty group left below it (an uninstall's last step). */
  removeParent(): Promise<void>;
}


const CGROUP2_SUPER_MAGIC = 0x63677270;
const CGROUP_SUPER_MAGIC = 0x27e0eb;

function fsType(dir: string): number | undefined {
  try {
    return fs.statfsSync(dir).type;
  } catch {
    return undefined;
  }
}

/**
 * `parent` is the group all workspace groups live under ("tetrix"); `root` is where cgroups are
 * mounted. cgroup2 at root (a pure v2 host) → v2; a v1 memory hierarchy at root/memory → v1.
 */
export function detectCgroupDriver(parent: string, root = '/sys/fs/cgroup'): CgroupDriver {
  checkGroupPath(parent, 'cgroup parent');
  if (fsType(root) === CGROUP2_SUPER_MAGIC) return new CgroupV2Driver(root, parent);
  if (fsType(path.join(root, 'memory')) === CGROUP_SUPER_MAGIC) return new CgroupV1Driver(root, parent);
  throw new DomainError(
    'FAILED_PRECONDITION',
    `cgroup: found neither cgroup2 mounted at ${root} nor a v1 memory hierarchy at ${path.join(root, 'memory')}`,
  );
}
