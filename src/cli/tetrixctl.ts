#!/usr/bin/env node
// tetrixctl: the operators' command line, over the same API the control plane uses.
// Exit codes: 0 done, 1 the daemon refused or the thing failed, 2 the command line is wrong (nothing was sent).
import { status as grpcStatus, type ServiceError } from '@grpc/grpc-js';
import fs from 'node:fs';
import path from 'node:path';
import { FsObjectStorage } from '../content/storage-fs';
import { storedObjectOf } from '../content/repo/formats';
import { DomainError } from '../errors';
import { packageRoot } from '../config/config';
import { verifyStoredSnapshotProvenance } from '../prebuild/verify';
import { contentLines, contentRequest, provenanceSummary } from './source';
import { adminCredentials, CliError, connect, unaryCall, type Clients } from './client';
import { listBackups } from './backups';
import { backupIds, removeBackups } from './backup-rm';
import { checkBackups } from './backup-check';
import { pruneBackups } from './backup-prune';
import { execAction } from './exec';
import { COMMANDS, cpuMillis, duration, integer, keyValues, oneOf, parseCommandLine, size, usage, UsageError, type Invocation } from './args';
import type { NodeInfo__Output } from '../generated/tetrix/agent/v1/NodeInfo';
import type { LogChunk__Output } from '../generated/tetrix/agent/v1/LogChunk';
import type { BackupProgress__Output } from '../generated/tetrix/agent/v1/BackupProgress';
import type { RotateKeyResponse__Output } from '../generated/tetrix/agent/v1/RotateKeyResponse';
import type { TeardownWorkspaceResponse__Output } from '../generated/tetrix/agent/v1/TeardownWorkspaceResponse';
import type { ListWorkspacesResponse__Output } from '../generated/tetrix/agent/v1/ListWorkspacesResponse';
import type { Workspace__Output } from '../generated/tetrix/agent/v1/Workspace';
import type { StartWorkspaceRequest } from '../generated/tetrix/agent/v1/StartWorkspaceRequest';
import { pull } from './pull';
import { images } from './images';
import { rmi } from './rmi';
import { socketPathOf } from './socket';

const str = (inv: Invocation, name: string): string | undefined => inv.values[name] as string | undefined;
const list = (inv: Invocation, name: string): string[] => (inv.values[name] as string[] | undefined) ?? [];
const MAX_GRACE_MS = 3_600_000;

function startRequest(inv: Invocation): StartWorkspaceRequest {
  const memory = str(inv, 'memory');
  const pids = str(inv, 'pids');
  const network = str(inv, 'network');
  return {
    id: inv.args[0],
    image: str(inv, 'image') ?? 'builtin:busybox',
    ownerId: str(inv, 'owner') ?? process.env.USER ?? 'root',
    teamId: str(inv, 'team') ?? '',
    command: inv.argv,
    env: Object.fromEntries(keyValues('--env', list(inv, 'env'))),
    resources: {
      memoryBytes: memory === undefined ? 0 : size('--memory', memory),
      cpuMillis: cpuMillis(str(inv, 'cpus'), str(inv, 'cpu')),
      pids: pids === undefined ? 0 : integer('--pids', pids, 1),
      diskBytes: str(inv, 'disk') === undefined ? 0 : size('--disk', str(inv, 'disk')!),
      diskInodes: str(inv, 'disk-inodes') === undefined ? 0 : integer('--disk-inodes', str(inv, 'disk-inodes')!, 1),
    },
    network: network === undefined ? 'NETWORK_MODE_UNSPECIFIED' : `NETWORK_MODE_${oneOf('--network', network, ['none', 'isolated'] as const).toUpperCase()}` as StartWorkspaceRequest['network'],
    workingDir: str(inv, 'workdir') ?? '',
    user: str(inv, 'user') ?? '',
    restoreFrom: str(inv, 'restore-from') ?? '',
    seccompProfile: str(inv, 'seccomp-profile') ?? '',
    ports: list(inv, 'port').map((p) => integer('--port', p, 1, 65535)),
    content: contentRequest((name) => inv.values[name] as string | boolean | undefined),
  };
}

function prebuildRequest(inv: Invocation): StartWorkspaceRequest {
  const tasks = keyValues('--task', list(inv, 'task'), 'NAME=SHELL-COMMAND').map(([name, command]) => ({ name, command: ['/bin/sh', '-c', command], workingDir: '', env: {} }));
  return {
    ...startRequest(inv),
    kind: 'WORKSPACE_KIND_PREBUILD',
    tasks,
    source: { repositoryUrl: str(inv, 'repo') ?? '', revision: str(inv, 'rev') ?? '' },
  };
}

/** The RPC's 0 means "the node default", so an asked-for 0 (kill at once, as `docker stop -t 0`) is sent as 1 ms. */
function graceMs(inv: Invocation): number {
  const text = str(inv, 'grace');
  if (text === undefined) return 0;
  const ms = duration('--grace', text);
  if (ms > MAX_GRACE_MS) throw new UsageError(`--grace: ${text} is longer than an hour`);
  return Math.max(1, ms);
}

const short = (s: string, prefix: string): string => s.replace(prefix, '');

function row(w: Workspace__Output): string[] {
  const state = short(w.state, 'WORKSPACE_STATE_');
  const how = w.reason === 'STOP_REASON_UNSPECIFIED' ? '' : short(w.reason, 'STOP_REASON_') + (w.signal ? ` (${w.signal})` : state === 'STOPPED' ? ` (exit ${w.exitCode})` : '');
  return [w.id, state, how, w.ownerId, w.image, w.pid ? String(w.pid) : '-', w.hostUidBase ? String(w.hostUidBase) : '-'];
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n') + '\n';
}

const header = ['ID', 'STATE', 'REASON', 'OWNER', 'IMAGE', 'PID', 'UID BASE'];

/** All records in one write: a pipe gets every one of them before the process ends (see main). */
function show(workspaces: Workspace__Output[], json: boolean): void {
  if (json) {
    process.stdout.write(workspaces.map((w) => JSON.stringify(w) + '\n').join(''));
    return;
  }
  process.stdout.write(table([header, ...workspaces.map(row)]));
  const failed = workspaces.find((w) => w.message);
  if (failed && workspaces.length === 1) process.stdout.write(`message: ${failed.message}\n`);
  if (workspaces.length === 1) process.stdout.write(contentLines(workspaces[0]!));
}

const note = (text: string): void => void process.stderr.write(`tetrixctl: ${text}\n`);

const isNotFound = (err: unknown): boolean => (err as Partial<ServiceError>).code === grpcStatus.NOT_FOUND;

/**
 * StartWorkspace is idempotent on the id (docs/operations.md, "Idempotency"): an identical repeat returns the
 * workspace as it is. The CLI says which of the two happened, and a FAILED workspace is a failure (exit 1)
 * whether this call or an earlier one started it.
 */
async function start(c: Clients, req: StartWorkspaceRequest, json: boolean): Promise<number> {
  const ws = c.workspaces;
  const before = await unaryCall<Workspace__Output>((md, o, cb) => ws.GetWorkspace({ id: req.id }, md, o, cb)).then(
    () => true,
    (err: unknown) => (isNotFound(err) ? false : undefined), // undefined: cannot tell (e.g. not allowed to read it)
  );
  const w = await unaryCall<Workspace__Output>((md, o, cb) => ws.StartWorkspace(req, md, o, cb));
  show([w], json);
  const state = short(w.state, 'WORKSPACE_STATE_');
  if (state === 'FAILED') {
    note(before
      ? `workspace ${w.id} already exists and FAILED (${w.message || short(w.reason, 'STOP_REASON_')}); nothing was started. Tear it down to start it again.`
      : `workspace ${w.id} FAILED: ${w.message || short(w.reason, 'STOP_REASON_')}`);
    return 1;
  }
  if (before) note(`workspace ${w.id} already exists with this spec (${state}); nothing was started`);
  return 0;
}

/** StopWorkspace returns a workspace that had already ended as it is; the CLI says that nothing was done. */
async function stop(c: Clients, id: string, gracePeriodMs: number, json: boolean): Promise<number> {
  const ws = c.workspaces;
  const before = await unaryCall<Workspace__Output>((md, o, cb) => ws.GetWorkspace({ id }, md, o, cb)).catch(() => undefined);
  const w = await unaryCall<Workspace__Output>((md, o, cb) => ws.StopWorkspace({ id, gracePeriodMs }, md, o, cb));
  show([w], json);
  const was = before && short(before.state, 'WORKSPACE_STATE_');
  if (was === 'STOPPED' || was === 'FAILED' || was === 'SUCCEEDED') note(`workspace ${id} was already ${was}; nothing was stopped`);
  return 0;
}

async function teardown(c: Clients, inv: Invocation, json: boolean): Promise<number> {
  const id = inv.args[0];
  const res = await unaryCall<TeardownWorkspaceResponse__Output>((md, o, cb) => c.workspaces.TeardownWorkspace({ id, backupFirst: inv.values['backup-first'] === true }, md, o, cb));
  if (json) process.stdout.write(JSON.stringify(res) + '\n');
  // The RPC is idempotent for the control plane (an unknown id is success); a person typing the command wants
  // to know, as with `docker rm nosuch`: exit 1.
  if (!res.existed) {
    note(`no such workspace: ${id} (nothing torn down)`);
    return 1;
  }
  if (!json) process.stdout.write(`${id} torn down${res.backupId ? ` (final backup ${res.backupId})` : ''}\n`);
  return 0;
}

const mib = (n: number): string => `${(n / (1 << 20)).toFixed(1)} MiB`;

function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const hms = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60];
  return (hms[0] ? `${hms[0]}:` : '') + `${String(hms[1]).padStart(hms[0] ? 2 : 1, '0')}:${String(hms[2]).padStart(2, '0')}`;
}

/** One progress line as restic and rsync --info=progress2 show it: share, bytes, rate and time left. */
export function progressLine(done: number, total: number, files: number, elapsedSeconds: number): string {
  const rate = done / Math.max(0.001, elapsedSeconds);
  // The daemon's total is measured before the walk; files that grow meanwhile can pass it, so 99% until the end.
  const pct = total > 0 ? Math.min(99, Math.floor((100 * done) / total)) : 0;
  const bar = '#'.repeat(Math.round(pct / 4)).padEnd(25, '.');
  const left = total > 0 && rate > 0 ? `  ${clock(Math.max(0, total - done) / rate)} left` : '';
  return `[${bar}] ${String(pct).padStart(3)}%  ${mib(done)}${total ? ' / ' + mib(total) : ''}  ${files} files  ${mib(rate)}/s${left}`;
}

/** A progress bar on a terminal; one JSON object per message with --output json. */
/** keys rotate [--rewrap] [--retire KEY]..., keys retire KEY..., keys status: RotateKey, which reports what
 *  still depends on each key. */
async function keys(c: Clients, inv: Invocation, json: boolean): Promise<number> {
  const sub = oneOf('keys', inv.args[0], ['rotate', 'retire', 'status'] as const);
  const named = inv.args.slice(1);
  if (sub !== 'retire' && named.length > 0) throw new UsageError(`keys ${sub}: unexpected argument "${named[0]}"`, 'keys');
  if (sub === 'retire' && named.length === 0) throw new UsageError('keys retire needs KEY (the key ids to retire)', 'keys');
  const retire = (inv.values.retire as string[] | undefined) ?? [];
  if (sub !== 'rotate' && (retire.length > 0 || inv.values.rewrap === true)) throw new UsageError(`keys ${sub}: --rewrap and --retire go with keys rotate`, 'keys');
  const request = sub === 'rotate' ? { rewrapBackups: inv.values.rewrap === true, retireKeyIds: retire }
    : sub === 'retire' ? { keepCurrent: true, retireKeyIds: named } : { keepCurrent: true };
  const res = await unaryCall<RotateKeyResponse__Output>((md, o, cb) => c.node.RotateKey(request, md, o, cb));
  if (json) {
    process.stdout.write(JSON.stringify(res) + '\n');
    return 0;
  }
  const lines = [`current key ${res.keyId}`];
  if (sub === 'rotate') lines.push(`re-wrapped: ${res.rewrapped} backups, ${res.rewrappedSecrets} secrets, ${res.rewrappedLogs} logs`);
  if (res.retiredKeyIds.length) lines.push(`retired: ${res.retiredKeyIds.join(', ')}`);
  for (const id of res.keyIds) {
    const uses = res.usage.filter((u) => u.keyId === id).map((u) => `${u.count} ${u.kind}`);
    lines.push(`  ${id}${id === res.keyId ? ' (current)' : ''}: ${uses.length ? uses.join(', ') : 'nothing depends on it'}`);
  }
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}

/** backup ID, or one of its subcommands (a workspace named rm, check or prune is backed up over the API). */
function backupAction(inv: Invocation, json: boolean): Action {
  const [first] = inv.args;
  // Each switch belongs to one form: `backup ID --dry-run` would otherwise store a real backup.
  const form = first === 'rm' || first === 'check' || first === 'prune' ? first : 'ID';
  const owner: Record<string, string> = { 'include-upper': 'ID', 'dry-run': 'prune' };
  for (const [flag, wants] of Object.entries(owner)) {
    if (inv.values[flag] === true && form !== wants) throw new UsageError(`backup ${form}: --${flag} goes with backup ${wants}`, 'backup');
  }
  if (first === 'rm') {
    const ids = backupIds(inv);
    return (c) => removeBackups(c, ids, json);
  }
  if (inv.args.length > 1) throw new UsageError(`backup: unexpected argument "${inv.args[1]}"`, 'backup');
  if (first === 'check') return (c) => checkBackups(c, json);
  if (first === 'prune') return (c) => pruneBackups(c, inv.values['dry-run'] === true, json);
  return (c) => backup(c, inv, json);
}

function backup(c: Clients, inv: Invocation, json: boolean): Promise<number> {
  const tty = process.stderr.isTTY && !json;
  const began = Date.now();
  return new Promise((resolve, reject) => {
    const stream = c.workspaces.BackupWorkspace({ id: inv.args[0], includeUpper: inv.values['include-upper'] === true });
    stream.on('data', (m: BackupProgress__Output) => {
      if (json) {
        process.stdout.write(JSON.stringify(m.progress ? { progress: m.progress } : { result: m.result }) + '\n');
        return;
      }
      if (m.progress && tty) {
        const p = m.progress;
        process.stderr.write(`\r${progressLine(Number(p.bytesDone), Number(p.bytesTotal), Number(p.filesDone), (Date.now() - began) / 1000)} \x1b[K`);
      }
      if (m.result) {
        if (tty) process.stderr.write('\n');
        process.stdout.write(`backup ${m.result.backupId}: ${mib(Number(m.result.size))} stored, sha256 ${m.result.sha256}, key ${m.result.keyId}\n`);
      }
    });
    stream.on('error', reject);
    stream.on('end', () => resolve(0));
    process.once('SIGINT', () => stream.cancel());
  });
}

/** Splits a stream's chunks into whole lines (a last partial one at the end), each with its chunk's time. */
class Lines {
  #partial = '';
  #time = 0;

  push(text: string, time: number, emit: (line: string, time: number) => void): void {
    if (this.#partial === '') this.#time = time;
    const parts = (this.#partial + text).split('\n');
    this.#partial = parts.pop()!;
    for (const line of parts) {
      emit(line + '\n', this.#time);
      this.#time = time;
    }
  }

  end(emit: (line: string, time: number) => void): void {
    if (this.#partial !== '') emit(this.#partial, this.#time);
    this.#partial = '';
  }
}

interface LogLine { stream: string; task: string; time: number; data: string }

function logs(c: Clients, inv: Invocation, json: boolean): Promise<number> {
  const follow = inv.values.follow === true;
  const tailText = str(inv, 'tail');
  const tail = tailText === undefined ? undefined : integer('--tail', tailText, 0);
  const timestamps = inv.values.timestamps === true;
  const print = (l: LogLine): void => {
    if (json) process.stdout.write(JSON.stringify({ time: l.time, stream: l.stream, task: l.task, data: l.data }) + '\n');
    else (l.stream === 'stderr' ? process.stderr : process.stdout).write(timestamps ? `${new Date(l.time).toISOString()} ${l.data}` : l.data);
  };
  const byLine = tail !== undefined || timestamps;
  const kept: LogLine[] = [];
  const emit = (l: LogLine): void => {
    if (tail === undefined) return print(l);
    kept.push(l);
    if (kept.length > tail) kept.shift();
  };
  const splitters = new Map<string, Lines>();
  const finish = (): number => {
    for (const [key, lines] of splitters) {
      const [stream, task] = key.split('\0');
      lines.end((data, time) => emit({ stream, task, time, data }));
    }
    kept.forEach(print);
    return 0;
  };
  return new Promise((resolve, reject) => {
    const stream = c.workspaces.StreamLogs({ id: inv.args[0], follow });
    stream.on('data', (chunk: LogChunk__Output) => {
      const base = { stream: chunk.stream, task: chunk.task, time: Number(chunk.timeUnixMs) };
      if (!byLine) return print({ ...base, data: chunk.data.toString('utf8') });
      const key = `${chunk.stream}\0${chunk.task}`;
      if (!splitters.has(key)) splitters.set(key, new Lines());
      splitters.get(key)!.push(chunk.data.toString('utf8'), base.time, (data, time) => emit({ ...base, time, data }));
    });
    stream.on('error', (err: ServiceError) => (err.code === grpcStatus.CANCELLED ? resolve(finish()) : reject(err)));
    stream.on('end', () => resolve(finish()));
    process.once('SIGINT', () => stream.cancel());
  });
}

function watch(c: Clients, inv: Invocation, json: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const stream = c.workspaces.WatchWorkspaces({ id: inv.args[0] ?? '' });
    stream.on('data', (e: { workspace: Workspace__Output | null }) => {
      if (!e.workspace) return;
      process.stdout.write(json ? JSON.stringify(e.workspace) + '\n' : row(e.workspace).join('  ') + '\n');
    });
    stream.on('error', (err: ServiceError) => (err.code === grpcStatus.CANCELLED ? resolve(0) : reject(err)));
    stream.on('end', () => resolve(0));
    process.once('SIGINT', () => stream.cancel());
  });
}

type Action = (c: Clients) => Promise<number>;

/** Checks every value first and returns what to do: a usage error never reaches the daemon. */
function prepare(inv: Invocation, json: boolean): Action {
  const id = inv.args[0];
  switch (inv.command!.name) {
    case 'start': {
      const req = startRequest(inv);
      return (c) => start(c, req, json);
    }
    case 'prebuild': {
      const req = prebuildRequest(inv);
      return (c) => start(c, req, json);
    }
    case 'stop': {
      const gracePeriodMs = graceMs(inv);
      return (c) => stop(c, id, gracePeriodMs, json);
    }
    case 'teardown':
      return (c) => teardown(c, inv, json);
    case 'backup':
      return backupAction(inv, json);
    case 'backups':
      return (c) => listBackups(c, inv, json);
    case 'verify':
      return (c) => verify(c, inv, json);
    case 'keys':
      return (c) => keys(c, inv, json);
    case 'get':
      return async (c) => (show([await unaryCall<Workspace__Output>((md, o, cb) => c.workspaces.GetWorkspace({ id }, md, o, cb))], json), 0);
    case 'list':
      return async (c) => {
        const res = await unaryCall<ListWorkspacesResponse__Output>((md, o, cb) => c.workspaces.ListWorkspaces({ ownerId: str(inv, 'owner') ?? '' }, md, o, cb));
        show(res.workspaces, json);
        return 0;
      };
    case 'info':
      return async (c) => {
        const info = await unaryCall<NodeInfo__Output>((md, o, cb) => c.node.GetNodeInfo({}, md, o, cb));
        process.stdout.write(json ? JSON.stringify(info) + '\n' : `node ${info.nodeId}, tetrix ${info.version}, cgroups ${info.cgroupMode}\n`);
        return 0;
      };
    case 'logs': {
      if (str(inv, 'tail') !== undefined) {
        integer('--tail', str(inv, 'tail')!, 0);
        if (inv.values.follow) throw new UsageError('logs: --tail works without --follow only (the daemon sends the whole log first)');
      }
      return (c) => logs(c, inv, json);
    }
    case 'watch':
      return (c) => watch(c, inv, json);
    case 'pull':
      return (c) => pull(c, inv.args[0], json);
    case 'images':
      return (c) => images(c, json, table);
    case 'rmi':
      return (c) => rmi(c, inv.args[0], json);
    default:
      return execAction(inv, json) ?? unknownCommand(inv);
  }
}

function unknownCommand(inv: Invocation): never {
  throw new UsageError(`unknown command "${inv.command!.name}"`);
}

async function verify(c: Clients, inv: Invocation, json: boolean): Promise<number> {
  const snapshot = inv.args[0];
  const keyFile = str(inv, 'public-key');
  const publicKeyPem = keyFile
    ? fs.readFileSync(keyFile, 'utf8')
    : (await unaryCall<NodeInfo__Output>((md, o, cb) => c.node.GetNodeInfo({}, md, o, cb))).provenancePublicKeyPem;
  const storage = new FsObjectStorage({ dir: str(inv, 'backup-dir') ?? '/var/lib/tetrix/backups' });
  const statement = await verifyStoredSnapshotProvenance({ storage, snapshotObject: storedObjectOf(snapshot), publicKeyPem });
  process.stdout.write(json ? JSON.stringify(statement) + '\n' : `verified: ${snapshot} was built by ${statement.predicate.runDetails.builder.id}\n${provenanceSummary(statement)}${JSON.stringify(statement, null, 2)}\n`);
  return 0;
}

const version = (): string => (JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;

/** One door per call: the unix socket, or TCP with the admin certificate. A flag for the other door would be
 *  silently unused. */
function refuseMixedDoors(inv: Invocation): void {
  const address = str(inv, 'address') !== undefined;
  if (address && str(inv, 'socket') !== undefined) throw new UsageError('--socket and --address name two ways to the daemon: give one of them');
  if (!address && str(inv, 'pki-dir') !== undefined) throw new UsageError('--pki-dir goes with --address (the unix socket needs no certificate)');
}

/** Where the daemon is and what was asked, for error messages. */
let target = '';
let commandName = '';

async function main(argv: string[]): Promise<number> {
  const inv = parseCommandLine(argv);
  commandName = inv.command?.name === 'help' ? '' : inv.command?.name ?? '';
  if (inv.values.version) {
    process.stdout.write(`tetrixctl ${version()}\n`);
    return 0;
  }
  if (inv.values.help || inv.command?.name === 'help') {
    const topic = inv.command?.name === 'help' ? inv.args[0] ?? '' : inv.command?.name ?? '';
    if (topic && !COMMANDS.some((c) => c.name === topic)) throw new UsageError(`unknown command "${topic}"`);
    process.stdout.write(usage(topic));
    return 0;
  }
  if (!inv.command) {
    process.stderr.write(usage());
    return 2;
  }
  const output = oneOf('--output', str(inv, 'output') ?? 'table', ['table', 'json'] as const);
  const action = prepare(inv, output === 'json');
  const address = str(inv, 'address');
  refuseMixedDoors(inv);
  let clients: Clients;
  if (address !== undefined) {
    if (!/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/.test(address)) throw new UsageError(`--address: "${address}" is not HOST:PORT`);
    target = address;
    clients = connect({ address, credentials: await adminCredentials(str(inv, 'pki-dir') ?? '/var/lib/tetrix/pki') });
  } else {
    const socketPath = socketPathOf(str(inv, 'socket'), process.env, (line) => process.stderr.write(line));
    target = `unix:${socketPath}`;
    clients = connect({ socketPath });
  }
  try {
    return await action(clients);
  } finally {
    clients.close();
  }
}

/** Every error a user can cause, as a sentence. */
function explain(err: unknown): string {
  const command = commandName;
  if (err instanceof UsageError) {
    const topic = err.command || command;
    return `tetrixctl: ${err.message}\nSee 'tetrixctl ${topic ? `${topic} ` : ''}--help'.\n`;
  }
  if (err instanceof CliError) return `tetrixctl: ${err.message}\n`;
  if (err instanceof DomainError) return `tetrixctl: ${err.code}: ${err.message}\n`;
  const e = err as Partial<ServiceError>;
  if (typeof e.code === 'number' && grpcStatus[e.code] !== undefined) {
    if (e.code === grpcStatus.UNAVAILABLE) return `tetrixctl: cannot reach tetrixd at ${target} (is it running, and is this the right --socket or --address?): ${e.details}\n`;
    if (e.code === grpcStatus.DEADLINE_EXCEEDED) return `tetrixctl: tetrixd at ${target} did not answer in time: ${e.details}\n`;
    return `tetrixctl: ${grpcStatus[e.code]}: ${e.details || e.message}\n`;
  }
  const sys = err as NodeJS.ErrnoException;
  if (sys.code && sys.path) return `tetrixctl: ${sys.path}: ${sys.message}\n`;
  return `tetrixctl: ${err instanceof Error ? err.message : String(err)}\n`;
}

if (require.main === module) {
  // A reader that goes away (`| head -1`) is not an error of ours.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  const argv = process.argv.slice(2);
  // Never process.exit() here: stdout to a pipe is written asynchronously, and exiting would drop what is
  // still queued (`list --output json | jq` lost records). Set the code and let the event loop drain.
  main(argv).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(explain(err));
      process.exitCode = err instanceof UsageError ? 2 : 1;
    },
  );
}
