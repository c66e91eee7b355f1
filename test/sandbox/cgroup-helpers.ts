// Shared by the cgroup tests: unique parents, processes placed into a group, and the leftover check.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const V1_CONTROLLERS = ['memory', 'cpu', 'pids', 'cpuacct', 'freezer'];
export const CGROUP_ROOT = '/sys/fs/cgroup';

export function uniqueParent(tag: string): string {
  return `tetrix-test-${tag}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

export function isCgroup2(dir: string): boolean {
  try {
    return fs.statfsSync(dir).type === 0x63677270;
  } catch {
    return false;
  }
}

/** Where a real cgroup2 tree is mounted here: the root on a pure v2 host, unified/ on a hybrid one. */
export const V2_ROOT = isCgroup2(CGROUP_ROOT) ? CGROUP_ROOT : path.join(CGROUP_ROOT, 'unified');

/**
 * Runs `script` with /bin/sh after the shell wrote its own pid into every procs file, so the
 * workload is inside the group from its first instruction (no race with a later move).
 */
export function spawnInGroup(procsFiles: string[], script: string): ChildProcess & { stderrText: () => string } {
  const child = spawn('/bin/sh', ['-c', `for f in "$@"; do echo $$ > "$f" || exit 99; done; ${script}`, 'sh', ...procsFiles], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return Object.assign(child, { stderrText: () => stderr });
}

export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

export async function waitFor(check: () => boolean, timeoutMs = 10000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return check();
}

export function procsIn(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Every directory a test's parent left anywhere (v1 hierarchies and the v2 tree). */
export function leftovers(parent: string): string[] {
  const roots = [...V1_CONTROLLERS.map((c) => path.join(CGROUP_ROOT, c)), V2_ROOT];
  return [...new Set(roots.map((r) => path.join(r, parent)))].filter((d) => fs.existsSync(d));
}

/** Teardown: kill what a failed test left in the parent's groups, then remove them, deepest first. */
export async function removeParent(parent: string): Promise<void> {
  for (const dir of leftovers(parent)) await removeTree(dir);
}

async function removeTree(dir: string): Promise<void> {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) await removeTree(path.join(dir, e.name));
  }
  if (fs.existsSync(path.join(dir, 'freezer.state'))) fs.writeFileSync(path.join(dir, 'freezer.state'), 'THAWED');
  for (const pid of procsIn(dir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await waitFor(() => {
    try {
      fs.rmdirSync(dir);
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOENT';
    }
  }, 5000);
}
