// cgroup v1: one hierarchy per controller at <root>/<controller>, the workspace group at
// <root>/<controller>/<parent>/<name> in each. The memory hierarchy is the record of which groups exist:
// it is created first and removed last, so a crash in between never hides a leftover from list().
import fs from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';
import type { CgroupDriver, CgroupPlacement, Resources, WorkspaceCgroup } from './cgroups';
import {
  CFS_PERIOD_US, cfsQuotaUs, checkGroupName, checkLimits, controlExists, createGroup, killPid, listPids, makeGroupDir, requireGroup,
  pollUntil, readControl, readKeyedValue, removeGroupDir, subgroupNames, writeControl,
} from './cgroupfs';

const REQUIRED = ['memory', 'cpu', 'pids'] as const;
const OPTIONAL = ['cpuacct', 'freezer'] as const;
type Controller = (typeof REQUIRED)[number] | (typeof OPTIONAL)[number];

/** A mounted hierarchy; co-mounted controllers (cpu,cpuacct) share one. */
interface Hierarchy {
  controllers: Controller[];
  mount: string; // realpath of the mount, e.g. /sys/fs/cgroup/cpu,cpuacct
}

function findHierarchies(root: string): Hierarchy[] {
  const byMount = new Map<string, Hierarchy>();
  for (const controller of [...REQUIRED, ...OPTIONAL]) {
    let mount: string;
    try {
      mount = fs.realpathSync(path.join(root, controller));
    } catch {
      if ((REQUIRED as readonly string[]).includes(controller)) {
        throw new DomainError('FAILED_PRECONDITION', `cgroup: v1 controller "${controller}" is not mounted under ${root}`);
      }
      continue;
    }
    const known = byMount.get(mount);
    if (known) known.controllers.push(controller);
    else byMount.set(mount, { controllers: [controller], mount });
  }
  return [...byMount.values()]; // memory first: it is first in REQUIRED
}

export class CgroupV1Driver implements CgroupDriver {
  readonly mode = 'v1' as const;
  private readonly hierarchies: Hierarchy[];

  constructor(root: string, private readonly parent: string) {
    this.hierarchies = findHierarchies(root);
  }

  async create(name: string, limits: Resources): Promise<WorkspaceCgroup> {
    checkGroupName(name, 'cgroup name');
    checkLimits(limits);
    await this.ensureParent();
    const group = this.group(name);
    return createGroup(group.dirOf('memory'), { name, parent: this.parent }, group, (g) => g.setUp(limits));
  }

  open(name: string): WorkspaceCgroup {
    checkGroupName(name, 'cgroup name');
    const group = this.group(name);
    requireGroup(group.dirOf('memory'), { name, parent: this.parent });
    return group;
  }

  list(): string[] {
    return subgroupNames(path.join(this.hierarchies[0].mount, this.parent));
  }

  async removeParent(): Promise<void> {
    // The memory hierarchy last: it is the record of what exists (see the top of this file).
    for (const h of [...this.hierarchies].reverse()) await removeGroupDir(path.join(h.mount, this.parent));
  }

  private group(name: string): V1Group {
    return new V1Group(name, this.hierarchies.map((h) => ({ ...h, dir: path.join(h.mount, this.parent, name) })));
  }

  /** The parent is Tetrix's own; release notification stays off on it too (CVE-2022-0492). */
  private async ensureParent(): Promise<void> {
    for (const h of this.hierarchies) {
      let dir = h.mount;
      for (const segment of this.parent.split('/')) {
        dir = path.join(dir, segment);
        if (await makeGroupDir(dir)) await writeControl(dir, 'notify_on_release', '0');
      }
    }
  }
}

interface GroupDir extends Hierarchy {
  dir: string;
}

class V1Group implements WorkspaceCgroup {
  constructor(readonly name: string, private readonly dirs: GroupDir[]) {}

  dirOf(controller: Controller): string {
    const found = this.dirs.find((d) => d.controllers.includes(controller));
    if (!found) throw new DomainError('INTERNAL', `cgroup: no v1 hierarchy for ${controller}`);
    return found.dir;
  }

  private has(controller: Controller): boolean {
    return this.dirs.some((d) => d.controllers.includes(controller));
  }

  /** Called right after the memory dir was made: the other hierarchies, then limits. */
  async setUp(limits: Resources): Promise<void> {
    for (const d of this.dirs) {
      await makeGroupDir(d.dir);
      // A new group inherits notify_on_release from its parent; pin it off (CVE-2022-0492).
      await writeControl(d.dir, 'notify_on_release', '0');
    }
    await this.writeLimits(limits);
  }

  private async writeLimits(limits: Resources): Promise<void> {
    if (limits.memoryBytes > 0) {
      const memory = this.dirOf('memory');
      await writeControl(memory, 'memory.limit_in_bytes', String(limits.memoryBytes));
      // Present only with swap accounting; memory+swap = memory means the workspace cannot swap.
      if (controlExists(memory, 'memory.memsw.limit_in_bytes')) {
        await writeControl(memory, 'memory.memsw.limit_in_bytes', String(limits.memoryBytes));
      }
    }
    if (limits.cpuMillis > 0) {
      const cpu = this.dirOf('cpu');
      await writeControl(cpu, 'cpu.cfs_period_us', String(CFS_PERIOD_US));
      await writeControl(cpu, 'cpu.cfs_quota_us', String(cfsQuotaUs(limits.cpuMillis)));
    }
    if (limits.pids > 0) await writeControl(this.dirOf('pids'), 'pids.max', String(limits.pids));
  }

  procsFiles(): string[] {
    return this.dirs.map((d) => path.join(d.dir, 'cgroup.procs'));
  }

  placement(): CgroupPlacement {
    return { cgroupTasks: this.dirs.map((d) => path.join(d.dir, 'tasks')), cgroupDir: '' };
  }

  /** The oom_kill line of memory.oom_control (kernel >= 4.13). */
  oomKillCount(): number {
    return readKeyedValue(this.dirOf('memory'), 'memory.oom_control', 'oom_kill') ?? 0;
  }

  memoryPeak(): number | undefined {
    return Number(readControl(this.dirOf('memory'), 'memory.max_usage_in_bytes').trim());
  }

  async destroy(): Promise<void> {
    await this.killAll();
    // Memory last: it is the record that the group exists (see top of file).
    for (const d of [...this.dirs].reverse()) await removeGroupDir(d.dir);
  }

  private listedPids(): number[] {
    return [...new Set(this.dirs.flatMap((d) => listPids(d.dir)))];
  }

  /**
   * Freeze, SIGKILL every listed pid, thaw. Frozen tasks cannot fork or exit between the listing and
   * the kill, so nothing escapes and no pid is recycled under us. Without a freezer, repeat until empty.
   */
  private async killAll(): Promise<void> {
    const freezer = this.has('freezer') && fs.existsSync(this.dirOf('freezer')) ? this.dirOf('freezer') : undefined;
    if (freezer) await setFreezerState(freezer, 'FROZEN');
    try {
      this.listedPids().forEach(killPid);
    } finally {
      if (freezer) await setFreezerState(freezer, 'THAWED');
    }
    const empty = await pollUntil(() => {
      const left = this.listedPids();
      left.forEach(killPid);
      return left.length === 0;
    }, 10000);
    if (!empty) {
      throw new DomainError('UNAVAILABLE', `cgroup: processes of "${this.name}" survived SIGKILL for 10s`);
    }
  }
}

/** FREEZING can linger for tasks in uninterruptible sleep; give it a second, then kill anyway. */
async function setFreezerState(dir: string, state: 'FROZEN' | 'THAWED'): Promise<void> {
  await writeControl(dir, 'freezer.state', state);
  if (state === 'FROZEN') await pollUntil(() => readControl(dir, 'freezer.state').trim() === 'FROZEN', 1000);
}
