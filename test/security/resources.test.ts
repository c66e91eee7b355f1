// Resource isolation through the real daemon: a fork bomb, a memory hog and a CPU spinner each stay
// inside their own cgroup, while a neighbouring workspace keeps working and the daemon keeps answering.
// Every bound below comes from the kernel's own counters (pids.current, pids.events, memory.oom_control,
// cpuacct.usage / cpu.stat), never from how fast our code runs.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { cgroupDirsOf, startDaemon, type Daemon } from '../helpers/daemon';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';

const MIB = 1024 * 1024;
const NEIGHBOUR = 'neighbour';
const UID_RANGE = 65536;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const busybox = (id: string, script: string, resources: StartWorkspaceRequest['resources']): StartWorkspaceRequest => ({
  id,
  ownerId: 'alice',
  image: 'builtin:busybox',
  command: ['/bin/sh', '-c', script],
  resources,
});

const contentPath = (d: Daemon, id: string, file: string): string => path.join(d.stateDir, 'workspaces', id, 'content', file);

function readContent(d: Daemon, id: string, file: string): string {
  try {
    return fs.readFileSync(contentPath(d, id, file), 'utf8');
  } catch {
    return '';
  }
}

async function waitUntil(what: string, pred: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

const waitForFile = (d: Daemon, id: string, file: string): Promise<void> =>
  waitUntil(`${file} in ${id}`, () => fs.existsSync(contentPath(d, id, file)));

// --- the neighbour: appends a counter every 100 ms ---------------------------------------------

async function startNeighbour(d: Daemon): Promise<Workspace__Output> {
  const script = 'i=0; while :; do i=$((i+1)); echo $i >> /workspace/ticks; sleep 0.1; done';
  const w = await d.start(busybox(NEIGHBOUR, script, { memoryBytes: 64 * MIB, cpuMillis: 500, pids: 32 }));
  await waitUntil('the neighbour to tick', () => ticksOf(d) > 0);
  return w;
}

/** The last complete line of the neighbour's counter file. */
function ticksOf(d: Daemon): number {
  const text = readContent(d, NEIGHBOUR, 'ticks');
  const lines = text.slice(0, text.lastIndexOf('\n') + 1).trim().split('\n');
  return Number(lines[lines.length - 1]) || 0;
}

// --- cgroup files, v1 or v2 ----------------------------------------------------------------------

/** A control file of a workspace's group from whichever hierarchy has it; undefined once the group is gone. */
function cgroupFile(d: Daemon, id: string, file: string): string | undefined {
  for (const dir of cgroupDirsOf(path.join(d.cgroupParent, id))) {
    try {
      return fs.readFileSync(path.join(dir, file), 'utf8');
    } catch {
      // not in this hierarchy, or removed meanwhile
    }
  }
  return undefined;
}

function keyed(text: string | undefined, key: string): number | undefined {
  for (const line of (text ?? '').split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k === key && v !== undefined) return Number(v);
  }
  return undefined;
}

const numberIn = (text: string | undefined): number | undefined => (text === undefined ? undefined : Number(text.trim()));

function pidsOf(d: Daemon, id: string): number[] {
  return (cgroupFile(d, id, 'cgroup.procs') ?? '').split('\n').filter(Boolean).map(Number);
}

/** CPU time the group used, in seconds, and the CFS bandwidth counters (cpuacct.usage on v1, cpu.stat on v2). */
function cpuCounters(d: Daemon, id: string): { usageS: number; periods: number; throttled: number } {
  const stat = cgroupFile(d, id, 'cpu.stat');
  const usageUsec = keyed(stat, 'usage_usec');
  const usageS = usageUsec !== undefined ? usageUsec / 1e6 : numberIn(cgroupFile(d, id, 'cpuacct.usage'))! / 1e9;
  return { usageS, periods: keyed(stat, 'nr_periods') ?? 0, throttled: keyed(stat, 'nr_throttled') ?? 0 };
}

// --- processes seen from the host ---------------------------------------------------------------

/** Field 22 of /proc/<pid>/stat: with the pid, it names one process even after the pid is reused. */
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[0] === 'Z' ? undefined : rest[19];
  } catch {
    return undefined;
  }
}

const PF_EXITING = 0x4;

/** Gone, a zombie, or past the point of exit where the kernel stops showing its cgroup (PF_EXITING). */
function isExiting(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[0] === 'Z' || (Number(rest[6]) & PF_EXITING) !== 0;
  } catch {
    return true;
  }
}

/**
 * Live host processes whose real uid lies in [base, base + 65536), with their pids group. Zombies are
 * left out: the kernel shows an exited task in the root group, though its pid stays charged to its own.
 */
function processesOfUidRange(base: number): Array<{ pid: number; pidsCgroup: string }> {
  const found: Array<{ pid: number; pidsCgroup: string }> = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = fs.readFileSync(`/proc/${entry}/status`, 'utf8').split('\n');
      if (status.some((l) => /^State:\s+Z/.test(l))) continue;
      const uidLine = status.find((l) => l.startsWith('Uid:'))!;
      const uid = Number(uidLine.split(/\s+/)[1]);
      if (uid < base || uid >= base + UID_RANGE) continue;
      const cgroups = fs.readFileSync(`/proc/${entry}/cgroup`, 'utf8').split('\n');
      const line = cgroups.find((l) => /^\d+:([^:]*,)?pids(,[^:]*)?:/.test(l)) ?? cgroups.find((l) => l.startsWith('0::')) ?? '';
      if (isExiting(Number(entry))) continue; // v1 shows an exiting task in "/"; its pid is still charged to its group
      found.push({ pid: Number(entry), pidsCgroup: line.slice(line.lastIndexOf(':') + 1) });
    } catch {
      // exited while we looked
    }
  }
  return found;
}

// --- the daemon and the neighbour while an attack runs ------------------------------------------

interface Vitals {
  roundTrips: number;
  rpcErrors: string[];
  ticks: number[];
}

/** Round-trips GetWorkspace and ListWorkspaces and reads the neighbour's counter until stopped. */
function watchVitals(d: Daemon, attacker: string, sample: () => void = () => undefined): { stop(): Promise<Vitals> } {
  const vitals: Vitals = { roundTrips: 0, rpcErrors: [], ticks: [ticksOf(d)] };
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        await d.get(attacker);
        await d.list();
        vitals.roundTrips += 1;
      } catch (err) {
        vitals.rpcErrors.push(err instanceof Error ? err.message : String(err));
      }
      sample();
      vitals.ticks.push(ticksOf(d));
      await sleep(100);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return vitals;
    },
  };
}

async function checkNeighbourAndDaemon(t: Test, d: Daemon, vitals: Vitals): Promise<void> {
  t.same(vitals.rpcErrors, [], 'every GetWorkspace/ListWorkspaces during the attack succeeded');
  t.ok(vitals.roundTrips >= 3, `the daemon answered throughout (${vitals.roundTrips} round-trips)`);
  const first = vitals.ticks[0];
  const last = vitals.ticks[vitals.ticks.length - 1];
  t.ok(last > first, `the neighbour kept counting during the attack (${first} -> ${last})`);
  await waitUntil('the neighbour to count after the attack', () => ticksOf(d) > last);
  t.pass(`the neighbour keeps counting after the attack (${ticksOf(d)})`);
  t.equal((await d.get(NEIGHBOUR)).state, 'WORKSPACE_STATE_RUNNING', 'the neighbour is still RUNNING');
}

async function tearDownAll(t: Test, d: Daemon, ids: string[]): Promise<void> {
  for (const id of ids) await d.teardown(id);
  for (const id of ids) t.same(cgroupDirsOf(path.join(d.cgroupParent, id)), [], `no cgroup of ${id} is left`);
}

// --- the attacks ---------------------------------------------------------------------------------

t.test('a fork bomb stops at its own pids limit; the host, the neighbour and the daemon are unaffected', async (t) => {
  const d = await startDaemon(t);
  await startNeighbour(d);
  let neighbourBaseline = 0;
  for (let i = 0; i < 10; i++) {
    neighbourBaseline = Math.max(neighbourBaseline, numberIn(cgroupFile(d, NEIGHBOUR, 'pids.current')) ?? 0);
    await sleep(50);
  }

  const LIMIT = 64;
  // Every bomb process forks two more and, once both are gone, forks again: the group stays at its limit
  // for as long as the attack runs. stderr goes to a file so each refused fork ("can't fork") is recorded
  // inside; the final exec needs no fork.
  const script = 'exec 2>>/workspace/fork-errors; touch /workspace/started; b() { while :; do b & b & wait; done; }; b & exec sleep 600';
  const bomb = await d.start(busybox('bomb', script, { memoryBytes: 256 * MIB, cpuMillis: 1000, pids: LIMIT }));
  await waitForFile(d, 'bomb', 'started');

  const seen = new Map<string, { pid: number; start: string }>(); // every process ever in the bomb's group
  let peakTasks = 0;
  let peakNeighbourTasks = 0;
  let outsideGroup: string[] = [];
  let peakInRange = 0;
  let hostForkFailures = 0;
  const sample = (): void => {
    peakTasks = Math.max(peakTasks, numberIn(cgroupFile(d, 'bomb', 'pids.current')) ?? 0);
    peakNeighbourTasks = Math.max(peakNeighbourTasks, numberIn(cgroupFile(d, NEIGHBOUR, 'pids.current')) ?? 0);
    for (const pid of pidsOf(d, 'bomb')) {
      const start = startTimeOf(pid);
      if (start) seen.set(`${pid}@${start}`, { pid, start });
    }
    const inRange = processesOfUidRange(bomb.hostUidBase);
    peakInRange = Math.max(peakInRange, inRange.length);
    outsideGroup = outsideGroup.concat(inRange.filter((p) => p.pidsCgroup !== `/${d.cgroupParent}/bomb`).map((p) => `${p.pid} in ${p.pidsCgroup}`));
    if (spawnSync('/bin/true').status !== 0) hostForkFailures += 1;
  };
  const refusedForks = (): number => keyed(cgroupFile(d, 'bomb', 'pids.events'), 'max') ?? 0;
  const watch = watchVitals(d, 'bomb', sample);
  await waitUntil('the bomb to hit its limit', () => refusedForks() > 0);
  const refusedBefore = refusedForks();
  await sleep(3000);
  const refusedAfter = refusedForks();
  const vitals = await watch.stop();

  t.ok(peakTasks <= LIMIT, `the bomb's group never held more than ${LIMIT} tasks (peak pids.current ${peakTasks})`);
  t.ok(peakTasks >= LIMIT - 4, `the bomb did grow to its limit (peak pids.current ${peakTasks})`);
  t.ok(refusedAfter > refusedBefore, `the kernel kept refusing its forks throughout (pids.events max ${refusedBefore} -> ${refusedAfter})`);
  t.match(readContent(d, 'bomb', 'fork-errors'), /can't fork/, 'the refused forks show up inside the workspace');
  t.ok(peakInRange <= LIMIT, `no more than ${LIMIT} host processes ran as the bomb's uids (peak ${peakInRange})`);
  t.same(outsideGroup, [], "every process of the bomb's uid range was inside its group");
  t.equal(hostForkFailures, 0, 'the host could start processes throughout');
  t.equal(keyed(cgroupFile(d, NEIGHBOUR, 'pids.events'), 'max'), 0, 'the neighbour never had a fork refused');
  t.ok(peakNeighbourTasks <= neighbourBaseline + 1, `the neighbour's task count stayed its own (peak ${peakNeighbourTasks}, baseline ${neighbourBaseline})`);
  await checkNeighbourAndDaemon(t, d, vitals);

  const stopped = await d.stop('bomb', 0);
  t.equal(stopped.state, 'WORKSPACE_STATE_STOPPED', 'the bomb stops');
  await tearDownAll(t, d, ['bomb']);
  const survivors = [...seen.values()].filter((p) => startTimeOf(p.pid) === p.start);
  t.same(survivors, [], `none of the ${seen.size} processes seen in the bomb's group is left`);
  t.same(processesOfUidRange(bomb.hostUidBase), [], "no process runs as the bomb's uids");
  await tearDownAll(t, d, [NEIGHBOUR]);
});

/** Reads the memory group's files until the group is gone, keeping the last reading for the report. */
function watchMemory(d: Daemon, id: string): { last: Record<string, string>; stop(): void } {
  const last: Record<string, string> = {};
  const files = ['memory.oom_control', 'memory.events', 'memory.max_usage_in_bytes', 'memory.memsw.max_usage_in_bytes', 'memory.peak', 'memory.failcnt', 'memory.memsw.failcnt'];
  const timer = setInterval(() => {
    for (const file of files) {
      const text = cgroupFile(d, id, file);
      if (text !== undefined) last[file] = text.trim();
    }
  }, 10);
  return { last, stop: () => clearInterval(timer) };
}

const peakMemory = (last: Record<string, string>): number =>
  Math.max(...['memory.max_usage_in_bytes', 'memory.memsw.max_usage_in_bytes', 'memory.peak'].map((f) => Number(last[f] ?? 0)));

t.test('a memory hog is OOM-killed inside its own group and reported as OOM_KILLED', async (t) => {
  const d = await startDaemon(t);
  await startNeighbour(d);
  const LIMIT = 32 * MIB;
  const resources = { memoryBytes: LIMIT, cpuMillis: 1000, pids: 64 };
  // The shell holds ~200 MB in a variable: the workload itself is the OOM killer's victim; init survives it.
  // It waits a second first, so the daemon and the neighbour are watched before and during the attack.
  const hog = "sleep 1; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived > /workspace/survived";
  const memory = watchMemory(d, 'hog');
  await d.start(busybox('hog', hog, resources));
  const watch = watchVitals(d, 'hog');
  const ended = await d.waitFor('hog', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  memory.stop();
  const vitals = await watch.stop();
  const files = JSON.stringify(memory.last);

  t.equal(ended.reason, 'STOP_REASON_OOM_KILLED', `the reason is OOM_KILLED (cgroup files last read: ${files})`);
  t.equal(ended.signal, 'SIGKILL', 'the workload died of SIGKILL');
  t.ok(keyed(memory.last['memory.oom_control'] ?? memory.last['memory.events'], 'oom_kill')! >= 1, `the kill was counted in the hog's own group (${files})`);
  t.ok(peakMemory(memory.last) <= LIMIT, `the hog never held more than its ${LIMIT} bytes (peak ${peakMemory(memory.last)})`);
  t.equal(readContent(d, 'hog', 'survived'), '', 'the hog did not get its memory');
  await checkNeighbourAndDaemon(t, d, vitals);

  // The hog is a child: the OOM killer takes it, the workload lives on and exits 0; the kill is still reported.
  // The child marks itself the preferred victim (raising oom_score_adj needs no privilege): which task the
  // kernel picks is its heuristic, not ours, and under load it once took the workload's shell instead.
  const child = "touch /workspace/started; sh -c 'echo 1000 > /proc/self/oom_score_adj; x=$(head -c 200000000 /dev/zero | tr \"\\0\" a)'; echo $? > /workspace/hog-status; exit 0";
  const childMemory = watchMemory(d, 'hog-child');
  await d.start(busybox('hog-child', child, resources));
  const childEnded = await d.waitFor('hog-child', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  childMemory.stop();
  t.equal(readContent(d, 'hog-child', 'hog-status').trim(), '137', 'the hogging child was SIGKILLed (status 137)');
  t.equal(childEnded.exitCode, 0, 'the workload itself exited 0');
  t.equal(childEnded.reason, 'STOP_REASON_OOM_KILLED', `an OOM kill of any process of the workspace is reported (${JSON.stringify(childMemory.last)})`);

  t.equal((await d.get(NEIGHBOUR)).state, 'WORKSPACE_STATE_RUNNING', 'the neighbour is still RUNNING');
  t.equal(keyed(cgroupFile(d, NEIGHBOUR, 'memory.oom_control') ?? cgroupFile(d, NEIGHBOUR, 'memory.events'), 'oom_kill'), 0, 'nothing of the neighbour was OOM-killed');
  await tearDownAll(t, d, ['hog', 'hog-child', NEIGHBOUR]);
});

t.test('a CPU spinner is held to its quota while the neighbour keeps working', async (t) => {
  const d = await startDaemon(t);
  await startNeighbour(d);
  const CPU_MILLIS = 200;
  const script = 'touch /workspace/started; while :; do :; done & while :; do :; done';
  await d.start(busybox('spinner', script, { memoryBytes: 64 * MIB, cpuMillis: CPU_MILLIS, pids: 16 }));
  await waitForFile(d, 'spinner', 'started');
  await waitUntil('the spinner to be throttled', () => cpuCounters(d, 'spinner').throttled > 0);

  const watch = watchVitals(d, 'spinner');
  const before = cpuCounters(d, 'spinner');
  const began = process.hrtime.bigint();
  await sleep(2000);
  const after = cpuCounters(d, 'spinner');
  const windowS = Number(process.hrtime.bigint() - began) / 1e9;
  const vitals = await watch.stop();

  const used = after.usageS - before.usageS;
  const quotaS = CPU_MILLIS / 1000 / 10; // per 100 ms CFS period
  const periods = after.periods - before.periods;
  const byWindow = (CPU_MILLIS / 1000) * windowS * 1.5;
  const byPeriods = quotaS * (periods + 1) * 1.5;
  t.ok(used > 0, `the spinner ran (${used.toFixed(3)} CPU-s)`);
  t.ok(used <= byWindow, `over ${windowS.toFixed(2)} s it used ${used.toFixed(3)} CPU-s, within 1.5 x its ${CPU_MILLIS} millicores (${byWindow.toFixed(3)})`);
  t.ok(used <= byPeriods, `and within 1.5 x its quota for the ${periods} CFS periods the kernel counted (${byPeriods.toFixed(3)})`);
  t.ok(after.throttled > before.throttled, `the kernel throttled it (${after.throttled - before.throttled} periods)`);
  await checkNeighbourAndDaemon(t, d, vitals);
  await tearDownAll(t, d, ['spinner', NEIGHBOUR]);
});

// Issue 13, item 7: a request that named no resources got no memory or CPU limit at all (memory.limit_in_bytes
// 2^63), so one workspace could take the node. The same two attacks, with nothing requested: the node's
// defaults hold them, counted by the kernel.
t.test('a workspace that names no limits is held by the node defaults: its memory hog is OOM-killed, its spinner throttled', async (t) => {
  const DEFAULT_MEMORY = 32 * MIB;
  const DEFAULT_CPU_MILLIS = 200;
  const d = await startDaemon(t, ['--default-memory-bytes', String(DEFAULT_MEMORY), '--default-cpu-millis', String(DEFAULT_CPU_MILLIS)]);
  const hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived > /workspace/survived";
  const memory = watchMemory(d, 'hog-default');
  await d.start(busybox('hog-default', hog, undefined));
  const ended = await d.waitFor('hog-default', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  memory.stop();
  t.equal(ended.reason, 'STOP_REASON_OOM_KILLED', `the hog was OOM-killed (cgroup files last read: ${JSON.stringify(memory.last)})`);
  t.ok(peakMemory(memory.last) <= DEFAULT_MEMORY, `it never held more than the default ${DEFAULT_MEMORY} bytes (peak ${peakMemory(memory.last)})`);
  t.equal(readContent(d, 'hog-default', 'survived'), '', 'the hog did not get its memory');

  await d.start(busybox('spinner-default', 'touch /workspace/started; while :; do :; done & while :; do :; done', undefined));
  await waitForFile(d, 'spinner-default', 'started');
  await waitUntil('the spinner to be throttled', () => cpuCounters(d, 'spinner-default').throttled > 0);
  const before = cpuCounters(d, 'spinner-default');
  await sleep(2000);
  const after = cpuCounters(d, 'spinner-default');
  const periods = after.periods - before.periods;
  const byPeriods = (DEFAULT_CPU_MILLIS / 1000 / 10) * (periods + 1) * 1.5;
  t.ok(after.usageS - before.usageS <= byPeriods, `two spinning loops used ${(after.usageS - before.usageS).toFixed(3)} CPU-s over ${periods} CFS periods, within 1.5 x the default quota (${byPeriods.toFixed(3)})`);
  await tearDownAll(t, d, ['hog-default', 'spinner-default']);
});
