// Requests from the wire become domain specs here, or an INVALID_ARGUMENT that names the field and
// says why. Nothing below the API layer sees unvalidated input. Messages never echo env values.
import path from 'node:path';
import { invalidArgument } from '../errors';
import { MIN_DISK_BYTES, MIN_DISK_INODES } from '../config/config';
import type { StartWorkspaceRequest__Output } from '../generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { Task__Output } from '../generated/tetrix/agent/v1/Task';
import type { NetworkMode, Resources, TaskSpec, WorkspaceSpec } from '../workspace/types';
import { looksLikeReference } from '../images/reference';
import { contentSpec } from './content';
import { askedRevision } from '../source/spec';

export interface Limits {
  maxMemoryBytes: number;
  maxCpuMillis: number;
  maxPids: number;
  defaultNetwork: NetworkMode;
  /** 'none': the node has no volumes, so no disk limit can be asked for. */
  storageBackend: string;
  defaultDiskBytes: number;
  maxDiskBytes: number;
  maxDiskInodes: number;
}

const ID = /^[a-z0-9][a-z0-9-]{0,62}$/;
const PRINCIPAL = /^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$/;
const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]{0,255}$/;
const MIN_MEMORY = 8 << 20;   // below this even init and a shell do not fit
const MAX_ARGS = 4096;
const MAX_ARG_BYTES = 128 * 1024;
const MAX_ENV_BYTES = 1 << 20;

export function workspaceId(field: string, value: string): string {
  if (value === '') throw invalidArgument(field, 'is required');
  if (!ID.test(value)) throw invalidArgument(field, `must match ${ID.source} (lowercase letters, digits and '-', at most 63)`);
  return value;
}

function principal(field: string, value: string, required: boolean): string {
  if (value === '' && !required) return '';
  if (value === '') throw invalidArgument(field, 'is required');
  if (!PRINCIPAL.test(value)) throw invalidArgument(field, `must match ${PRINCIPAL.source}`);
  return value;
}

export function argv(field: string, args: string[], required: boolean): string[] {
  if (args.length === 0 && required) throw invalidArgument(field, 'must name a program (argv is empty)');
  if (args.length > MAX_ARGS) throw invalidArgument(field, `has more than ${MAX_ARGS} arguments`);
  args.forEach((arg, i) => {
    if (arg.includes('\0')) throw invalidArgument(`${field}[${i}]`, 'contains a NUL byte');
    if (Buffer.byteLength(arg) > MAX_ARG_BYTES) throw invalidArgument(`${field}[${i}]`, `is longer than ${MAX_ARG_BYTES} bytes`);
  });
  if (required && args[0] === '') throw invalidArgument(`${field}[0]`, 'is empty');
  return [...args];
}

export function env(field: string, vars: Record<string, string>): Record<string, string> {
  let bytes = 0;
  for (const [key, value] of Object.entries(vars)) {
    if (!ENV_KEY.test(key)) throw invalidArgument(`${field}`, `key "${key.slice(0, 64).replace(/[^\x20-\x7e]/g, '?')}" is not a valid variable name`);
    if (value.includes('\0')) throw invalidArgument(`${field}[${key}]`, 'value contains a NUL byte');
    bytes += Buffer.byteLength(key) + Buffer.byteLength(value) + 2;
  }
  if (bytes > MAX_ENV_BYTES) throw invalidArgument(field, `is larger than ${MAX_ENV_BYTES} bytes`);
  return { ...vars };
}

function boundedInt(field: string, raw: string | undefined, max: number): number {
  const text = raw ?? '0';
  const n = Number(text);
  if (!/^-?\d+$/.test(text) || !Number.isSafeInteger(n)) throw invalidArgument(field, `"${text}" is not an integer`);
  if (n < 0) throw invalidArgument(field, 'must not be negative');
  if (n > max) throw invalidArgument(field, `${n} is above this node's limit of ${max}`);
  return n;
}

/** As asked: 0 stays 0, and the lifecycle puts the node default in its place. */
function resources(raw: StartWorkspaceRequest__Output['resources'], limits: Limits): Resources {
  const memoryBytes = boundedInt('resources.memory_bytes', raw?.memoryBytes, limits.maxMemoryBytes);
  if (memoryBytes !== 0 && memoryBytes < MIN_MEMORY) throw invalidArgument('resources.memory_bytes', `must be 0 (node default) or at least ${MIN_MEMORY}`);
  const cpuMillis = boundedInt('resources.cpu_millis', raw?.cpuMillis, limits.maxCpuMillis);
  if (cpuMillis !== 0 && cpuMillis < 10) throw invalidArgument('resources.cpu_millis', 'must be 0 (node default) or at least 10');
  const pids = boundedInt('resources.pids', raw?.pids, limits.maxPids);
  if (pids !== 0 && pids < 8) throw invalidArgument('resources.pids', 'must be 0 (node default) or at least 8');
  return { memoryBytes, cpuMillis, pids, ...disk(raw, limits) };
}

/** A volume's size and inode count (src/storage): as asked, 0 for the node default. */
function disk(raw: StartWorkspaceRequest__Output['resources'], limits: Limits): { diskBytes: number; diskInodes: number } {
  const none = limits.storageBackend === 'none';
  const diskBytes = boundedInt('resources.disk_bytes', raw?.diskBytes, none ? Number.MAX_SAFE_INTEGER : limits.maxDiskBytes);
  const diskInodes = boundedInt('resources.disk_inodes', raw?.diskInodes, none ? Number.MAX_SAFE_INTEGER : limits.maxDiskInodes);
  if (none && (diskBytes !== 0 || diskInodes !== 0)) {
    throw invalidArgument(diskBytes !== 0 ? 'resources.disk_bytes' : 'resources.disk_inodes', 'this node has no workspace volumes (storageBackend none), so it cannot hold a disk limit');
  }
  if (diskBytes !== 0 && diskBytes < MIN_DISK_BYTES) throw invalidArgument('resources.disk_bytes', `must be 0 (node default) or at least ${MIN_DISK_BYTES}`);
  if (diskInodes !== 0 && diskInodes < MIN_DISK_INODES) throw invalidArgument('resources.disk_inodes', `must be 0 (one per 16 KiB) or at least ${MIN_DISK_INODES}`);
  // ext4 needs room for its inode tables (256 bytes each) besides the files: at most one per 2 KiB.
  const bytes = diskBytes || limits.defaultDiskBytes;
  if (diskInodes > Math.floor(bytes / 2048)) throw invalidArgument('resources.disk_inodes', `${diskInodes} is more than a volume of ${bytes} bytes holds (one per 2048 bytes)`);
  return { diskBytes, diskInodes };
}

export function dirInside(field: string, value: string): string {
  if (value === '') return '/workspace';
  if (value.includes('\0')) throw invalidArgument(field, 'contains a NUL byte');
  if (!path.posix.isAbsolute(value)) throw invalidArgument(field, 'must be an absolute path');
  if (value.split('/').includes('..')) throw invalidArgument(field, "must not contain '..'");
  if (value.length > 1024) throw invalidArgument(field, 'is longer than 1024 characters');
  return path.posix.normalize(value);
}

/** UpdatePorts' list: the same rules as StartWorkspace's ports. */
export function portList(values: number[]): number[] {
  return ports('ports', values, 'ISOLATED');
}

function ports(field: string, values: number[], network: NetworkMode): number[] {
  if (values.length > 64) throw invalidArgument(field, 'lists more than 64 ports');
  const seen = new Set<number>();
  values.forEach((p, i) => {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalidArgument(`${field}[${i}]`, `${p} is not a port (1-65535)`);
    if (seen.has(p)) throw invalidArgument(`${field}[${i}]`, `port ${p} is listed twice`);
    seen.add(p);
  });
  if (values.length > 0 && network === 'NONE') throw invalidArgument(field, 'exposed ports need network ISOLATED');
  return [...values].sort((a, b) => a - b);
}

function task(t: Task__Output, i: number): TaskSpec {
  const field = `tasks[${i}]`;
  if (!NAME.test(t.name)) throw invalidArgument(`${field}.name`, `must match ${NAME.source}`);
  return {
    name: t.name,
    command: argv(`${field}.command`, t.command, true),
    workingDir: dirInside(`${field}.working_dir`, t.workingDir),
    env: env(`${field}.env`, t.env),
  };
}

function networkMode(value: string, limits: Limits): NetworkMode {
  if (value === 'NETWORK_MODE_NONE') return 'NONE';
  if (value === 'NETWORK_MODE_ISOLATED') return 'ISOLATED';
  if (value === 'NETWORK_MODE_UNSPECIFIED') return limits.defaultNetwork;
  throw invalidArgument('network', `unknown mode ${value}`);
}

export function startSpec(req: StartWorkspaceRequest__Output, limits: Limits): WorkspaceSpec {
  const kind = req.kind === 'WORKSPACE_KIND_PREBUILD' ? 'PREBUILD' : req.kind === 'WORKSPACE_KIND_REGULAR' || req.kind === 'WORKSPACE_KIND_UNSPECIFIED' ? 'REGULAR' : undefined;
  if (!kind) throw invalidArgument('kind', `unknown kind ${String(req.kind)}`);
  const network = networkMode(String(req.network), limits);
  const tasks = req.tasks.map(task);
  if (kind === 'PREBUILD' && tasks.length === 0) throw invalidArgument('tasks', 'a prebuild needs at least one task');
  if (kind === 'REGULAR' && tasks.length > 0) throw invalidArgument('tasks', 'only prebuilds run tasks');
  if (req.restoreFrom !== '' && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(req.restoreFrom)) throw invalidArgument('restore_from', 'is not a backup id');
  const { content, restoreFrom } = contentSpec(req.content, req.restoreFrom);
  // A prebuild that fetches its source records what it fetched; `source` is then what was asked, from content.
  const source = content.kind === 'none'
    ? { repositoryUrl: req.source?.repositoryUrl ?? '', revision: req.source?.revision ?? '' }
    : { repositoryUrl: content.git.url, revision: askedRevision(content.git) };
  if (content.kind !== 'none' && req.source && (req.source.repositoryUrl || req.source.revision)
    && (req.source.repositoryUrl !== source.repositoryUrl || req.source.revision !== source.revision)) {
    throw invalidArgument('source', 'differs from content.git (leave source empty: it is taken from the content source)');
  }
  if (kind === 'PREBUILD' && content.kind === 'prebuild') throw invalidArgument('content.prebuild', 'a prebuild starts from a fresh checkout');
  if (kind === 'PREBUILD') {
    if (!/^[\x21-\x7e]{1,2048}$/.test(source.repositoryUrl)) throw invalidArgument('source.repository_url', 'a prebuild names the repository it builds (printable, at most 2048)');
    if (!/^[\x21-\x7e]{1,256}$/.test(source.revision)) throw invalidArgument('source.revision', 'a prebuild names the revision it builds (printable, at most 256)');
    if (tasks.length > 64) throw invalidArgument('tasks', 'more than 64 tasks');
  }
  if (req.image === '') throw invalidArgument('image', 'is required');
  if (req.image.length > 512 || req.image.includes('\0')) throw invalidArgument('image', 'is not an image name');
  // An OCI image may bring its own command (Entrypoint + Cmd) and working directory (WorkingDir).
  const oci = looksLikeReference(req.image);
  if (req.seccompProfile !== '' && !NAME.test(req.seccompProfile)) throw invalidArgument('seccomp_profile', `must match ${NAME.source}`);
  return {
    id: workspaceId('id', req.id),
    ownerId: principal('owner_id', req.ownerId, true),
    teamId: principal('team_id', req.teamId, kind === 'PREBUILD'),
    kind,
    image: req.image,
    command: argv('command', req.command, kind === 'REGULAR' && (!oci || req.command.length > 0)),
    env: env('env', req.env),
    resources: resources(req.resources, limits),
    network,
    ports: ports('ports', req.ports, network),
    restoreFrom,
    seccompProfile: req.seccompProfile,
    tasks,
    source,
    workingDir: oci && req.workingDir === '' ? '' : dirInside('working_dir', req.workingDir),
    ...(req.user !== '' ? { user: userField(req.user) } : {}),
    content,
  };
}

const USER_PART = '[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}';
const USER = new RegExp(`^${USER_PART}(:${USER_PART})?$`);

function userField(value: string): string {
  if (!USER.test(value)) throw invalidArgument('user', 'must be NAME[:GROUP] or UID[:GID]');
  return value;
}

export function gracePeriod(ms: number): number {
  if (ms > 3_600_000) throw invalidArgument('grace_period_ms', 'is longer than an hour');
  return ms;
}
