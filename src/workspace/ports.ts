// What the lifecycle needs from the layers below it. main.ts wires the real implementations
// (src/sandbox, src/network, src/prebuild); the lifecycle never reaches past these.
import type { Resources, WorkspaceKind, WorkspaceSpec } from './types';
import type { InitExitRecord, Launched } from '../sandbox/launch';
import type { DiskUsage } from '../storage/types';

export type { InitExitRecord, Launched, ProcessExit, WorkloadSignal } from '../sandbox/launch';
// What the Sandbox port rejects with when a kernel step fails: the step and its errno.
export { NativeError, isProgramFault } from '../native';

/** An image the sandbox resolved: its reference and digest; where its tree lives stays in the sandbox. */
export interface ImageRef {
  readonly reference: string;
  readonly digest: string;
  /** An OCI image's config (src/images): what its workload starts from unless the request overrides it. */
  readonly config?: ImageRunConfig;
}

/** Files the workspace's /etc needs before it starts (resolv.conf, hosts), relative to its root. */
export type RootfsFiles = Record<string, string>;

/** What the lifecycle asks to run; the sandbox adds the rootfs, init, capabilities, seccomp filter,
 *  cgroup placement and the /workspace mount of the workspace it prepared. */
export interface WorkloadLaunch {
  workspaceId: string;
  uidBase: number;
  argv: string[];             // empty for a prebuild: init then serves the task channel
  env: Record<string, string>;
  cwd: string;
  seccompProfile: string;
  output: { stdoutFd: number; stderrFd: number; outputReadFds?: [number, number]; tasksFd?: number };
  /** Hold the workload at init's gate until release(): nothing of it runs before (an ISOLATED veth). */
  holdAtGate: boolean;
  /** NAME[:GROUP] or UID[:GID] inside the workspace, resolved in its rootfs; '' or absent = root. */
  user?: string;
}

/** A workspace's files are named by its id: the sandbox knows where they live (src/layout.ts). */
export interface Sandbox {
  /** NOT_FOUND for an unknown image, INVALID_ARGUMENT for a malformed name; an OCI reference is pulled if
   *  the node does not hold it (src/images). */
  resolveImage(image: string): Promise<ImageRef>;
  /** INVALID_ARGUMENT for an unknown seccomp profile name ('' = the default). */
  checkSeccompProfile(profile: string): void;
  allocateIds(workspaceId: string): number;
  releaseIds(base: number): void;
  /** The image as the workspace's root, owned by its id range, with `files` written into it. beforeMount
   *  runs with the empty upper and content dirs, before the overlay exists (restores). contentLower: a
   *  prebuild tree (WorkspacePrebuildTrees) /workspace is an overlay over, instead of an empty dir. */
  prepareRootfs(workspaceId: string, image: ImageRef, uidBase: number, opts: { files?: RootfsFiles; beforeMount?: (dirs: { upper: string; content: string }) => Promise<void>; contentLower?: string }): Promise<void>;
  /** What the workspace holds only while it runs; its files (/workspace's overlay included) stay. */
  unmountRootfs(workspaceId: string): Promise<void>;
  /** After a restart: /workspace's overlay over its prebuild tree mounted again if a reboot took it. */
  remountContent(workspaceId: string, uidBase: number): Promise<void>;
  /** Unmounts anything left below the workspace's directory, then deletes it. */
  removeWorkspaceDir(workspaceId: string): Promise<void>;
  /** The group launch() places the workspace's init in. */
  createCgroup(workspaceId: string, resources: Resources): Promise<void>;
  destroyCgroup(workspaceId: string): Promise<void>;
  oomKillCount(workspaceId: string): number;
  /** Spawns init in the workspace's rootfs, cgroup and id range (held at its gate if asked). NativeError
   *  naming the step when it fails; nothing of the process is left then. */
  launch(workload: WorkloadLaunch): Promise<Launched>;
  /** After a restart: the workspace's init, if pid is still the process started at startTime. */
  adopt(pid: number, startTime: string): Launched | undefined;
  /** What init recorded of how the workload ended (its exit-status file). */
  initExitRecord(workspaceId: string): InitExitRecord;
  /** Removes what no record accounts for (after a crash). */
  sweep(liveIds: Set<string>): Promise<void>;
}

/** What an OCI image's config says about its workload (image-spec config.md); the request overrides it. */
export interface ImageRunConfig {
  env: string[];        // KEY=VALUE
  entrypoint: string[];
  cmd: string[];
  workingDir: string;
  user: string;
}

export interface WorkspaceNetwork {
  /** The workspace's address (ISOLATED), and the /etc/resolv.conf and /etc/hosts its rootfs gets. */
  prepare(spec: WorkspaceSpec): Promise<RootfsFiles>;
  /** Called while init holds an ISOLATED workload at its gate; returns the workspace's address. */
  attach(spec: WorkspaceSpec, pid: number): Promise<string>;
  detach(workspaceId: string): Promise<void>;
  reconcile(liveIds: string[]): Promise<void>;
  /** Replaces the ports reachable from the node. */
  setPorts(workspaceId: string, ports: number[]): Promise<void>;
}

/** The workspace's ends of its output, for spawn; the caller closes fds once spawn returned. */
export interface OpenedOutput {
  stdoutFd: number;
  stderrFd: number;
  /** The read ends init keeps across daemon restarts (spawn opts.outputReadFds). */
  outputReadFds?: [number, number];
  /** A prebuild's end of the task channel for init, one of fds. */
  tasksFd?: number;
  fds: number[];
}

export interface WorkspaceLogs {
  /** tasksFd: a prebuild's end of the task channel for init (src/prebuild/tasks.ts), one of fds. */
  open(spec: WorkspaceSpec, uidBase: number): Promise<OpenedOutput>;
  /** After a daemon restart, for a workspace that still runs: takePipes hands over init's read ends. */
  reattach(spec: WorkspaceSpec, takePipes: () => [number, number]): Promise<void>;
  /** Once the workload's output is all in the log and readers see it whole (before its fsync). */
  endWhenDrained(workspaceId: string): Promise<void>;
  /** endWhenDrained, then the log durable and closed. */
  closeWhenDrained(workspaceId: string): Promise<void>;
  remove(workspaceId: string): Promise<void>;
}

export interface BackupProgressReport {
  bytesDone: number;
  filesDone: number;
  bytesTotal: number;
  filesTotal: number;
}

export interface BackupOutcome {
  backupId: string;
  size: number;
  sha256: string;
  keyId: string;
}

/** What a backup was made of: recorded in it, authenticated with it, and what the access rule judges. */
export interface BackupBinding {
  workspaceId: string;
  ownerId: string;
  teamId: string;
  kind: WorkspaceKind;
}

/** Decides whether a restore may use a backup, from its binding (undefined: unknown, unreadable or a
 *  version 1 backup that recorded none); throws to refuse. */
export type AuthorizeRestore = (binding: BackupBinding | undefined) => void;

/** Encrypted backups of a workspace's content (src/content). */
export interface WorkspaceBackups {
  /** live: the workspace runs, so entries it changes during the walk are left out; otherwise a change fails it. */
  backup(sources: { content: string; upper?: string }, opts: { uidBase: number; binding: BackupBinding; live: boolean; onProgress?(p: BackupProgressReport): void; signal?: AbortSignal }): Promise<BackupOutcome>;
  /** expectBinding: what open() returned; a manifest that changed since is DATA_LOSS. */
  restore(backupId: string, target: { content: string; upper?: string }, opts: { uidBase: number; expectBinding: BackupBinding | null }): Promise<void>;
  /**
   * Asks `authorize` about the backup, then verifies its manifest. NOT_FOUND when there is no such backup (for
   * those authorize lets through), DATA_LOSS when it was altered. roots: "content", and "upper" when it holds
   * the overlay's upper layer.
   */
  open(backupId: string, authorize: AuthorizeRestore): Promise<{ roots: string[]; binding: BackupBinding | undefined; bytes?: number; files?: number }>;
}

/**
 * Each workspace's dir on an encrypted volume of its own, its size the disk limit (src/storage). The
 * lifecycle's order: create before the rootfs; close after the rootfs is unmounted; at teardown eraseKey
 * first (crypto-erase), then the workspace dir's removal, then destroy.
 */
export interface WorkspaceStorage {
  /** The volume, open and mounted at wsDir. resources.diskBytes/diskInodes are the limits in force. */
  create(workspaceId: string, limits: { bytes: number; inodes: number }, wsDir: string): Promise<void>;
  /** RESOURCE_EXHAUSTED when a backup of this many bytes and files cannot fit in the open volume. */
  checkFits(workspaceId: string, need: { bytes: number; files: number }): void;
  /** Unmounts wsDir and the volume and removes its key from the kernel; deferred while a backup holds it. */
  close(workspaceId: string, wsDir: string): Promise<void>;
  whileOpen<T>(workspaceId: string, wsDir: string, fn: () => Promise<T>): Promise<T>;
  eraseKey(workspaceId: string): Promise<void>;
  destroy(workspaceId: string): Promise<void>;
  usage(workspaceId: string): DiskUsage | undefined;
  sweep(liveIds: ReadonlySet<string>): Promise<number>;
}

/**
 * Verified prebuild snapshots unpacked once on the node (src/prebuild/trees.ts), each the read-only lower of
 * the /workspace of every workspace started from it. Absent on a node whose workspaces are on encrypted
 * volumes: a plaintext tree beside them would undo that.
 */
export interface WorkspacePrebuildTrees {
  /**
   * The tree of the snapshot (its stored object's sha256 as verified just now), unpacked with `unpack` into an
   * empty dir if the node has none. `hold` is called at once with how it was had, before anything could
   * remove the tree; from then on the caller's record holds it (inUse). undefined: not cacheable (too large,
   * or an entry that does not match the object), restore instead.
   */
  acquire(snapshot: { snapshotId: string; objectSha256: string; bytes: number }, unpack: (dir: string) => Promise<void>, hold: (how: 'cached' | 'unpacked') => void): Promise<string | undefined>;
}

/** Content initialization from git (src/source): the checkout, in a sandbox of its own. */
export type { PopulateJob, PopulateResult, SourceProgress } from '../source/checkout';
import type { PopulateJob, PopulateResult } from '../source/checkout';
export interface WorkspaceSource {
  /** SourceError naming the step when it fails; what it wrote stays in contentDir for the caller to remove. */
  populate(job: PopulateJob): Promise<PopulateResult>;
}
