#!/usr/bin/env node
// tetrixctl: the operators' command line, over the same API the control plane uses.
import { status as grpcStatus, type ServiceError } from '@grpc/grpc-js';
import { unaryCall, connect, type Clients } from './client';
import type { NodeInfo__Output } from '../generated/tetrix/agent/v1/NodeInfo';
import type { LogChunk__Output } from '../generated/tetrix/agent/v1/LogChunk';
import type { TeardownWorkspaceResponse__Output } from '../generated/tetrix/agent/v1/TeardownWorkspaceResponse';
import type { ListWorkspacesResponse__Output } from '../generated/tetrix/agent/v1/ListWorkspacesResponse';
import type { Workspace__Output } from '../generated/tetrix/agent/v1/Workspace';
import type { StartWorkspaceRequest } from '../generated/tetrix/agent/v1/StartWorkspaceRequest';

const usage = `usage: tetrixctl [--socket PATH] [--output table|json] COMMAND ...

commands:
  start ID --image IMAGE --owner USER [--team TEAM] [--memory BYTES[K|M|G]] [--cpu MILLIS]
           [--pids N] [--env KEY=VALUE]... [--network none|isolated] [--workdir DIR] -- ARGV...
  stop ID [--grace SECONDS]
  teardown ID
  get ID
  list [--owner USER]
  watch [ID]
  logs ID [--follow]
  info
`;

class UsageError extends Error {}

const BOOLEAN_FLAGS = new Set(['follow', 'help']);

interface Parsed {
  flags: Map<string, string[]>;
  bools: Set<string>;
  args: string[];
  rest: string[];
}

function parse(argv: string[]): Parsed {
  const flags = new Map<string, string[]>();
  const bools = new Set<string>();
  const args: string[] = [];
  let rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      rest = argv.slice(i + 1);
      break;
    }
    if (a === '-f' || BOOLEAN_FLAGS.has(a.slice(2))) {
      bools.add(a === '-f' ? 'f' : a.slice(2));
      flags.set(a === '-f' ? 'follow' : a.slice(2), []);
      continue;
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) {
      args.push(a);
      continue;
    }
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new UsageError(`--${m[1]} needs a value`);
    flags.set(m[1], [...(flags.get(m[1]) ?? []), value]);
  }
  return { flags, bools, args, rest };
}

const one = (p: Parsed, name: string): string | undefined => p.flags.get(name)?.at(-1);

function bytes(text: string): string {
  const m = /^(\d+)([KMG]?)$/i.exec(text);
  if (!m) throw new UsageError(`--memory: "${text}" is not a size like 512M`);
  const mult = { '': 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G'];
  return (BigInt(m[1]) * mult).toString();
}

function startRequest(p: Parsed): StartWorkspaceRequest {
  const [id] = p.args;
  if (!id) throw new UsageError('start needs an ID');
  const env: Record<string, string> = {};
  for (const kv of p.flags.get('env') ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new UsageError(`--env: expected KEY=VALUE`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const network = one(p, 'network');
  return {
    id,
    image: one(p, 'image') ?? 'builtin:busybox',
    ownerId: one(p, 'owner') ?? process.env.USER ?? 'root',
    teamId: one(p, 'team') ?? '',
    command: p.rest,
    env,
    resources: { memoryBytes: one(p, 'memory') ? bytes(one(p, 'memory')!) : 0, cpuMillis: one(p, 'cpu') ?? 0, pids: one(p, 'pids') ?? 0 },
    network: network ? `NETWORK_MODE_${network.toUpperCase()}` as StartWorkspaceRequest['network'] : 'NETWORK_MODE_UNSPECIFIED',
    workingDir: one(p, 'workdir') ?? '',
  };
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

function show(workspaces: Workspace__Output[], json: boolean): void {
  if (json) for (const w of workspaces) process.stdout.write(JSON.stringify(w) + '\n');
  else process.stdout.write(table([header, ...workspaces.map(row)]));
  const failed = workspaces.find((w) => w.message);
  if (!json && failed && workspaces.length === 1) process.stdout.write(`message: ${failed.message}\n`);
}

async function run(c: Clients, command: string, p: Parsed, json: boolean): Promise<void> {
  const ws = c.workspaces;
  switch (command) {
    case 'start':
      return show([await unaryCall<Workspace__Output>((md, o, cb) => ws.StartWorkspace(startRequest(p), md, o, cb))], json);
    case 'stop': {
      const grace = Number(one(p, 'grace') ?? '0');
      return show([await unaryCall<Workspace__Output>((md, o, cb) => ws.StopWorkspace({ id: p.args[0] ?? '', gracePeriodMs: Math.round(grace * 1000) }, md, o, cb))], json);
    }
    case 'teardown': {
      const res = await unaryCall<TeardownWorkspaceResponse__Output>((md, o, cb) => ws.TeardownWorkspace({ id: p.args[0] ?? '' }, md, o, cb));
      process.stdout.write(json ? JSON.stringify(res) + '\n' : res.existed ? `${p.args[0]} torn down\n` : `${p.args[0]} did not exist\n`);
      return;
    }
    case 'get':
      return show([await unaryCall<Workspace__Output>((md, o, cb) => ws.GetWorkspace({ id: p.args[0] ?? '' }, md, o, cb))], json);
    case 'list':
      return show((await unaryCall<ListWorkspacesResponse__Output>((md, o, cb) => ws.ListWorkspaces({ ownerId: one(p, 'owner') ?? '' }, md, o, cb))).workspaces, json);
    case 'info': {
      const info = await unaryCall<NodeInfo__Output>((md, o, cb) => c.node.GetNodeInfo({}, md, o, cb));
      process.stdout.write(json ? JSON.stringify(info) + '\n' : `node ${info.nodeId}, tetrix ${info.version}, cgroups ${info.cgroupMode}\n`);
      return;
    }
    case 'logs':
      return new Promise((resolve, reject) => {
        const stream = ws.StreamLogs({ id: p.args[0] ?? '', follow: p.flags.has('follow') || p.bools.has('f') });
        stream.on('data', (c: LogChunk__Output) => {
          if (json) process.stdout.write(JSON.stringify({ time: Number(c.timeUnixMs), stream: c.stream, task: c.task, data: c.data.toString('utf8') }) + '\n');
          else (c.stream === 'stderr' ? process.stderr : process.stdout).write(c.data);
        });
        stream.on('error', (err: ServiceError) => (err.code === grpcStatus.CANCELLED ? resolve() : reject(err)));
        stream.on('end', resolve);
        process.once('SIGINT', () => stream.cancel());
      });
    case 'watch':
      return new Promise((resolve, reject) => {
        const stream = ws.WatchWorkspaces({ id: p.args[0] ?? '' });
        stream.on('data', (e: { workspace: Workspace__Output | null }) => {
          if (!e.workspace) return;
          process.stdout.write(json ? JSON.stringify(e.workspace) + '\n' : row(e.workspace).join('  ') + '\n');
        });
        stream.on('error', (err: ServiceError) => (err.code === grpcStatus.CANCELLED ? resolve() : reject(err)));
        stream.on('end', resolve);
        process.once('SIGINT', () => stream.cancel());
      });
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

async function main(argv: string[]): Promise<number> {
  const p = parse(argv);
  const command = p.args.shift();
  if (!command || p.flags.has('help')) {
    process.stdout.write(usage);
    return command ? 0 : 2;
  }
  const output = one(p, 'output') ?? 'table';
  if (output !== 'table' && output !== 'json') throw new UsageError('--output is table or json');
  const clients = connect({ socketPath: one(p, 'socket') ?? process.env.TETRIX_SOCKET ?? '/run/tetrix/tetrixd.sock' });
  try {
    await run(clients, command, p, output === 'json');
    return 0;
  } finally {
    clients.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      if (err instanceof UsageError) process.stderr.write(`tetrixctl: ${err.message}\n\n${usage}`);
      else {
        const e = err as Partial<ServiceError>;
        process.stderr.write(`tetrixctl: ${e.code !== undefined ? `${grpcStatus[e.code]}: ${e.details}` : String(err)}\n`);
      }
      process.exit(err instanceof UsageError ? 2 : 1);
    },
  );
}
