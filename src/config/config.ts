// One validated, immutable configuration. Every default lives here; sources override in the order
// embedded defaults < config file (JSON) < environment (TETRIX_*) < command-line flags.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface Config {
  readonly stateDir: string;        // records, images, workspaces, keys; one tetrixd per state dir
  readonly socketPath: string;      // the operators' unix socket (0600)
  readonly imagesDir: string;       // operator-provided image directories, by name
  readonly profilesDir: string;     // seccomp profiles (Docker JSON format)
  readonly cgroupParent: string;    // every workspace cgroup lives below this group
  readonly cgroupRoot: string;      // where cgroups are mounted (v2 tree, or one v1 hierarchy per controller)
  readonly idmapDir: string;        // host-wide claims of uid/gid ranges, shared by every tetrixd
  readonly nodeId: string;
  readonly logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';
  readonly stopGraceMs: number;     // StopWorkspace's default grace period
  readonly defaultPids: number;     // pids limit when a request names none
  readonly maxMemoryBytes: number;  // requests above these are refused
  readonly maxCpuMillis: number;
  readonly maxPids: number;
  readonly metricsListen: string;   // host:port for Prometheus, '' = off
  readonly apiListen: string;       // host:port of the mutual-TLS gRPC API, '' = unix socket only
  readonly apiAddresses: string;    // extra names/IPs for the generated server certificate, comma-separated
  readonly tlsCertFile: string;     // operator-provided server certificate; '' = generate a node PKI
  readonly tlsKeyFile: string;
  readonly tlsCaFile: string;       // the CA client certificates must chain to
  readonly tlsCrlFile: string;
  readonly tlsDenyListFile: string; // identities or sha256 fingerprints refused, one per line
  readonly tlsAllow: string;        // client identities allowed (comma-separated), '' = any the CA signed
  readonly operatorIdentities: string; // client identities that act as node operators (comma-separated)
  readonly tlsReloadMs: number;
  readonly controlPlaneKeyFile: string; // Ed25519 public key(s), PEM, that sign user tokens
  readonly nodeDomain: string;      // workspace endpoints are <port>-<id>.<nodeDomain>
  readonly endpointListen: string;  // host:port of the HTTPS/WebSocket endpoint server, '' = off
  readonly keyFile: string;         // operator-provided node key (KEK); '' = generated in <stateDir>/keys
  readonly network: 'on' | 'off';   // off: no bridge, no nftables, every workspace gets loopback only
  readonly defaultNetwork: 'none' | 'isolated';
  readonly networkBridge: string;
  readonly networkSubnet: string;
  readonly networkSubnet6: string;  // '' = IPv4 only
  readonly networkUplink: string;   // '' = any interface but the bridge
  readonly networkDenied: string;   // CIDRs workspaces may not reach, comma-separated (metadata always is)
  readonly networkTable: string;    // the nftables tables Tetrix owns
  readonly dnsServers: string;      // comma-separated; '' = the host's non-loopback resolvers
  readonly logMaxBytes: number;     // output kept per log segment; then a truncation marker
  readonly logRetentionMs: number;  // logs outlive teardown this long (prebuild logs are read after it)
  readonly backupStorage: 'fs' | 's3';
  readonly backupDir: string;       // fs: where backups live ('' = <stateDir>/backups)
  readonly s3Bucket: string;        // s3: bucket, key prefix (private to this node) and endpoint;
  readonly s3Prefix: string;        //     credentials come from the AWS SDK's usual chain
  readonly s3Endpoint: string;
  readonly s3Region: string;
}

/** The package's root directory, from src/ (ts) or dist/src/ (compiled) alike. */
export const packageRoot = path.resolve(__dirname, '..', '..', fs.existsSync(path.resolve(__dirname, '..', '..', 'package.json')) ? '' : '..');

export function defaults(): Config {
  return {
    stateDir: '/var/lib/tetrix',
    socketPath: '/run/tetrix/tetrixd.sock',
    imagesDir: '/var/lib/tetrix/images-local',
    profilesDir: path.join(packageRoot, 'profiles', 'seccomp'),
    cgroupParent: 'tetrix',
    cgroupRoot: '/sys/fs/cgroup',
    idmapDir: '/run/tetrix/idmap',
    nodeId: os.hostname(),
    logLevel: 'info',
    stopGraceMs: 10_000,
    defaultPids: 4096,
    maxMemoryBytes: os.totalmem(),
    maxCpuMillis: os.availableParallelism() * 1000,
    maxPids: 1 << 22,
    metricsListen: '',
    apiListen: '0.0.0.0:7443',
    apiAddresses: '',
    tlsCertFile: '',
    tlsKeyFile: '',
    tlsCaFile: '',
    tlsCrlFile: '',
    tlsDenyListFile: '',
    tlsAllow: '',
    operatorIdentities: 'tetrix-admin',
    tlsReloadMs: 10_000,
    controlPlaneKeyFile: '',
    nodeDomain: '',
    endpointListen: '',
    keyFile: '',
    network: 'on',
    defaultNetwork: 'isolated',
    networkBridge: 'tetrix0',
    networkSubnet: '10.88.0.0/16',
    networkSubnet6: '',
    networkUplink: '',
    networkDenied: '',
    networkTable: 'tetrix',
    dnsServers: '',
    logMaxBytes: 64 << 20,
    logRetentionMs: 7 * 24 * 3600 * 1000,
    backupStorage: 'fs',
    backupDir: '',
    s3Bucket: '',
    s3Prefix: '',
    s3Endpoint: '',
    s3Region: 'us-east-1',
  };
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Raw = Record<string, unknown>;

const numericKeys = ['stopGraceMs', 'defaultPids', 'maxMemoryBytes', 'maxCpuMillis', 'maxPids', 'tlsReloadMs', 'logMaxBytes', 'logRetentionMs'] as const;
const stringKeys = [
  'stateDir', 'socketPath', 'imagesDir', 'profilesDir', 'cgroupParent', 'cgroupRoot', 'idmapDir', 'nodeId', 'logLevel', 'metricsListen',
  'apiListen', 'apiAddresses', 'tlsCertFile', 'tlsKeyFile', 'tlsCaFile', 'tlsCrlFile', 'tlsDenyListFile', 'tlsAllow',
  'operatorIdentities', 'controlPlaneKeyFile', 'nodeDomain', 'endpointListen', 'keyFile',
  'network', 'defaultNetwork', 'networkBridge', 'networkSubnet', 'networkSubnet6', 'networkUplink', 'networkDenied',
  'networkTable', 'dnsServers', 'backupStorage', 'backupDir', 's3Bucket', 's3Prefix', 's3Endpoint', 's3Region',
] as const;
const allKeys: readonly string[] = [...numericKeys, ...stringKeys];

/** TETRIX_STATE_DIR -> stateDir */
const envName = (key: string): string => 'TETRIX_' + key.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
/** Short spellings operators expect (tetrixd --socket PATH). */
const flagAliases: Record<string, string> = { socket: 'socketPath' };
/** --state-dir -> stateDir */
const flagKey = (flag: string): string => flagAliases[flag] ?? flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** What `tetrixd --help` prints: every setting as a flag and as its environment variable. */
export function usage(): string {
  const flag = (key: string): string => `--${key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`;
  const lines = allKeys.map((key) => `  ${flag(key).padEnd(28)} ${envName(key)}`);
  return [
    'usage: tetrixd [--config FILE] [--SETTING VALUE ...]   (or --version, --help)',
    'Runs the Tetrix node agent. Settings come from the embedded defaults, then FILE (JSON), then the',
    'environment, then flags (--socket is short for --socket-path):',
    ...lines,
    '',
  ].join('\n');
}

export function parseFlags(argv: readonly string[]): { raw: Raw; configFile?: string } {
  const raw: Raw = {};
  let configFile: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const m = /^--([a-z][a-z0-9-]*)(?:=(.*))?$/.exec(arg);
    if (!m) throw new ConfigError(`unexpected argument "${arg}" (flags look like --state-dir DIR)`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new ConfigError(`--${m[1]} needs a value`);
    if (m[1] === 'config') configFile = value;
    else {
      const key = flagKey(m[1]);
      if (!allKeys.includes(key)) throw new ConfigError(`unknown flag --${m[1]}`);
      raw[key] = value;
    }
  }
  return { raw, configFile };
}

function readFile(file: string): Raw {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`config file ${file}: ${(err as Error).message}`);
  }
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('not a JSON object');
    for (const key of Object.keys(value)) {
      if (!allKeys.includes(key)) throw new Error(`unknown key "${key}"`);
    }
    return value as Raw;
  } catch (err) {
    throw new ConfigError(`config file ${file}: ${(err as Error).message}`);
  }
}

function fromEnv(env: NodeJS.ProcessEnv): Raw {
  const raw: Raw = {};
  for (const key of allKeys) {
    const v = env[envName(key)];
    if (v !== undefined && v !== '') raw[key] = v;
  }
  return raw;
}

function coerce(key: string, value: unknown): unknown {
  if ((numericKeys as readonly string[]).includes(key)) {
    const n = typeof value === 'number' ? value : Number(value);
    if (!Number.isSafeInteger(n) || n < 0) throw new ConfigError(`${key}: must be a non-negative integer, got ${JSON.stringify(value)}`);
    return n;
  }
  if (typeof value !== 'string') throw new ConfigError(`${key}: must be a string`);
  return value;
}

function validate(c: Config): Config {
  for (const key of ['stateDir', 'socketPath', 'imagesDir', 'profilesDir', 'idmapDir', 'cgroupRoot'] as const) {
    if (!path.isAbsolute(c[key])) throw new ConfigError(`${key}: must be an absolute path, got "${c[key]}"`);
  }
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$/.test(c.cgroupParent)) throw new ConfigError(`cgroupParent: "${c.cgroupParent}" is not a plain cgroup name`);
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal'].includes(c.logLevel)) throw new ConfigError(`logLevel: unknown level "${c.logLevel}"`);
  if (Buffer.byteLength(c.socketPath) > 107) throw new ConfigError(`socketPath: longer than a unix socket path may be (107 bytes)`);
  for (const key of ['metricsListen', 'apiListen', 'endpointListen'] as const) {
    if (c[key] !== '' && !/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/.test(c[key])) throw new ConfigError(`${key}: expected host:port, got "${c[key]}"`);
  }
  for (const key of ['tlsCertFile', 'tlsKeyFile', 'tlsCaFile', 'tlsCrlFile', 'tlsDenyListFile', 'controlPlaneKeyFile', 'keyFile'] as const) {
    if (c[key] !== '' && !path.isAbsolute(c[key])) throw new ConfigError(`${key}: must be an absolute path, got "${c[key]}"`);
  }
  if ((c.tlsCertFile === '') !== (c.tlsKeyFile === '') || (c.tlsCertFile !== '' && c.tlsCaFile === '')) {
    throw new ConfigError('tlsCertFile, tlsKeyFile and tlsCaFile go together (or none of them, to use the generated node PKI)');
  }
  if (c.endpointListen !== '' && c.nodeDomain === '') throw new ConfigError('endpointListen needs nodeDomain');
  if (c.network !== 'on' && c.network !== 'off') throw new ConfigError(`network: "${c.network}" is neither on nor off`);
  if (c.defaultNetwork !== 'none' && c.defaultNetwork !== 'isolated') throw new ConfigError(`defaultNetwork: "${c.defaultNetwork}" is neither none nor isolated`);
  if (c.backupStorage !== 'fs' && c.backupStorage !== 's3') throw new ConfigError(`backupStorage: "${c.backupStorage}" is neither fs nor s3`);
  if (c.backupStorage === 's3' && c.s3Bucket === '') throw new ConfigError('backupStorage s3 needs s3Bucket');
  if (c.backupDir !== '' && !path.isAbsolute(c.backupDir)) throw new ConfigError(`backupDir: must be an absolute path, got "${c.backupDir}"`);
  if (c.network === 'off' && c.defaultNetwork === 'isolated') return { ...c, defaultNetwork: 'none' };
  return c;
}

/** Builds the config from flags (argv after the program name) and the environment. */
export function loadConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Config {
  const { raw: flags, configFile } = parseFlags(argv);
  const file = configFile ?? env.TETRIX_CONFIG;
  const merged: Raw = { ...(file ? readFile(file) : {}), ...fromEnv(env), ...flags };
  const base = defaults();
  // A state dir given without an images dir keeps images beside it.
  if (merged.stateDir !== undefined && merged.imagesDir === undefined) merged.imagesDir = path.join(String(merged.stateDir), 'images-local');
  // `tetrixd --state-dir DIR --socket PATH` runs beside the node's main daemon: the node's TCP port, its
  // bridge and its nftables tables belong to that one, so a second daemon uses neither unless told to.
  if (merged.stateDir !== undefined && path.resolve(String(merged.stateDir)) !== base.stateDir) {
    merged.apiListen ??= '';
    merged.network ??= 'off';
  }
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(merged)) out[key] = coerce(key, value);
  return Object.freeze(validate(out as unknown as Config));
}

/** A comma-separated config value as a list. */
export const listOf = (value: string): string[] => value.split(',').map((s) => s.trim()).filter(Boolean);
