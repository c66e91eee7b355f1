// cgroup v2: one tree; workspace groups at <root>/<parent>/<name>. The parent holds no processes (the
// "no internal processes" rule) and enables cpu, memory and pids for its children via subtree_control.
import fs from 'node:fs';
import path from 'node:path';
import { DomainError } from '../errors';
import type { CgroupDriver, CgroupPlacement, Resources, WorkspaceCgroup } from './cgroups';
import {
  CFS_PERIOD_US, cfsQuotaUs, checkGroupName, checkLimits, controlExists, createGroup, errnoOf, killPid, listPids, requireGroup,
  makeGroupDir, pollUntil, readControl, readKeyedValue, removeGroupDir, subgroupNames, writeControl,
} from './cgroupfs';

const WANTED = ['cpu', 'memory', 'pids'] as const;
type Controller = (typeof WANTED)[number];

function words(dir: string, file: string): string[] {
  return readControl(dir, file).trim().split(/\s+/).filter((w) => w !== '');
}

export class CgroupV2Driver implements CgroupDriver {
  readonly mode = 'v2' as const;
  private readonly parentDir: string;

  constructor(private readonly root: string, private readonly parent: string) {
    this.parentDir = path.join(root, parent);
  }

  async create(name: string, limits: Resources): Promise<WorkspaceCgroup> {
    checkGroupName(name, 'cgroup name');
    checkLimits(limits);
    await this.ensureParent();
    this.requireControllers(limits);
    const group = new V2Group(name, path.join(this.parentDir, name));
    return createGroup(group.dir, { name, parent: this.parent }, group, (g) => g.writeLimits(limits));
  }

  open(name: string): WorkspaceCgroup {
    checkGroupName(name, 'cgroup name');
    const dir = path.join(this.parentDir, name);
    requireGroup(dir, { name, parent: this.parent });
    return new V2Group(name, dir);
  }

  list(): string[] {
    return subgroupNames(this.parentDir);
  }

  async removeParent(): Promise<void> {
    await removeGroupDir(this.parentDir);
  }

  /** Controllers the parent hands to workspace groups. */
  enabledControllers(): string[] {
    return words(this.parentDir, 'cgroup.subtree_control');
  }

  /** Each level of the parent path enables, for its children, what it has itself. */
  private async ensureParent(): Promise<void> {
    let dir = this.root;
    for (const segment of this.parent.split('/')) {
      dir = path.join(dir, segment);
      await makeGroupDir(dir);
      await enableControllers(dir);
    }
  }

  /** Without the controller a limit would silently not apply; refuse instead. */
  private requireControllers(limits: Resources): void {
    const needed: Array<[Controller, number]> = [['memory', limits.memoryBytes], ['cpu', limits.cpuMillis], ['pids', limits.pids]];
    const enabled = this.enabledControllers();
    for (const [controller, value] of needed) {
      if (value > 0 && !enabled.includes(controller)) {
        throw new DomainError(
          'FAILED_PRECONDITION',
          `cgroup: v2 controller "${controller}" is not available under ${this.parentDir} (enabled: ${enabled.join(' ') || 'none'})`,
        );
      }
    }
  }
}

async function enableControllers(dir: string): Promise<void> {
  const available = words(dir, 'cgroup.controllers');
  const enabled = words(dir, 'cgroup.subtree_control');
  const missing = WANTED.filter((c) => available.includes(c) && !enabled.includes(c));
  if (missing.length > 0) await writeControl(dir, 'cgroup.subtree_control', missing.map((c) => `+${c}`).join(' '));
}

class V2Group implements WorkspaceCgroup {
  constructor(readonly name: string, readonly dir: string) {}

  async writeLimits(limits: Resources): Promise<void> {
    if (limits.memoryBytes > 0) {
      await writeControl(this.dir, 'memory.max', String(limits.memoryBytes));
      // No swapping past the limit, as memsw does on v1.
      if (controlExists(this.dir, 'memory.swap.max')) await writeControl(this.dir, 'memory.swap.max', '0');
    }
    if (limits.cpuMillis > 0) {
      await writeControl(this.dir, 'cpu.max', `${cfsQuotaUs(limits.cpuMillis)} ${CFS_PERIOD_US}`);
    }
    if (limits.pids > 0) await writeControl(this.dir, 'pids.max', String(limits.pids));
  }

  procsFiles(): string[] {
    return [path.join(this.dir, 'cgroup.procs')];
  }

  placement(): CgroupPlacement {
    return { cgroupTasks: [], cgroupDir: this.dir };
  }

  /** memory.events counts for the whole subtree; absent when memory is not enabled (no limit, no kills). */
  oomKillCount(): number {
    if (!controlExists(this.dir, 'memory.events')) return 0;
    return readKeyedValue(this.dir, 'memory.events', 'oom_kill') ?? 0;
  }

  /** memory.peak exists from Linux 5.19. */
  memoryPeak(): number | undefined {
    if (!controlExists(this.dir, 'memory.peak')) return undefined;
    return Number(readControl(this.dir, 'memory.peak').trim());
  }

  async destroy(): Promise<void> {
    if (!fs.existsSync(this.dir)) return;
    await this.killAll();
    await removeGroupDir(this.dir);
  }

  private populated(): boolean {
    if (!fs.existsSync(this.dir)) return false;
    return readKeyedValue(this.dir, 'cgroup.events', 'populated') === 1;
  }

  /** cgroup.kill (Linux 5.14) kills the whole subtree atomically, forks included. */
  private async killAll(): Promise<void> {
    if (controlExists(this.dir, 'cgroup.kill')) await writeControl(this.dir, 'cgroup.kill', '1');
    else await this.freezeAndKill();
    const empty = await pollUntil(() => !this.populated(), 10000);
    if (!empty) throw new DomainError('UNAVAILABLE', `cgroup: processes of "${this.name}" survived SIGKILL for 10s`);
  }

  /** Before 5.14: freeze so nothing forks or exits between listing and killing, kill, thaw. */
  private async freezeAndKill(): Promise<void> {
    await writeControl(this.dir, 'cgroup.freeze', '1');
    try {
      await pollUntil(() => readKeyedValue(this.dir, 'cgroup.events', 'frozen') === 1, 1000);
      for (const dir of descendants(this.dir)) listPids(dir).forEach(killPid);
    } finally {
      await writeControl(this.dir, 'cgroup.freeze', '0').catch((err) => {
        if (errnoOf(err.cause) !== 'ENOENT') throw err;
      });
    }
  }
}

function descendants(dir: string): string[] {
  return [dir, ...subgroupNames(dir).flatMap((child) => descendants(path.join(dir, child)))];
}
