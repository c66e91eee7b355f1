// The workspace lifecycle: CREATING -> RUNNING -> STOPPING -> STOPPED (or FAILED), then teardown.
// Every transition is persisted before it is announced, and every resource a start acquires is
// released by the step that failed, by the exit handler, by teardown, or by recover() after a crash.
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { DomainError } from '../errors';
import { workspaceDir, workspaceLayout } from '../layout';
import { nextState } from './states';
import type { WorkspaceStore } from './store';
import { isFinal, newStatus, type Reason, type Resources, type State, type WorkspaceRecord, type WorkspaceSpec } from './types';
import { NativeError, isProgramFault, type AuthorizeRestore, type BackupBinding, type BackupOutcome, type BackupProgressReport, type ImageRef, type ImageRunConfig, type InitExitRecord, type Launched, type OpenedOutput, type ProcessExit, type Sandbox, type WorkloadSignal, type WorkspaceBackups, type WorkspaceLogs, type WorkspaceNetwork, type WorkspaceStorage } from './ports';
import { allSettledOrThrow } from '../promises';
import type { ProvenancePublisher } from './adapters/provenance';
import type { TaskEvent } from '../prebuild/tasks';
import { ContentInit, isContentFailure } from './content-init';
import type { ContentStatus } from './types';
import type { WorkspacePrebuildTrees, WorkspaceSource } from './ports';

export interface WorkspaceServiceOptions {
  stateDir: string;
  defaultGraceMs: number;
  store: WorkspaceStore;
  sandbox: Sandbox;
  log: Logger;
  specKey: Buffer;            // HMAC key: spec digests must not let anyone guess env values
  defaultResources: Resources; // each limit a request leaves at 0; every one > 0, so no workspace is unbounded
  logs?: WorkspaceLogs;
  network?: WorkspaceNetwork;
  backups?: WorkspaceBackups;
  provenance?: ProvenancePublisher;
  storage?: WorkspaceStorage;   // encrypted, size-limited volumes (src/storage); without it, plain dirs
  source?: WorkspaceSource;
  prebuildTrees?: WorkspacePrebuildTrees; // absent: a start from a prebuild restores its snapshot
}

interface Runtime {
  process: Launched;
  running: boolean;
  exited: Promise<void>;
  killTimer?: NodeJS.Timeout;
}

/** A start under way: what its steps have acquired so far. */
interface Starting {
  record: WorkspaceRecord;
  image: ImageRef;
  restoring: OpenedBackup | undefined;
  /** The content status the record starts with (a prebuild snapshot's verification). */
  content: ContentStatus;
  /** Our ends of the output, held until spawn took them. */
  opened: number[];
  output?: OpenedOutput;
  launched?: Launched;
}

type OpenedBackup = { roots: string[]; binding: BackupBinding | undefined; bytes?: number; files?: number };

const START_INTERVAL_MS = 13;
const RELEASES_AT_ONCE = 4;
const PREBUILD_INTERRUPTED = 'prebuild interrupted by a daemon restart: its task channel does not survive one; run it again';

/**
 * Where the crash tests kill the daemon (TETRIX_TEST_CRASH_AT=<point>): each is a moment where a
 * half-done operation must be finished or undone by recover(). A no-op unless that variable names it.
 */
export type CrashPoint = 'after-ids' | 'after-volume' | 'after-rootfs' | 'after-cgroup' | 'after-spawn' | 'after-network' | 'mid-stop' | 'after-stopped' | 'mid-teardown' | 'mid-backup' | 'after-key-erase';
const crashAt = process.env.TETRIX_TEST_CRASH_AT;
function crashPoint(point: CrashPoint): void {
  if (crashAt === point) process.kill(process.pid, 'SIGKILL');
}

/** Issue 13: a workspace asking for no limit got none (memory.limit_in_bytes 2^63); each 0 becomes the default. */
function withDefaultResources(spec: WorkspaceSpec, defaults: Resources): WorkspaceSpec {
  const r = spec.resources;
  return {
    ...spec,
    resources: {
      memoryBytes: r.memoryBytes || defaults.memoryBytes,
      cpuMillis: r.cpuMillis || defaults.cpuMillis,
      pids: r.pids || defaults.pids,
      diskBytes: r.diskBytes || defaults.diskBytes,
      diskInodes: r.diskInodes || defaults.diskInodes,
    },
  };
}

export class WorkspaceService {
  readonly events = new EventEmitter();
  private readonly records = new Map<string, WorkspaceRecord>();
  private readonly runtimes = new Map<string, Runtime>();
  private readonly inFlight = new Map<string, Promise<unknown>>();
  // Backups under way, per workspace: a teardown waits for them before it deletes anything.
  private readonly backupsRunning = new Map<string, Set<Promise<unknown>>>();
  // A burst of starts runs two at a time, and begins at most 77 a second: the same total work, but the
  // event loop keeps room for the API instead of queueing its calls behind start after start.
  // bench/density, 200 at once (load average ~3): 4 slots: 54-65 starts/s, ListWorkspaces p50 30-38 ms;
  // 2 slots: 38/s, p50 7.5 ms; 1 slot: 35/s, p50 10 ms. Quiet, 2 slots unpaced: 75-93/s with the loop
  // 80-95% busy and the slowest List at 67-89 ms. Quiet (2026-12-07, with starts' slow steps off the loop
  // since): every 20 ms 4.11 s for 200 (48.6/s, the pacer's bound); every 13 ms 2.98 s (67/s), slowest
  // List 34 ms; 3 slots every 12 or 10 ms, or 4 unpaced: 3.06-3.67 s, slowest List 40-75 ms.
  private readonly startSlots = limitConcurrency(2, START_INTERVAL_MS);
  // Releases (cgroup removal, unmounts, the directory) run four at a time: a burst of 200 teardowns
  // unthrottled finished in 0.9 s but held the event loop for up to 160 ms at a stretch (bench/density).
  private readonly releaseSlots = limitConcurrency(RELEASES_AT_ONCE);

  private readonly content: ContentInit;

  constructor(private readonly o: WorkspaceServiceOptions) {
    this.content = new ContentInit({ ...o, save: (record) => { o.store.updateStatus(record.spec.id, record.status); this.emit(record); } });
    this.events.setMaxListeners(0);
  }

  get(id: string): WorkspaceRecord {
    const record = this.records.get(id);
    if (!record) throw new DomainError('NOT_FOUND', `workspace "${id}" not found`);
    return this.withDiskUsage(record);
  }

  find(id: string): WorkspaceRecord | undefined {
    return this.records.get(id);
  }

  list(): WorkspaceRecord[] {
    return [...this.records.values()].map((r) => this.withDiskUsage(r));
  }

  /** The volume's usage as of now (statfs, no I/O), or as it was when it closed. */
  private withDiskUsage(record: WorkspaceRecord): WorkspaceRecord {
    const disk = this.o.storage?.usage(record.spec.id);
    if (disk) record.status.disk = disk;
    return record;
  }

  workspaceDir(id: string): string {
    return workspaceDir(this.o.stateDir, id);
  }

  /**
   * Idempotent on spec.id: the same spec returns the existing workspace, another spec is refused. A spec
   * with restoreFrom needs authorizeRestore: the caller's access decision on the backup (src/api/auth.ts).
   */
  async start(asked: WorkspaceSpec, access: { authorizeRestore?: AuthorizeRestore } = {}): Promise<WorkspaceRecord> {
    // The record (and so GetWorkspace) holds the limits in force, not the zeros asked for.
    const spec = withDefaultResources(asked, this.o.defaultResources);
    const digest = this.digest(spec);
    const pending = this.inFlight.get(spec.id);
    if (pending) await pending.catch(() => undefined);
    const existing = this.records.get(spec.id);
    if (existing) {
      if (this.o.store.digestOf(spec.id) !== digest) {
        throw new DomainError('ALREADY_EXISTS', `workspace "${spec.id}" exists with a different spec: ${specDifference(existing.spec, spec)}`);
      }
      return existing;
    }
    // A pull of a missing image happens before a start slot is taken: a long download holds up no other start.
    return this.exclusive(spec.id, () => this.o.sandbox.resolveImage(spec.image).then(() => this.startSlots(() => this.create(spec, digest, access.authorizeRestore))));
  }

  async stop(id: string, graceMs: number): Promise<WorkspaceRecord> {
    await this.inFlight.get(id)?.catch(() => undefined);
    const record = this.get(id);
    const runtime = this.runtimes.get(id);
    if (!runtime) return record;
    if (!isFinal(record.status.state) && !record.status.stopRequested) {
      record.status.stopRequested = true;
      this.transition(record, 'STOPPING');
      this.signal(id, 'SIGTERM');
      runtime.killTimer = setTimeout(() => this.signal(id, 'SIGKILL'), graceMs || this.o.defaultGraceMs);
      crashPoint('mid-stop');
    }
    // Also once STOPPED: the reply comes after the release of its mounts and cgroup.
    await runtime.exited;
    return record;
  }

  /** A RUNNING workspace's record and init, for an exec into it (src/exec); FAILED_PRECONDITION otherwise. */
  execTarget(id: string): { record: WorkspaceRecord; process: Launched } {
    const record = this.get(id);
    const runtime = this.runtimes.get(id);
    if (record.status.state !== 'RUNNING' || !runtime?.running) {
      throw new DomainError('FAILED_PRECONDITION', `workspace "${id}" is not running (${record.status.state})`);
    }
    return { record, process: runtime.process };
  }

  /** A prebuild task started or ended (reported by init over the task channel, src/prebuild/tasks.ts). */
  onTaskEvent(id: string, event: TaskEvent): void {
    const record = this.records.get(id);
    const task = record?.status.tasks[event.index];
    if (!record || !task) return;
    if (event.kind === 'start') Object.assign(task, { state: 'RUNNING', startedMs: Date.now() });
    else Object.assign(task, { state: event.exitCode === 0 ? 'SUCCEEDED' : 'FAILED', exitCode: event.exitCode, finishedMs: Date.now() });
    this.o.store.updateStatus(id, record.status);
    this.emit(record);
  }

  /** Replaces the exposed ports of a running ISOLATED workspace. */
  async updatePorts(id: string, ports: number[]): Promise<WorkspaceRecord> {
    await this.inFlight.get(id)?.catch(() => undefined);
    const record = this.get(id);
    if (record.status.state !== 'RUNNING') throw new DomainError('FAILED_PRECONDITION', `workspace "${id}" is not running`);
    if (record.spec.network !== 'ISOLATED') throw new DomainError('FAILED_PRECONDITION', 'ports: only ISOLATED workspaces expose ports');
    if (!this.o.network) throw new DomainError('FAILED_PRECONDITION', 'ports: this node has no workspace network');
    await this.o.network.setPorts(id, ports);
    record.status.ports = [...ports];
    this.o.store.updateStatus(id, record.status);
    this.emit(record);
    return record;
  }

  /**
   * Removes everything the workspace holds. Idempotent: unknown ids report existed=false. With
   * backupFirst, a final backup is taken first; if it fails, nothing is deleted and the error is returned.
   */
  async teardown(id: string, opts: { backupFirst?: boolean } = {}): Promise<{ existed: boolean; backupId: string }> {
    await this.inFlight.get(id)?.catch(() => undefined);
    const record = this.records.get(id);
    if (!record) return { existed: false, backupId: '' };
    const backupId = opts.backupFirst ? (await this.backup(id, {})).backupId : '';
    await this.exclusive(id, () => this.destroy(record));
    return { existed: true, backupId };
  }

  /**
   * An encrypted backup of the workspace's /workspace (and, if asked, its overlay upper layer). It holds the
   * workspace against teardown: one that begins during a teardown is refused, and a teardown waits for
   * those under way before it deletes anything.
   */
  async backup(id: string, opts: { includeUpper?: boolean; onProgress?(p: BackupProgressReport): void; signal?: AbortSignal }): Promise<BackupOutcome> {
    await this.inFlight.get(id)?.catch(() => undefined);
    // STOPPED, its release still under way: the volume is being closed, so it opens after that, not during.
    const releasing = this.runtimes.get(id);
    if (releasing && isFinal(this.get(id).status.state)) await releasing.exited;
    const record = this.get(id);
    const backups = this.needBackups();
    if (record.status.tearingDown) throw new DomainError('FAILED_PRECONDITION', `workspace "${id}" is being torn down`);
    if (record.status.uidBase === 0) throw new DomainError('FAILED_PRECONDITION', `workspace "${id}" has no content (its start failed)`);
    // No await between the checks above and this: a teardown either sees this backup or it is refused.
    return this.holdForBackup(id, this.runBackup(record, backups, opts));
  }

  private async runBackup(record: WorkspaceRecord, backups: WorkspaceBackups, opts: { includeUpper?: boolean; onProgress?(p: BackupProgressReport): void; signal?: AbortSignal }): Promise<BackupOutcome> {
    const id = record.spec.id;
    const layout = workspaceLayout(this.workspaceDir(id));
    const began = Date.now();
    if (crashAt === 'mid-backup') setTimeout(() => crashPoint('mid-backup'), 30);
    const result = await this.withVolume(id, () => backups.backup(
      { content: layout.content, ...(opts.includeUpper ? { upper: layout.upper } : {}) },
      {
        uidBase: record.status.uidBase,
        binding: bindingOf(record.spec),
        // A running workload may change its files while they are read; a stopped workspace's must not change.
        live: this.runtimes.get(id)?.running ?? false,
        ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      },
    ));
    this.events.emit('backup', { workspaceId: id, seconds: (Date.now() - began) / 1000, bytes: result.size });
    this.o.log.info({ workspace: id, backup: result.backupId, size: result.size }, 'backup stored');
    return result;
  }

  /** A stopped workspace's volume is closed: a backup opens it for as long as it reads. */
  private withVolume<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.o.storage ? this.o.storage.whileOpen(id, this.workspaceDir(id), fn) : fn();
  }

  private holdForBackup<T>(id: string, backup: Promise<T>): Promise<T> {
    let held = this.backupsRunning.get(id);
    if (!held) this.backupsRunning.set(id, (held = new Set()));
    const settled = backup.then(() => undefined, () => undefined);
    held.add(settled);
    void settled.then(() => {
      held.delete(settled);
      if (held.size === 0 && this.backupsRunning.get(id) === held) this.backupsRunning.delete(id);
    });
    return backup;
  }

  private async backupsSettled(id: string): Promise<void> {
    await Promise.all([...(this.backupsRunning.get(id) ?? [])]);
  }

  private needBackups(): WorkspaceBackups {
    if (!this.o.backups) throw new DomainError('FAILED_PRECONDITION', 'backups are not configured on this node');
    return this.o.backups;
  }

  /** After a restart: adopt what still runs, settle what died, finish what was half done. */
  async recover(): Promise<void> {
    for (const record of this.o.store.loadAll()) {
      this.records.set(record.spec.id, record);
      try {
        await this.recoverOne(record);
      } catch (err) {
        this.o.log.error({ workspace: record.spec.id, err: errText(err) }, 'recovery failed');
      }
    }
    await this.o.sandbox.sweep(new Set(this.records.keys()));
    await this.o.storage?.sweep(new Set(this.records.keys()));
    await this.o.network?.reconcile([...this.records.keys()]);
  }

  /** Stops watching (the daemon is going away); workspaces keep running. */
  close(): void {
    for (const runtime of this.runtimes.values()) clearTimeout(runtime.killTimer);
  }

  // --- start ---------------------------------------------------------------------------------
  // create() reads as the steps of a start, in order. A new step (a source checkout, a volume) is one
  // more method here taking the Starting it adds to, and one line in create(); failStart() releases
  // what the steps acquired.

  private async create(spec: WorkspaceSpec, digest: string, authorizeRestore: AuthorizeRestore | undefined): Promise<WorkspaceRecord> {
    const admitted = await this.admit(spec, authorizeRestore);
    const start: Starting = { ...admitted, record: this.insertRecord(spec, digest, admitted.image, admitted.content), opened: [] };
    try {
      this.allocateIds(start);
      crashPoint('after-ids');
      // The cgroup is independent of the volume and the rootfs, so they overlap; all settle before a failure is cleaned up.
      await allSettledOrThrow([this.createVolume(start).then(() => this.prepareRootfs(start)), this.createCgroup(start)] as const);
      crashPoint('after-rootfs');
      crashPoint('after-cgroup');
      await this.content.populate(start.record);
      const launched = await this.launchWorkload(start);
      crashPoint('after-spawn');
      if (holdsAtGate(spec)) {
        await this.attachNetwork(start, launched);
        crashPoint('after-network');
        await launched.release();
      }
      return this.running(start, launched);
    } catch (err) {
      await this.failStart(start, err);
      throw toStartError(err, spec.command[0]);
    }
  }

  /** Everything that can refuse the request, checked before anything exists. */
  private async admit(spec: WorkspaceSpec, authorizeRestore: AuthorizeRestore | undefined): Promise<Pick<Starting, 'image' | 'restoring' | 'content'>> {
    const image = await this.o.sandbox.resolveImage(spec.image);
    withImageConfig(spec, image.config); // a workload with nothing to run is refused now
    this.o.sandbox.checkSeccompProfile(spec.seccompProfile);
    this.content.check(spec.content);
    const restoring = spec.restoreFrom ? await this.openBackup(spec.restoreFrom, authorizeRestore) : undefined;
    // After the access decision, before anything exists: a prebuild snapshot must verify (or be allowed not to).
    const content = await this.content.verifyPrebuild(spec.content);
    if (spec.kind === 'PREBUILD' && !(this.o.logs && this.o.backups && this.o.provenance)) {
      throw new DomainError('FAILED_PRECONDITION', 'kind: prebuilds need logs, backups and provenance on this node');
    }
    return { image, restoring, content };
  }

  /** The record, CREATING, persisted and announced. */
  private insertRecord(spec: WorkspaceSpec, digest: string, image: ImageRef, content: ContentStatus): WorkspaceRecord {
    const record: WorkspaceRecord = {
      spec,
      status: {
        ...newStatus(Date.now()),
        ports: [...spec.ports],
        imageDigest: image.digest,
        tasks: spec.tasks.map((t) => ({ name: t.name, state: 'CREATING', exitCode: 0, startedMs: 0, finishedMs: 0 })),
        content,
      },
    };
    this.o.store.insert(record, digest);
    this.records.set(spec.id, record);
    this.emit(record);
    return record;
  }

  private allocateIds({ record }: Starting): void {
    record.status.uidBase = this.o.sandbox.allocateIds(record.spec.id);
    this.o.store.updateStatus(record.spec.id, record.status);
  }

  /** The workspace dir on its own encrypted, size-limited volume (src/storage), before anything goes in it. */
  private async createVolume({ record }: Starting): Promise<void> {
    const { spec } = record;
    await this.o.storage?.create(spec.id, { bytes: spec.resources.diskBytes, inodes: spec.resources.diskInodes }, this.workspaceDir(spec.id));
    crashPoint('after-volume');
  }

  /** The network's /etc files and the restore (or the prebuild tree /workspace lies over) go into the rootfs;
   *  beside it the output opens, whose ends spawn takes. */
  private async prepareRootfs(start: Starting): Promise<void> {
    const { spec, status } = start.record;
    const opening = this.openOutput(spec, status.uidBase).then((output) => {
      start.opened.push(...output.fds);
      start.output = output;
    });
    const mounting = (async () => {
      const files = await this.o.network?.prepare(spec);
      const contentLower = start.restoring && await this.content.prebuildTree(start.record, start.restoring);
      const beforeMount = contentLower ? undefined : this.restoreStep(start);
      await this.o.sandbox.prepareRootfs(spec.id, start.image, status.uidBase, { ...(files ? { files } : {}), ...(beforeMount ? { beforeMount } : {}), ...(contentLower ? { contentLower } : {}) });
      if (contentLower) status.restoredFrom = spec.restoreFrom;
    })();
    await allSettledOrThrow([opening, mounting] as const);
  }

  /** A restore is verified to its last segment before it replaces the (empty) content and upper dirs. */
  private restoreStep({ record, restoring }: Starting): ((dirs: { upper: string; content: string }) => Promise<void>) | undefined {
    if (!restoring) return undefined;
    const { spec } = record;
    return async (dirs) => {
      const target = restoring.roots.includes('upper') ? dirs : { content: dirs.content };
      // One that cannot fit in the volume is refused before any of it is written.
      this.o.storage?.checkFits(spec.id, { bytes: restoring.bytes ?? 0, files: restoring.files ?? 0 });
      await this.needBackups().restore(spec.restoreFrom, target, { uidBase: record.status.uidBase, expectBinding: restoring.binding ?? null });
      record.status.restoredFrom = spec.restoreFrom;
    };
  }

  private createCgroup({ record }: Starting): Promise<void> {
    return this.o.sandbox.createCgroup(record.spec.id, record.spec.resources);
  }

  /** Init starts (held at its gate for an ISOLATED workload); once spawn returned, our output ends close. */
  private async launchWorkload(start: Starting): Promise<Launched> {
    const { spec, status } = start.record;
    const run = withImageConfig(spec, start.image.config);
    start.launched = await this.o.sandbox.launch({
      workspaceId: spec.id, uidBase: status.uidBase, argv: spec.kind === 'PREBUILD' ? [] : run.argv, env: run.env, cwd: run.cwd,
      seccompProfile: spec.seccompProfile, output: start.output!, holdAtGate: holdsAtGate(spec),
      user: spec.user ?? start.image.config?.user ?? '',
    });
    for (const fd of start.opened.splice(0)) fs.closeSync(fd);
    Object.assign(status, { pid: start.launched.pid, pidStartTime: start.launched.startTime, startedMs: Date.now() });
    this.o.store.updateStatus(spec.id, status);
    return start.launched;
  }

  /** While init holds the workload at its gate: the veth and rules, then the address. */
  private async attachNetwork({ record }: Starting, launched: Launched): Promise<void> {
    if (this.o.network) record.status.ipAddress = await this.o.network.attach(record.spec, launched.pid);
  }

  private running({ record }: Starting, launched: Launched): WorkspaceRecord {
    this.watch(record, launched, true);
    this.withDiskUsage(record);
    this.transition(record, 'RUNNING');
    this.o.log.info({ workspace: record.spec.id, hostPid: launched.pid, uidBase: record.status.uidBase }, 'workspace running');
    return record;
  }

  private async failStart(start: Starting, err: unknown): Promise<void> {
    for (const fd of start.opened) fs.closeSync(fd);
    // Abandoned (at the gate, if held there): killed and reaped before anything is released.
    if (start.launched && !this.runtimes.has(start.record.spec.id)) await start.launched.kill();
    await this.abortStart(start.record, err);
  }

  /** The access decision on restore_from, then the backup's verified manifest. */
  private openBackup(backupId: string, authorize: AuthorizeRestore | undefined): Promise<OpenedBackup> {
    // No decision, no restore: a caller that forgot it must not restore anyone's backup.
    if (!authorize) throw new DomainError('INTERNAL', 'restore_from: no access decision was made for this restore');
    return this.needBackups().open(backupId, authorize);
  }

  private async openOutput(spec: WorkspaceSpec, uidBase: number): Promise<OpenedOutput> {
    if (this.o.logs) return this.o.logs.open(spec, uidBase);
    const fd = fs.openSync('/dev/null', fs.constants.O_WRONLY);
    return { stdoutFd: fd, stderrFd: fd, fds: [fd] };
  }

  /** A start that failed holds nothing: the record stays as FAILED so the caller can see why. */
  private async abortStart(record: WorkspaceRecord, err: unknown): Promise<void> {
    const id = record.spec.id;
    this.o.log.warn({ workspace: id, err: errText(err) }, 'workspace start failed');
    await this.o.logs?.closeWhenDrained(id);
    await this.releaseAll(record);
    const reason: Reason = isContentFailure(err) ? 'CONTENT_FAILED' : 'SPAWN_FAILED';
    Object.assign(record.status, { reason, message: errText(err), finishedMs: Date.now(), pid: 0 });
    this.transition(record, 'FAILED');
  }

  // --- exit ----------------------------------------------------------------------------------

  private watch(record: WorkspaceRecord, process: Launched, ourChild: boolean): void {
    let done!: () => void;
    const exited = new Promise<void>((resolve) => (done = resolve));
    this.runtimes.set(record.spec.id, { process, running: true, exited });
    void process.exited.then((status) => {
      // After what is already queued: a workload that exits at once must not hold up its own start's reply.
      setImmediate(() => {
        this.onExit(record, status, ourChild).catch((err) => this.o.log.error({ workspace: record.spec.id, err: errText(err) }, 'exit handling failed')).finally(done);
      });
    });
  }

  private async onExit(record: WorkspaceRecord, exit: ProcessExit, ourChild: boolean): Promise<void> {
    const id = record.spec.id;
    this.recordExit(record, exit, ourChild);
    // The log is whole (its readers see the end) before the state says the workload ended.
    await this.o.logs?.endWhenDrained(id);
    this.o.log.debug({ workspace: id }, 'output drained');
    if (record.spec.kind === 'PREBUILD') {
      // Its final state is the snapshot's outcome, taken once the workspace is released.
      await this.releaseAfterExit(record);
      this.settleExit(record, await this.finishPrebuild(record));
    } else {
      // STOPPED first, then the release: its unmounts and cgroup removal wait out the kernel's RCU grace
      // periods (5-50 ms a start on a busy node, bench/start). Stop and teardown still wait for the release
      // (runtime.exited), and recover() releases what a crash left half released.
      this.settleExit(record, 'STOPPED');
      crashPoint('after-stopped');
      await this.releaseAfterExit(record);
    }
    // Only now: stop and teardown wait on runtime.exited, so they never race this release.
    this.runtimes.delete(id);
  }

  /** The log made durable, then what the workspace held at run time (its files stay until teardown). */
  private async releaseAfterExit(record: WorkspaceRecord): Promise<void> {
    await this.o.logs?.closeWhenDrained(record.spec.id);
    await this.releaseSlots(() => this.releaseRuntime(record));
  }

  private settleExit(record: WorkspaceRecord, final: State): void {
    record.status.finishedMs = Date.now();
    this.withDiskUsage(record);
    this.transition(record, final);
    this.o.log.info({ workspace: record.spec.id, reason: record.status.reason, exitCode: record.status.exitCode, signal: record.status.signal }, 'workspace stopped');
  }

  /** The workload is gone: no more signals to it, and the status says how it ended. */
  private recordExit(record: WorkspaceRecord, exit: ProcessExit, ourChild: boolean): void {
    const id = record.spec.id;
    const runtime = this.runtimes.get(id);
    if (runtime) {
      clearTimeout(runtime.killTimer);
      runtime.running = false;
    }
    this.o.log.debug({ workspace: id }, 'workload exited');
    const oomKills = this.o.sandbox.oomKillCount(id);
    Object.assign(record.status, settle(record, this.o.sandbox.initExitRecord(id), ourChild ? exit : undefined, oomKills));
  }

  /** Every task passed: snapshot and provenance, SUCCEEDED. Else FAILED naming the task (or STOPPED). */
  private async finishPrebuild(record: WorkspaceRecord): Promise<State> {
    const { status } = record;
    if (status.stopRequested) return 'STOPPED';
    const failed = status.tasks.find((t) => t.state !== 'SUCCEEDED');
    if (failed || status.exitCode !== 0 || status.reason !== 'EXITED') {
      status.failedTask = failed?.name ?? '';
      if (status.reason === 'EXITED') status.reason = 'TASK_FAILED';
      return 'FAILED';
    }
    try {
      const snapshot = await this.backup(record.spec.id, {});
      status.snapshotId = snapshot.backupId;
      await this.o.provenance!.publish(record, snapshot);
      return 'SUCCEEDED';
    } catch (err) {
      status.message = `snapshot failed: ${errText(err)}`;
      return 'FAILED';
    }
  }

  // --- teardown and release -----------------------------------------------------------------

  private async destroy(record: WorkspaceRecord): Promise<void> {
    const id = record.spec.id;
    record.status.tearingDown = true;
    this.o.store.updateStatus(id, record.status);
    // New backups are refused from here on; those under way finish on the whole tree first.
    await this.backupsSettled(id);
    crashPoint('mid-teardown');
    const runtime = this.runtimes.get(id);
    if (runtime) {
      record.status.stopRequested = true;
      this.signal(id, 'SIGKILL');
      await runtime.exited;
    }
    await this.releaseSlots(() => this.releaseAll(record));
    await this.o.logs?.remove(id);
    this.o.store.delete(id);
    this.records.delete(id);
    this.events.emit('removed', id);
    this.o.log.info({ workspace: id }, 'workspace torn down');
  }

  /** What a running workspace holds beyond its files: mounts, cgroup, network. */
  private async releaseRuntime(record: WorkspaceRecord): Promise<void> {
    await this.releaseNetworkAndCgroup(record.spec.id);
    await this.o.sandbox.unmountRootfs(record.spec.id);
    this.withDiskUsage(record);
    await this.o.storage?.close(record.spec.id, this.workspaceDir(record.spec.id));
  }

  private async releaseNetworkAndCgroup(id: string): Promise<void> {
    await this.o.network?.detach(id);
    await this.o.sandbox.destroyCgroup(id);
  }

  /** Everything, files and id range included. */
  private async releaseAll(record: WorkspaceRecord): Promise<void> {
    await this.releaseNetworkAndCgroup(record.spec.id);
    // Crypto-erase before any file goes: once the key is gone, what is left of the volume opens for no one.
    await this.o.storage?.eraseKey(record.spec.id);
    crashPoint('after-key-erase');
    // Unmounts what is left, then deletes: one pass over mountinfo, not one here and one there.
    await this.o.sandbox.removeWorkspaceDir(record.spec.id);
    await this.o.storage?.destroy(record.spec.id);
    if (record.status.uidBase) this.o.sandbox.releaseIds(record.status.uidBase);
    record.status.uidBase = 0;
  }

  // --- recovery ------------------------------------------------------------------------------

  private async recoverOne(record: WorkspaceRecord): Promise<void> {
    const { status } = record;
    // A reboot took /workspace's overlay over a prebuild tree with it: its files must be whole again.
    if (!status.tearingDown && status.uidBase) {
      await this.o.sandbox.remountContent(record.spec.id, status.uidBase).catch((err: unknown) => this.o.log.error({ workspace: record.spec.id, err: errText(err) }, '/workspace over its prebuild tree not mounted again'));
    }
    const adopted = status.pid ? this.o.sandbox.adopt(status.pid, status.pidStartTime) : undefined;
    if (status.tearingDown) {
      if (adopted) this.watch(record, adopted, false);
      return this.exclusive(record.spec.id, () => this.destroy(record));
    }
    if (status.state === 'CREATING') {
      adopted?.signal('SIGKILL');
      return this.abortStart(record, new Error('start interrupted by a daemon restart'));
    }
    if (isFinal(status.state)) {
      await this.releaseRuntime(record);
      return;
    }
    if (!adopted) {
      // Died while we were away: the status file (if init wrote it) still tells how.
      if (record.spec.kind === 'PREBUILD') record.status.message = PREBUILD_INTERRUPTED;
      return this.onExit(record, { exitCode: null, signal: null, reaped: false }, false);
    }
    return this.resumeAdopted(record, adopted);
  }

  /** Still running after a restart: its output drained again, its exit watched, a stop under way resumed. */
  private async resumeAdopted(record: WorkspaceRecord, adopted: Launched): Promise<void> {
    const id = record.spec.id;
    await this.o.logs?.reattach(record.spec, () => adopted.takeOutputPipes()).catch((err: unknown) => this.o.log.warn({ workspace: id, err: errText(err) }, 'output not reattached'));
    this.watch(record, adopted, false);
    if (record.spec.kind === 'PREBUILD') return this.endInterruptedPrebuild(record);
    this.o.log.info({ workspace: id, hostPid: record.status.pid }, 'adopted running workspace');
    if (record.status.state === 'STOPPING') {
      const runtime = this.runtimes.get(id);
      if (runtime) runtime.killTimer = setTimeout(() => this.signal(id, 'SIGKILL'), this.o.defaultGraceMs);
    }
  }

  /** A prebuild's task channel and task pipes die with the daemon, so its later tasks could never get
   *  their env: it ends FAILED now (docs/prebuilds.md) rather than wait on a channel nobody serves. */
  private endInterruptedPrebuild(record: WorkspaceRecord): void {
    record.status.message = PREBUILD_INTERRUPTED;
    this.o.store.updateStatus(record.spec.id, record.status);
    this.signal(record.spec.id, 'SIGKILL');
  }

  // --- small pieces --------------------------------------------------------------------------

  private signal(id: string, sig: WorkloadSignal): void {
    const runtime = this.runtimes.get(id);
    if (runtime?.running) runtime.process.signal(sig);
  }

  /** The one place a state changes: the table of src/workspace/states.ts refuses what it does not hold. */
  private transition(record: WorkspaceRecord, state: State): void {
    record.status.state = nextState(record.spec.id, record.status.state, state);
    this.o.store.updateStatus(record.spec.id, record.status);
    this.emit(record);
  }

  private emit(record: WorkspaceRecord): void {
    this.events.emit('changed', record);
  }

  private exclusive<T>(id: string, work: () => Promise<T>): Promise<T> {
    const p = work().finally(() => {
      if (this.inFlight.get(id) === p) this.inFlight.delete(id);
    });
    this.inFlight.set(id, p);
    return p;
  }

  private digest(spec: WorkspaceSpec): string {
    return crypto.createHmac('sha256', this.o.specKey).update(canonicalJson(withoutNoDiskLimit(spec))).digest('hex');
  }
}

/**
 * The request over the image's config (as Docker and Kubernetes apply it): a command replaces Entrypoint and
 * Cmd, request env wins per key over the image's Env, and working_dir over WorkingDir (then /workspace).
 */
export function withImageConfig(spec: WorkspaceSpec, image: ImageRunConfig | undefined): { argv: string[]; env: Record<string, string>; cwd: string } {
  const env: Record<string, string> = {};
  for (const entry of image?.env ?? []) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  Object.assign(env, spec.env);
  const argv = spec.command.length > 0 ? spec.command : [...(image?.entrypoint ?? []), ...(image?.cmd ?? [])];
  if (argv.length === 0 && spec.kind === 'REGULAR') throw new DomainError('INVALID_ARGUMENT', 'command: empty, and the image has no Entrypoint or Cmd');
  const cwd = spec.workingDir || (image?.workingDir && image.workingDir.startsWith('/') ? image.workingDir : '') || '/workspace';
  return { argv, env, cwd };
}

/** An isolated workload waits at init's gate until its veth is attached. Everything else it needs (cgroups,
 *  lo, its OOM score) is in place before init runs, so the others start at once. */
function holdsAtGate(spec: WorkspaceSpec): boolean {
  return spec.network === 'ISOLATED';
}

/** A spec with no disk limit digests as it did before Resources had one: a repeated start of a workspace
 *  recorded by an older daemon is still the same spec. */
function withoutNoDiskLimit(spec: WorkspaceSpec): unknown {
  const { diskBytes, diskInodes, ...rest } = spec.resources;
  return diskBytes || diskInodes ? spec : { ...spec, resources: rest };
}

/** What a backup of this workspace records as its origin, and the access rule later judges. */
function bindingOf(spec: WorkspaceSpec): BackupBinding {
  return { workspaceId: spec.id, ownerId: spec.ownerId, teamId: spec.teamId, kind: spec.kind };
}

/** How the workload ended, from the best evidence at hand. */
function settle(
  record: WorkspaceRecord,
  fromInit: InitExitRecord,
  fromWait: ProcessExit | undefined,
  oomKills: number,
): Partial<WorkspaceRecord['status']> {
  const signal = fromInit.signal !== undefined ? fromInit.signal : fromInit.exitCode === undefined ? fromWait?.signal ?? '' : '';
  const exitCode = fromInit.exitCode ?? (fromWait?.exitCode ?? (signal ? 0 : -1));
  let reason: Reason;
  if (oomKills > 0) reason = 'OOM_KILLED';
  else if (record.status.stopRequested) reason = 'STOPPED';
  else if (fromInit.exitCode === undefined && fromInit.signal === undefined && !fromWait) reason = 'LOST';
  else reason = signal ? 'SIGNALED' : 'EXITED';
  return { exitCode, signal: signal ?? '', reason, pid: record.status.pid };
}

/**
 * A kernel step of a start that failed is the start's failure: INTERNAL, naming the step and errno. A
 * program the image cannot run is the request's: FAILED_PRECONDITION naming the field.
 */
function toStartError(err: unknown, program = ''): unknown {
  if (isProgramFault(err)) return new DomainError('FAILED_PRECONDITION', `command: ${program || 'the image\'s entrypoint'} cannot run in the image (execve: ${(err as NativeError).code})`, { cause: err });
  if (err instanceof NativeError) return new DomainError('INTERNAL', `sandbox setup failed: ${err.message}`, { cause: err });
  return err;
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The first field, in the wire's names, where a repeated start differs from the workspace that exists:
 * `spec.resources.memory_bytes differs`. Env values are secrets: a difference there names only `spec.env`.
 */
export function specDifference(existing: WorkspaceSpec, requested: WorkspaceSpec): string {
  const wire = (key: string): string => key.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
  const walk = (a: unknown, b: unknown, at: string): string | undefined => {
    if (at === 'spec.env') return canonicalJson(a) === canonicalJson(b) ? undefined : at;
    if (a && b && typeof a === 'object' && typeof b === 'object') {
      const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
      if (Array.isArray(a) && Array.isArray(b) && a.length !== b.length) return at;
      for (const key of keys) {
        const found = walk((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key], Array.isArray(a) ? `${at}[${key}]` : `${at}.${wire(key)}`);
        if (found) return found;
      }
      return undefined;
    }
    return canonicalJson(a) === canonicalJson(b) ? undefined : at;
  };
  const field = walk(existing, requested, 'spec');
  return field ? `${field} differs` : 'the spec differs';
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Runs at most n of the given tasks at once, the rest in arrival order, and begins one at most every
 *  minIntervalMs. */
function limitConcurrency(n: number, minIntervalMs = 0): <T>(task: () => Promise<T>) => Promise<T> {
  let running = 0;
  let nextBegin = 0;
  const waiting: Array<() => void> = [];
  return async <T>(task: () => Promise<T>): Promise<T> => {
    if (running >= n) await new Promise<void>((resolve) => waiting.push(resolve));
    running++;
    const now = performance.now();
    const begin = Math.max(now, nextBegin);
    nextBegin = begin + minIntervalMs;
    if (begin > now) await delay(begin - now);
    try {
      return await task();
    } finally {
      running--;
      waiting.shift()?.();
    }
  };
}
