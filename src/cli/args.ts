// tetrixctl's command line: the commands, their flags and the strict parsers of flag values.
//
// Tokenising is Node's own util.parseArgs in strict mode. It refuses an unknown flag, a value flag without
// its value and a value given to a switch, which the hand-written parser it replaces did not (it dropped
// unknown flags and started workspaces without the limits the operator typed). It ships with Node, is
// maintained there and adds no dependency. What it leaves to us, typed values, is done below by parsers
// that refuse anything they do not fully understand: every refusal is a UsageError (exit 2) naming the flag
// and what it expects, as git, docker and kubectl do.
import { parseArgs } from 'node:util';

export class UsageError extends Error {
  override name = 'UsageError';
  /** command: whose usage to print after the message ('' = the general one). */
  constructor(message: string, readonly command = '') {
    super(message);
  }
}

interface Flag {
  type: 'string' | 'boolean';
  value?: string;          // what a string flag takes, for usage: SIZE, SECONDS, ...
  multiple?: boolean;
  short?: string;
  help: string;
}

export interface Command {
  name: string;
  synopsis: string;        // after "tetrixctl NAME "
  summary: string;
  args: { names: string[]; required: number; more?: boolean }; // more: the last name repeats
  argv?: boolean;          // takes a program after --
  flags: Record<string, Flag>;
}

const GLOBAL: Record<string, Flag> = {
  socket: { type: 'string', value: 'PATH', help: "the daemon's unix socket (default $TETRIX_SOCKET_PATH, as for tetrixd, or /run/tetrix/tetrixd.sock)" },
  address: { type: 'string', value: 'HOST:PORT', help: 'the mutual-TLS API instead, with ca.crt, admin.crt and admin.key from --pki-dir' },
  'pki-dir': { type: 'string', value: 'DIR', help: 'where the admin certificate is (default /var/lib/tetrix/pki, written by tetrixd on first start)' },
  output: { type: 'string', short: 'o', value: 'table|json', help: 'table for people (default) or one JSON object per line' },
  help: { type: 'boolean', short: 'h', help: 'this help; with a command, that command\'s' },
  version: { type: 'boolean', help: "tetrixctl's version" },
};

// /workspace from git (docs/source.md); the token only from a file, never on a command line others can read.
const SOURCE_FLAGS: Record<string, Flag> = {
  git: { type: 'string', value: 'URL', help: 'check out this repository into /workspace (https://, http://, git://)' },
  ref: { type: 'string', value: 'REF', help: 'with --git: the branch or tag (default: the remote\'s HEAD)' },
  commit: { type: 'string', value: 'SHA', help: 'with --git: a full commit id instead of --ref' },
  depth: { type: 'string', value: 'N', help: 'with --git: a shallow checkout of N commits' },
  submodules: { type: 'boolean', help: 'with --git: check out submodules too' },
  'git-token-file': { type: 'string', value: 'FILE', help: 'with --git (https): a file holding the access token' },
  'from-prebuild': { type: 'string', value: 'SNAPSHOT', help: 'with --git: start from this prebuild snapshot, then fetch only the new commits' },
};

const START_FLAGS: Record<string, Flag> = {
  image: { type: 'string', value: 'IMAGE', help: 'builtin:busybox (default), an image directory name, or an OCI reference (registry/repo:tag)' },
  owner: { type: 'string', value: 'USER', help: 'the owning user (default $USER)' },
  team: { type: 'string', value: 'TEAM', help: 'the owning team' },
  memory: { type: 'string', value: 'SIZE', help: 'memory limit: bytes or 512M, 1.5G, 2GiB (binary units); default: the node\'s' },
  cpus: { type: 'string', value: 'CORES', help: 'CPU limit in cores, a decimal: 0.5, 2' },
  cpu: { type: 'string', value: 'MILLICORES', help: 'CPU limit in millicores: 500 or 500m (same as --cpus 0.5)' },
  pids: { type: 'string', value: 'N', help: 'process limit (default: the node\'s)' },
  disk: { type: 'string', value: 'SIZE', help: 'disk limit (the workspace volume): bytes or 512M, 10G (default: the node\'s)' },
  'disk-inodes': { type: 'string', value: 'N', help: 'how many files the volume holds (default: one per 16 KiB)' },
  env: { type: 'string', multiple: true, value: 'KEY=VALUE', help: 'an environment variable; repeatable' },
  network: { type: 'string', value: 'none|isolated', help: 'no network, or the isolated workspace network (default: the node\'s)' },
  workdir: { type: 'string', value: 'DIR', help: 'working directory inside (default: the image\'s WorkingDir, else /workspace)' },
  user: { type: 'string', value: 'USER', help: 'run as NAME[:GROUP] or UID[:GID] inside (default: the image\'s User, else root)' },
  'restore-from': { type: 'string', value: 'BACKUP', help: 'start from this backup\'s content' },
  'seccomp-profile': { type: 'string', value: 'NAME', help: 'a seccomp profile from the node\'s profiles directory' },
  port: { type: 'string', multiple: true, value: 'N', help: 'a port to expose (isolated network); repeatable' },
  ...SOURCE_FLAGS,
};

const ID = { names: ['ID'], required: 1 };

// exec, attach, sessions (implemented in src/cli/exec.ts).
const EXEC_COMMANDS: Command[] = [
  { name: 'exec', synopsis: 'ID [-i] [-t] [--session] [flags] -- PROGRAM [ARG...]', summary: 'run a program in a running workspace; its exit code is ours', args: ID, argv: true, flags: {
    interactive: { type: 'boolean', short: 'i', help: 'send our stdin (EOF at its end)' },
    tty: { type: 'boolean', short: 't', help: 'a terminal: raw mode and resizes on ours' },
    session: { type: 'boolean', help: 'a terminal session: it outlives us (tetrixctl attach); needs -t' },
    env: { type: 'string', multiple: true, value: 'KEY=VALUE', help: 'over the workspace\'s env; repeatable' },
    workdir: { type: 'string', value: 'DIR', help: 'working directory inside (default: the workspace\'s)' },
    user: { type: 'string', value: 'UID[:GID]', help: 'numeric ids inside the workspace (default 0)' },
  } },
  { name: 'attach', synopsis: 'ID SESSION', summary: 're-attach to a terminal session (its recent output first; Ctrl-P Ctrl-Q detaches)', args: { names: ['ID', 'SESSION'], required: 2 }, flags: {} },
  { name: 'sessions', synopsis: 'ID', summary: 'a workspace\'s terminal sessions', args: ID, flags: {} },
];

export const COMMANDS: Command[] = [
  {
    name: 'start', synopsis: 'ID [flags] -- PROGRAM [ARG...]', summary: 'start a workspace (idempotent: an identical repeat changes nothing)',
    args: ID, argv: true, flags: START_FLAGS,
  },
  { name: 'stop', synopsis: 'ID [--grace DURATION]', summary: 'SIGTERM, then SIGKILL after the grace period', args: ID, flags: {
    grace: { type: 'string', value: 'DURATION', help: 'seconds (10, 0.5) or with a unit (500ms, 10s, 2m); 0 kills at once; default: the node\'s (10s)' },
  } },
  { name: 'teardown', synopsis: 'ID [--backup-first]', summary: 'remove the workspace and everything it holds; exit 1 if there is no such workspace', args: ID, flags: {
    'backup-first': { type: 'boolean', help: 'take a final backup first; if it fails, nothing is deleted' },
  } },
  { name: 'backup', synopsis: 'ID [--include-upper] | rm BACKUP... | check | prune [--dry-run]', summary: 'back up the content (progress on a terminal; JSON lines with --output json); delete backups, check them, prune by the retention policy (src/cli/backup-*.ts)',
    args: { names: ['ID|rm|check|prune', 'BACKUP'], required: 1, more: true }, flags: {
      'include-upper': { type: 'boolean', help: 'also the overlay\'s upper layer (changes to the image)' },
      'dry-run': { type: 'boolean', help: 'prune: say what would be forgotten, delete nothing' },
    } },
  { name: 'backups', synopsis: '[--workspace ID] [--owner USER]', summary: 'the backups you may restore: time, size, what each stored (src/cli/backups.ts)', args: { names: [], required: 0 }, flags: {
    workspace: { type: 'string', value: 'ID', help: 'only this workspace\'s' },
    owner: { type: 'string', value: 'USER', help: 'only this user\'s' },
  } },
  { name: 'keys', synopsis: 'rotate [--rewrap] [--retire KEY]... | retire KEY... | status', summary: 'key-encryption keys: a new one, retiring old ones, what depends on each',
    args: { names: ['rotate|retire|status', 'KEY'], required: 1, more: true }, flags: {
      rewrap: { type: 'boolean', help: 'rotate: re-wrap everything sealed under older keys (backups, secrets, logs)' },
      retire: { type: 'string', multiple: true, value: 'KEY', help: 'rotate: then delete this old key (refused, with the counts, while anything depends on it)' },
    } },
  {
    name: 'prebuild', synopsis: 'ID --image IMAGE --owner USER --team TEAM --repo URL --rev REVISION --task NAME=COMMAND...',
    summary: 'run a prebuild: tasks in order, each with sh -c; the result is a signed snapshot', args: ID, flags: {
      ...START_FLAGS,
      repo: { type: 'string', value: 'URL', help: 'the repository built' },
      rev: { type: 'string', value: 'REVISION', help: 'the revision built' },
      task: { type: 'string', multiple: true, value: 'NAME=COMMAND', help: 'a task, run with sh -c; repeatable, run in order' },
    },
  },
  { name: 'verify', synopsis: 'SNAPSHOT [--backup-dir DIR] [--public-key FILE]', summary: 'check a prebuild snapshot\'s signed provenance and print it', args: { names: ['SNAPSHOT'], required: 1 }, flags: {
    'backup-dir': { type: 'string', value: 'DIR', help: 'where the backups are (default /var/lib/tetrix/backups)' },
    'public-key': { type: 'string', value: 'FILE', help: 'the signing key (default: asked of the daemon)' },
  } },
  { name: 'get', synopsis: 'ID', summary: 'one workspace', args: ID, flags: {} },
  { name: 'list', synopsis: '[--owner USER]', summary: 'every workspace', args: { names: [], required: 0 }, flags: {
    owner: { type: 'string', value: 'USER', help: 'only this user\'s' },
  } },
  { name: 'watch', synopsis: '[ID]', summary: 'the current state, then every change', args: { names: ['ID'], required: 0 }, flags: {} },
  { name: 'logs', synopsis: 'ID [-f] [--tail N] [--timestamps]', summary: 'a workspace\'s (or prebuild\'s) output', args: ID, flags: {
    follow: { type: 'boolean', short: 'f', help: 'keep printing until the workspace ends' },
    tail: { type: 'string', value: 'N', help: 'only the last N lines (not with --follow)' },
    timestamps: { type: 'boolean', help: 'start each line with the time it was written (RFC 3339)' },
  } },
  { name: 'pull', synopsis: 'IMAGE', summary: 'pull an OCI image (progress per layer on a terminal; JSON lines with --output json)', args: { names: ['IMAGE'], required: 1 }, flags: {} },
  { name: 'images', synopsis: '', summary: 'the OCI images this node holds', args: { names: [], required: 0 }, flags: {} },
  { name: 'rmi', synopsis: 'IMAGE', summary: 'remove an OCI image (refused while a workspace uses it)', args: { names: ['IMAGE'], required: 1 }, flags: {} },
  ...EXEC_COMMANDS,
  { name: 'info', synopsis: '', summary: 'the node: id, version, cgroup mode', args: { names: [], required: 0 }, flags: {} },
  { name: 'help', synopsis: '[COMMAND]', summary: 'this help, or a command\'s', args: { names: ['COMMAND'], required: 0 }, flags: {} },
];

const byName = new Map(COMMANDS.map((c) => [c.name, c]));

function flagLines(flags: Record<string, Flag>): string[] {
  return Object.entries(flags).map(([name, f]) => {
    const left = `${f.short ? `-${f.short}, ` : ''}--${name}${f.value ? ` ${f.value}` : ''}`;
    return `  ${left.padEnd(30)} ${f.help}`;
  });
}

export function usage(command = ''): string {
  const c = byName.get(command);
  if (c) {
    return [`usage: tetrixctl [global flags] ${c.name} ${c.synopsis}`.trimEnd(), '', c.summary, '',
      ...(Object.keys(c.flags).length ? ['flags:', ...flagLines(c.flags), ''] : []), 'global flags:', ...flagLines(GLOBAL), ''].join('\n');
  }
  return ['usage: tetrixctl [global flags] COMMAND [ARG...] [flags]', '', 'global flags:', ...flagLines(GLOBAL), '', 'commands:',
    ...COMMANDS.map((x) => `  ${x.name.padEnd(10)} ${x.summary}`), '', "'tetrixctl COMMAND --help' shows a command's flags.", ''].join('\n');
}

export interface Invocation {
  command: Command | undefined;      // undefined: none given
  args: string[];
  argv: string[];                    // after --
  values: Record<string, string | boolean | string[] | undefined>;
}

type Values = Invocation['values'];

/** Git's "did you mean": the known flag closest to a misspelt one, if it is close. */
function closest(word: string, known: string[]): string | undefined {
  const distance = (a: string, b: string): number => {
    const row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      let prev = row[0];
      row[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const keep = row[j];
        row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
        prev = keep;
      }
    }
    return row[b.length];
  };
  const best = known.map((k) => ({ k, d: distance(word, k) })).sort((x, y) => x.d - y.d)[0];
  // Two edits (a swapped pair of letters is two) on words longer than three letters, as git's "did you mean".
  return best && best.d <= (word.length > 3 ? 2 : 1) ? best.k : undefined;
}

/** parseArgs' errors, as sentences that name the flag and what it takes. */
function usageErrorOf(err: unknown, flags: Record<string, Flag>, command: string): UsageError {
  const e = err as { code?: string; message?: string };
  const where = command ? `${command}: ` : '';
  const flag = /'(-[^' ,]+)(?:, (--[^' ]+))?/.exec(e.message ?? '');
  const name = flag?.[2] ?? flag?.[1] ?? '';
  const spec = flags[name.replace(/^--/, '')];
  if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const guess = name.startsWith('--') ? closest(name.slice(2), Object.keys(flags)) : undefined;
    return new UsageError(`${where}unknown flag ${name}${guess ? ` (did you mean --${guess}?)` : ''}`, command);
  }
  if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && spec) {
    if (spec.type === 'boolean') return new UsageError(`${where}${name} is a switch and takes no value`, command);
    if (/ambiguous/.test(e.message ?? '')) {
      return new UsageError(`${where}${name} needs a value (${spec.value}); one that starts with '-' is written ${name}=VALUE`, command);
    }
    return new UsageError(`${where}${name} needs a value (${spec.value})`, command);
  }
  return new UsageError(`${where}${e.message ?? String(err)}`, command);
}

function strictParse(args: string[], flags: Record<string, Flag>, command: string) {
  const options = Object.fromEntries(Object.entries(flags).map(([k, f]) => [k, { type: f.type, multiple: f.multiple ?? false, ...(f.short ? { short: f.short } : {}) }]));
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true, tokens: true });
  } catch (err) {
    throw usageErrorOf(err, flags, command);
  }
}

/** Where the command word is: the first argument that is neither a global flag nor its value. */
function commandIndex(argv: string[]): number {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') return -1;
    if (!a.startsWith('-') || a === '-') return i;
    const name = a.startsWith('--') ? a.slice(2) : Object.keys(GLOBAL).find((k) => GLOBAL[k].short === a.slice(1));
    if (name && !name.includes('=') && GLOBAL[name]?.type === 'string') i++;
  }
  return -1;
}

/** Global flags go before or after the command; the command's own flags after it. */
export function parseCommandLine(argv: string[]): Invocation {
  const at = commandIndex(argv);
  const before = strictParse(at < 0 ? argv : argv.slice(0, at), GLOBAL, '');
  if (before.positionals.length > 0) throw new UsageError(`unexpected argument "${before.positionals[0]}" before the command`);
  if (at < 0) return { command: undefined, args: [], argv: [], values: before.values as Values };
  const word = argv[at];
  const command = byName.get(word);
  if (!command) {
    const guess = closest(word, COMMANDS.map((c) => c.name));
    throw new UsageError(`unknown command "${word}"${guess ? ` (did you mean ${guess}?)` : ''}`);
  }
  const flags = { ...GLOBAL, ...command.flags };
  const after = strictParse(argv.slice(at + 1), flags, command.name);
  const terminator = after.tokens.find((t) => t.kind === 'option-terminator')?.index ?? Infinity;
  const args: string[] = [];
  const rest: string[] = [];
  for (const t of after.tokens) if (t.kind === 'positional') (t.index > terminator ? rest : args).push(t.value);
  const invocation: Invocation = { command, args, argv: rest, values: { ...(before.values as Values), ...(after.values as Values) } };
  if (invocation.values.help) return invocation;
  if (args.length < command.args.required) throw new UsageError(`${command.name} needs ${command.args.names[args.length]}`, command.name);
  if (args.length > command.args.names.length && !command.args.more) throw new UsageError(`${command.name}: unexpected argument "${args[command.args.names.length]}"`, command.name);
  if (rest.length > 0 && !command.argv) throw new UsageError(`${command.name} takes no program after --`, command.name);
  return invocation;
}

// --- values ---------------------------------------------------------------------------------

const BINARY_UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** Bytes, or a decimal with a binary unit as docker takes them: 512M, 1.5g, 2GiB, 64KB. */
export function size(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${flag}: "${text}" is not a size (bytes, or a number with K, M, G or T, as in 512M or 1.5G)`);
  if (!m[2] && m[1].includes('.')) throw new UsageError(`${flag}: "${text}" is not a whole number of bytes (a fraction needs a unit, as in 1.5G)`);
  const bytes = Number(m[1]) * BINARY_UNITS[(m[2] ?? '').toLowerCase()];
  if (!Number.isSafeInteger(Math.round(bytes))) throw new UsageError(`${flag}: ${text} is too large`);
  return Math.round(bytes);
}

/** A whole number in [min, max]. */
export function integer(flag: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${flag}: "${text}" is not a whole number`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${flag}: ${text} is outside ${min}-${max}`);
  return n;
}

/** --cpus takes cores as a decimal (0.5); --cpu takes millicores (500 or 500m, as kubectl writes them). */
export function cpuMillis(cpus: string | undefined, cpu: string | undefined): number {
  if (cpus !== undefined && cpu !== undefined) throw new UsageError('--cpus and --cpu set the same limit: give one of them', 'start');
  if (cpus !== undefined) {
    if (!/^(\d+(\.\d*)?|\.\d+)$/.test(cpus.trim())) throw new UsageError(`--cpus: "${cpus}" is not a number of cores (a decimal such as 0.5 or 2)`, 'start');
    const millis = Number(cpus) * 1000;
    if (!Number.isInteger(Math.round(millis * 1e6) / 1e6)) throw new UsageError(`--cpus: ${cpus} is finer than a millicore (0.001)`, 'start');
    return Math.round(millis);
  }
  if (cpu !== undefined) {
    const m = /^(\d+)m?$/.exec(cpu.trim());
    if (!m) throw new UsageError(`--cpu: "${cpu}" is not millicores (a whole number such as 500 or 500m; for cores use --cpus ${cpu})`, 'start');
    return Number(m[1]);
  }
  return 0;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds from seconds (10, 0.5) or a number with a unit (500ms, 10s, 2m, 1h). */
export function duration(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${flag}: "${text}" is not a duration (seconds such as 10 or 0.5, or 500ms, 10s, 2m)`);
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2] ?? 's']);
}

export function oneOf<T extends string>(flag: string, text: string, values: readonly T[]): T {
  if (!(values as readonly string[]).includes(text)) throw new UsageError(`${flag}: "${text}" is not one of ${values.join(', ')}`);
  return text as T;
}

/** KEY=VALUE pairs; the value is never echoed (it may be a secret). */
export function keyValues(flag: string, pairs: string[], what = 'KEY=VALUE'): [string, string][] {
  return pairs.map((kv) => {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new UsageError(`${flag}: expected ${what}, got an entry without "KEY="`);
    return [kv.slice(0, eq), kv.slice(eq + 1)];
  });
}
