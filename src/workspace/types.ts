// The workspace as the node keeps it: what was asked (spec) and what is (status).
import type { DiskUsage } from '../storage/types';

export type WorkspaceKind = 'REGULAR' | 'PREBUILD';
export type NetworkMode = 'NONE' | 'ISOLATED';
export type State = 'CREATING' | 'RUNNING' | 'STOPPING' | 'STOPPED' | 'FAILED' | 'SUCCEEDED';
export type Reason = 'UNSPECIFIED' | 'EXITED' | 'SIGNALED' | 'OOM_KILLED' | 'STOPPED' | 'SPAWN_FAILED' | 'LOST' | 'TASK_FAILED' | 'CONTENT_FAILED';

// The cgroup's limits (src/sandbox/cgroups.ts) and the volume's (src/storage), named here for the spec.
import type { Resources as CgroupLimits } from '../sandbox/cgroups';
export interface Resources extends CgroupLimits {
  diskBytes: number;     // the workspace's volume size (src/storage); 0 in a request: the node default; 0 in force on a node without volumes
  diskInodes: number;    // 0 as above (one per 16 KiB of diskBytes)
}

// A task is the task channel's unit (src/prebuild/tasks.ts); defined there, named here for the spec.
export type { TaskSpec } from '../prebuild/tasks';
import type { TaskSpec } from '../prebuild/tasks';
// What /workspace is made from (src/source/spec.ts).
export type { ContentSpec, GitSourceSpec } from '../source/spec';
import type { ContentSpec } from '../source/spec';

export interface WorkspaceSpec {
  id: string;
  ownerId: string;
  teamId: string;
  kind: WorkspaceKind;
  image: string;
  command: string[];
  env: Record<string, string>;   // secret: never logged, persisted only sealed
  resources: Resources;
  network: NetworkMode;
  ports: number[];
  restoreFrom: string;
  seccompProfile: string;
  tasks: TaskSpec[];
  source: { repositoryUrl: string; revision: string };
  workingDir: string;
  user?: string;                 // NAME[:GROUP] or UID[:GID] inside the workspace; absent: the image's User, else root
  /** Absent in records from before issue 17: read as NO_CONTENT. */
  content?: ContentSpec;
}

/** Content initialization as it goes (GetWorkspace shows it while CREATING) and what it fetched. */
export interface ContentStatus {
  phase: '' | 'fetching' | 'checking-out' | 'submodules' | 'ready' | 'failed';
  objectsReceived: number;
  objectsTotal: number;
  attempts: number;
  failedStep: string;
  commit: string;
  prebuildId: string;
  prebuildSnapshotId: string;
  prebuildVerified: boolean;
  /** How /workspace was made from the snapshot: over the node's cached tree ('cached'), over a tree unpacked
   *  for this start ('unpacked'), or restored into the workspace ('restored'); '' for other content. */
  prebuildTree: '' | 'cached' | 'unpacked' | 'restored';
}

export const noContentStatus = (): ContentStatus => ({
  phase: '', objectsReceived: 0, objectsTotal: 0, attempts: 0, failedStep: '', commit: '', prebuildId: '', prebuildSnapshotId: '', prebuildVerified: false, prebuildTree: '',
});

export interface TaskStatus {
  name: string;
  state: State;
  exitCode: number;
  startedMs: number;
  finishedMs: number;
}

export interface WorkspaceStatus {
  state: State;
  reason: Reason;
  exitCode: number;
  signal: string;
  message: string;
  pid: number;
  pidStartTime: string;   // /proc/<pid>/stat field 22: tells our init from a recycled pid
  uidBase: number;
  createdMs: number;
  startedMs: number;
  finishedMs: number;
  ipAddress: string;
  ports: number[];        // exposed now (UpdatePorts changes it; the spec keeps what was asked at start)
  snapshotId: string;
  failedTask: string;
  restoredFrom: string;
  imageDigest: string;    // sha256:<hex> of the image tree the workspace booted from
  tasks: TaskStatus[];
  content?: ContentStatus;  // absent in records from before issue 17
  stopRequested: boolean;
  tearingDown: boolean;
  disk?: DiskUsage;       // the volume's usage, refreshed on each read (src/storage)
}

export interface WorkspaceRecord {
  spec: WorkspaceSpec;
  status: WorkspaceStatus;
}

export const isFinal = (s: State): boolean => s === 'STOPPED' || s === 'FAILED' || s === 'SUCCEEDED';

export function newStatus(now: number): WorkspaceStatus {
  return {
    state: 'CREATING', reason: 'UNSPECIFIED', exitCode: 0, signal: '', message: '', pid: 0, pidStartTime: '',
    uidBase: 0, createdMs: now, startedMs: 0, finishedMs: 0, ipAddress: '', ports: [], snapshotId: '', failedTask: '',
    restoredFrom: '', imageDigest: '', tasks: [], content: noContentStatus(), stopRequested: false, tearingDown: false,
  };
}
