// One validated, immutable configuration. Every default lives here; sources override in the order
// embedded defaults < config file (JSON) < environment (TETRIX_*) < command-line flags.
import crypto from 'node:crypto';
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
  readonly claimsDir: string;
  readonly auditLog: string;        // '' = <stateDir>/audit.log, '-' = the daemon's own log, or a file path       // host-wide claims of node names (cgroup parent, bridge, nft table) by state dir
  readonly nodeId: string;
  readonly logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';
  readonly stopGraceMs: number;     // StopWorkspace's default grace period
  readonly defaultMemoryBytes: number; // limits a workspace gets when its request names none (never unbounded)
  readonly defaultCpuMillis: number;
  readonly defaultPids: number;
  readonly maxMemoryBytes: number;  // requests above these are refused
  readonly maxCpuMillis: number;
  readonly maxPids: number;
  readonly ptyLimit: number;        // ptys one workspace may hold at once (its devpts max=)
  readonly storageBackend: 'none' | 'ext4-fscrypt'; // each workspace's content on an encrypted, size-limited volume (docs/storage.md)
  readonly defaultDiskBytes: number; // ext4-fscrypt: a workspace's volume size when its request names none
  readonly maxDiskBytes: number;
  readonly defaultDiskInodes: number; // 0 = one inode per 16 KiB of the volume
  readonly maxDiskInodes: number;
  readonly storagePoolSize: number; // formatted volumes of the default size kept ready
  readonly execDetachedTimeoutMs: number; // a terminal session left detached and quiet this long is hung up
  readonly metricsListen: string;   // host:port for Prometheus, '' = off
  readonly apiListen: string;       // host:port of the mutual-TLS gRPC API, '' = unix socket only
  readonly apiAddresses: string;    // extra names/IPs for the generated server certificate, comma-separated
  readonly tlsCertFile: string;     // operator-provided server certificate; '' = generate a node PKI
  readonly tlsKeyFile: string;
  readonly tlsCaFile: string;       // the CA client certificates must chain to
  readonly tlsCrlFile: string;
  readonly tlsDenyListFile: string; // identities or sha256 fingerprints refused, one per line
  readonly tlsAllow: string;        // client identities allowed (comma-separated), '' = any the CA signed
  readonly operatorIdentities: string; // client-certificate SANs that act as node operators: dns:NAME or uri:URI, comma-separated
  readonly tlsReloadMs: number;
  readonly controlPlaneKeyFile: string; // Ed25519 public key(s), PEM, that sign user tokens
  readonly tokenMaxLifetimeSeconds: number; // user tokens whose exp - iat exceeds this are refused
  readonly nodeDomain: string;      // workspace endpoints are <port>-<id>.<nodeDomain>
  readonly endpointListen: string;  // host:port of the HTTPS/WebSocket endpoint server, '' = off
  readonly kekSource: string;       // how the node's KEKs are kept at rest (see KekSource); parsed into `kek`
  readonly kmsTokenFile: string;    // kms: the Vault token, a path or systemd-credential:NAME
  readonly kmsCaFile: string;       // kms: the CA the Vault server's certificate chains to
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
  readonly backupFormat: 'snapshot' | 'full';  // new backups: deduplicated snapshots, or one archive each (docs/backup-format.md)
  readonly backupKeepLast: number;  // retention of snapshots per workspace, as restic forget (0 = no such rule;
  readonly backupKeepDaily: number; //   all three 0: keep every snapshot)
  readonly backupKeepWeekly: number;
  readonly s3Bucket: string;        // s3: bucket, key prefix (private to this node) and endpoint;
  readonly s3Prefix: string;        //     credentials come from the AWS SDK's usual chain
  readonly s3Endpoint: string;
  readonly s3Region: string;
  readonly defaultRegistry: string;   // host[:port] short image names (node:20) resolve through; '' = refuse them
  readonly registryMirrors: string;   // REGISTRY=MIRROR pairs, comma-separated, tried in order before the registry
  readonly registryCaFile: string;    // PEM trusted for registries beside the system roots
  readonly insecureRegistry: string;  // host:port list spoken to over plain HTTP (Docker's insecure-registries)
  readonly registryAuthFile: string;  // Docker config.json (0600) with registry credentials
  readonly userRegistries: string;    // host[:port] list users may name in an image ('' = any); operators any
  readonly imageGcMaxAgeMs: number;   // unused images older than this are removed (0 = never by age)
  readonly imageStoreMaxBytes: number; // least recently used images go while the layer store is above this (0 = no limit)
  readonly sourceAllowedDestinations: string; // host:port a source fetch may reach despite the deny list (tests: loopback servers), comma-separated
  readonly sourceCaFile: string;    // extra CA bundle for HTTPS remotes; '' = the host's CAs
  readonly sourceFetchAttempts: number; // tries of a fetch that fails for a transient reason
  readonly sourceRetryBaseMs: number;   // backoff before the second try, doubled for each next one
  readonly prebuildCacheMaxBytes: number; // verified prebuild trees kept unpacked on the node, least recently used out (0 = none: restore each start)
  /** kekSource, kmsTokenFile and kmsCaFile, validated as one. */
  readonly kek: KekSource;
}

/** A secret file: a path, or a systemd credential ($CREDENTIALS_DIRECTORY/NAME, systemd.exec(5)). */
export type SecretFileRef = { kind: 'file'; path: string } | { kind: 'systemd-credential'; name: string };

/** Where the root of the node's keys lives. src/crypto/kek-source.ts says what each protects. */
export type KekSource =
  | { kind: 'state-dir' }
  | SecretFileRef
  | { kind: 'kms'; url: string; tokenFile: SecretFileRef; caFile: string };

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
    claimsDir: '/run/tetrix/owners',
    auditLog: '',
    nodeId: os.hostname(),
    logLevel: 'info',
    stopGraceMs: 10_000,
    defaultMemoryBytes: Math.min(1 << 30, os.totalmem()),
    defaultCpuMillis: 1000,
    defaultPids: 4096,
    maxMemoryBytes: os.totalmem(),
    maxCpuMillis: os.availableParallelism() * 1000,
    maxPids: 1 << 22,
    // The node's pool for all workspaces is kernel.pty.max - kernel.pty.reserve (3072 by default).
    ptyLimit: 128,
    storageBackend: 'none',
    defaultDiskBytes: 10 * 2 ** 30,
    maxDiskBytes: 2 ** 40,
    defaultDiskInodes: 0,
    maxDiskInodes: 2 ** 26,
    storagePoolSize: 4,
    execDetachedTimeoutMs: 5 * 60_000,
    metricsListen: '',
    apiListen: '0.0.0.0:7443',
    apiAddresses: '',
    tlsCertFile: '',
    tlsKeyFile: '',
    tlsCaFile: '',
    tlsCrlFile: '',
    tlsDenyListFile: '',
    tlsAllow: '',
    operatorIdentities: 'dns:tetrix-admin', // the SAN of the generated admin certificate
    tlsReloadMs: 10_000,
    controlPlaneKeyFile: '',
    tokenMaxLifetimeSeconds: 3600,
    nodeDomain: '',
    endpointListen: '',
    kekSource: 'state-dir',
    kmsTokenFile: '',
    kmsCaFile: '',
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
    backupFormat: 'snapshot',
    backupKeepLast: 0,
    backupKeepDaily: 0,
    backupKeepWeekly: 0,
    s3Bucket: '',
    s3Prefix: '',
    s3Endpoint: '',
    s3Region: 'us-east-1',
    defaultRegistry: '',
    registryMirrors: '',
    registryCaFile: '',
    insecureRegistry: '',
    registryAuthFile: '',
    userRegistries: '',
    imageGcMaxAgeMs: 30 * 24 * 3600 * 1000,
    imageStoreMaxBytes: 0,
    sourceAllowedDestinations: '',
    sourceCaFile: '',
    sourceFetchAttempts: 3,
    sourceRetryBaseMs: 500,
    prebuildCacheMaxBytes: 16 * 1024 ** 3,
    kek: { kind: 'state-dir' },
  };
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Raw = Record<string, unknown>;

const numericKeys = ['stopGraceMs', 'defaultMemoryBytes', 'defaultCpuMillis', 'defaultPids', 'maxMemoryBytes', 'maxCpuMillis', 'maxPids', 'ptyLimit', 'execDetachedTimeoutMs', 'tlsReloadMs', 'logMaxBytes', 'logRetentionMs', 'tokenMaxLifetimeSeconds', 'defaultDiskBytes', 'maxDiskBytes', 'defaultDiskInodes', 'maxDiskInodes', 'storagePoolSize', 'imageGcMaxAgeMs', 'imageStoreMaxBytes', 'backupKeepLast', 'backupKeepDaily', 'backupKeepWeekly', 'sourceFetchAttempts', 'sourceRetryBaseMs', 'prebuildCacheMaxBytes'] as const;
const stringKeys = [
  'stateDir', 'socketPath', 'imagesDir', 'profilesDir', 'cgroupParent', 'cgroupRoot', 'idmapDir', 'claimsDir', 'auditLog', 'nodeId', 'logLevel', 'metricsListen',
  'apiListen', 'apiAddresses', 'tlsCertFile', 'tlsKeyFile', 'tlsCaFile', 'tlsCrlFile', 'tlsDenyListFile', 'tlsAllow',
  'operatorIdentities', 'controlPlaneKeyFile', 'nodeDomain', 'endpointListen', 'kekSource', 'kmsTokenFile', 'kmsCaFile',
  'network', 'defaultNetwork', 'networkBridge', 'networkSubnet', 'networkSubnet6', 'networkUplink', 'networkDenied',
  'networkTable', 'dnsServers', 'storageBackend', 'backupStorage', 'backupDir', 'backupFormat', 's3Bucket', 's3Prefix', 's3Endpoint', 's3Region',
  'defaultRegistry', 'registryMirrors', 'registryCaFile', 'insecureRegistry', 'registryAuthFile', 'userRegistries',
  'sourceAllowedDestinations', 'sourceCaFile',
] as const;
const allKeys: readonly string[] = [...numericKeys, ...stringKeys];
/** Settings that were replaced: naming them says what to use instead. */
const replacedKeys: Record<string, string> = {
  keyFile: 'keyFile: replaced by kekSource; "file:/PATH" seals the node\'s keys under the key in PATH (docs/operations.md#keys)',
};

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
    // Which flag before what it takes: a misspelt flag is named as unknown, not as one that lacks a value.
    const key = m[1] === 'config' ? '' : flagKey(m[1]);
    if (replacedKeys[key]) throw new ConfigError(replacedKeys[key]);
    if (key && !allKeys.includes(key)) throw new ConfigError(`unknown flag --${m[1]}`);
    const value = m[2] ?? argv[++i];
    // `--socket --state-dir D` forgot the socket's value; it would otherwise become "--state-dir".
    if (value === undefined || (m[2] === undefined && value.startsWith('--'))) {
      throw new ConfigError(`--${m[1]} needs a value${value === undefined ? '' : ` (one that starts with '-' is written --${m[1]}=VALUE)`}`);
    }
    if (key) raw[key] = value;
    else configFile = value;
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
      if (replacedKeys[key]) throw new Error(replacedKeys[key]);
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

// A workspace's limits: every default a real bound (issue 13: none meant memory.limit_in_bytes 2^63), at
// least what a shell needs (as the API's own minimums), and within the node's maximum.
const WORKSPACE_LIMITS = [
  ['defaultMemoryBytes', 'maxMemoryBytes', 8 << 20],
  ['defaultCpuMillis', 'maxCpuMillis', 10],
  ['defaultPids', 'maxPids', 8],
] as const;

function validateWorkspaceLimits(c: Config): void {
  for (const [key, maxKey, min] of WORKSPACE_LIMITS) {
    if (c[key] < min) throw new ConfigError(`${key}: must be at least ${min}, got ${c[key]}`);
    if (c[key] > c[maxKey]) throw new ConfigError(`${key}: ${c[key]} is above ${maxKey} (${c[maxKey]})`);
  }
}

// The smallest volume mkfs.ext4 makes with a journal; validate.ts holds requests to the same.
export const MIN_DISK_BYTES = 32 * 2 ** 20;
export const MIN_DISK_INODES = 1024;

function validateStorage(c: Config): void {
  if (c.storageBackend !== 'none' && c.storageBackend !== 'ext4-fscrypt') throw new ConfigError(`storageBackend: "${c.storageBackend}" is neither none nor ext4-fscrypt`);
  if (c.defaultDiskBytes < MIN_DISK_BYTES) throw new ConfigError(`defaultDiskBytes: must be at least ${MIN_DISK_BYTES}, got ${c.defaultDiskBytes}`);
  if (c.defaultDiskBytes > c.maxDiskBytes) throw new ConfigError(`defaultDiskBytes: ${c.defaultDiskBytes} is above maxDiskBytes (${c.maxDiskBytes})`);
  if (c.defaultDiskInodes !== 0 && c.defaultDiskInodes < MIN_DISK_INODES) throw new ConfigError(`defaultDiskInodes: must be 0 (one per 16 KiB) or at least ${MIN_DISK_INODES}`);
  if (c.defaultDiskInodes > c.maxDiskInodes) throw new ConfigError(`defaultDiskInodes: ${c.defaultDiskInodes} is above maxDiskInodes (${c.maxDiskInodes})`);
}

function validate(c: Config): Config {
  validateWorkspaceLimits(c);
  for (const key of ['stateDir', 'socketPath', 'imagesDir', 'profilesDir', 'idmapDir', 'claimsDir', 'cgroupRoot'] as const) {
    if (!path.isAbsolute(c[key])) throw new ConfigError(`${key}: must be an absolute path, got "${c[key]}"`);
  }
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$/.test(c.cgroupParent)) throw new ConfigError(`cgroupParent: "${c.cgroupParent}" is not a plain cgroup name`);
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal'].includes(c.logLevel)) throw new ConfigError(`logLevel: unknown level "${c.logLevel}"`);
  if (Buffer.byteLength(c.socketPath) > 107) throw new ConfigError(`socketPath: longer than a unix socket path may be (107 bytes)`);
  for (const key of ['metricsListen', 'apiListen', 'endpointListen'] as const) {
    if (c[key] !== '' && !/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/.test(c[key])) throw new ConfigError(`${key}: expected host:port, got "${c[key]}"`);
  }
  if (c.defaultRegistry !== '' && !/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(c.defaultRegistry)) throw new ConfigError(`defaultRegistry: expected host[:port], got "${c.defaultRegistry}"`);
  registryMirrorsOf(c.registryMirrors);
  for (const host of listOf(c.insecureRegistry)) {
    if (!/^[A-Za-z0-9.-]+:\d{1,5}$/.test(host)) throw new ConfigError(`insecureRegistry: expected host:port, got "${host}"`);
  }
  for (const host of listOf(c.userRegistries)) {
    if (!/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(host)) throw new ConfigError(`userRegistries: expected host[:port], got "${host}"`);
  }
  for (const key of ['tlsCertFile', 'tlsKeyFile', 'tlsCaFile', 'tlsCrlFile', 'tlsDenyListFile', 'controlPlaneKeyFile', 'kmsCaFile', 'registryCaFile', 'registryAuthFile'] as const) {
    if (c[key] !== '' && !path.isAbsolute(c[key])) throw new ConfigError(`${key}: must be an absolute path, got "${c[key]}"`);
  }
  if ((c.tlsCertFile === '') !== (c.tlsKeyFile === '') || (c.tlsCertFile !== '' && c.tlsCaFile === '')) {
    throw new ConfigError('tlsCertFile, tlsKeyFile and tlsCaFile go together (or none of them, to use the generated node PKI)');
  }
  if (c.endpointListen !== '' && c.nodeDomain === '') throw new ConfigError('endpointListen needs nodeDomain');
  // devpts takes max= up to NR_UNIX98_PTY_MAX (1 << 20); 0 would leave a workspace no pty at all.
  if (c.ptyLimit < 1 || c.ptyLimit > 1 << 20) throw new ConfigError(`ptyLimit: must be 1..1048576, got ${c.ptyLimit}`);
  // Typed, so a CN or email name spelling an operator's name is not one (issue 13).
  for (const id of listOf(c.operatorIdentities)) {
    if (!/^(dns|uri):\S+$/.test(id)) throw new ConfigError(`operatorIdentities: "${id}" needs a name type: dns:NAME or uri:URI (the generated admin certificate is dns:tetrix-admin)`);
  }
  if (c.execDetachedTimeoutMs < 1000) throw new ConfigError('execDetachedTimeoutMs: must be at least 1000');
  if (c.tokenMaxLifetimeSeconds < 1) throw new ConfigError('tokenMaxLifetimeSeconds: must be at least 1');
  if (c.network !== 'on' && c.network !== 'off') throw new ConfigError(`network: "${c.network}" is neither on nor off`);
  if (c.defaultNetwork !== 'none' && c.defaultNetwork !== 'isolated') throw new ConfigError(`defaultNetwork: "${c.defaultNetwork}" is neither none nor isolated`);
  validateStorage(c);
  if (c.backupStorage !== 'fs' && c.backupStorage !== 's3') throw new ConfigError(`backupStorage: "${c.backupStorage}" is neither fs nor s3`);
  if (c.backupFormat !== 'snapshot' && c.backupFormat !== 'full') throw new ConfigError(`backupFormat: "${c.backupFormat}" is neither snapshot nor full`);
  if (c.backupStorage === 's3' && c.s3Bucket === '') throw new ConfigError('backupStorage s3 needs s3Bucket');
  if (c.backupDir !== '' && !path.isAbsolute(c.backupDir)) throw new ConfigError(`backupDir: must be an absolute path, got "${c.backupDir}"`);
  if (c.sourceCaFile !== '' && !path.isAbsolute(c.sourceCaFile)) throw new ConfigError(`sourceCaFile: must be an absolute path, got "${c.sourceCaFile}"`);
  if (c.sourceFetchAttempts < 1 || c.sourceFetchAttempts > 10) throw new ConfigError(`sourceFetchAttempts: must be 1..10, got ${c.sourceFetchAttempts}`);
  for (const d of listOf(c.sourceAllowedDestinations)) {
    if (!/^(\[[0-9a-fA-F:]+\]|[^:\s\[\]]+):\d{1,5}$/.test(d)) throw new ConfigError(`sourceAllowedDestinations: "${d}" is not host:port`);
  }
  const kek = parseKekSource(c);
  if (c.network === 'off' && c.defaultNetwork === 'isolated') return { ...c, kek, defaultNetwork: 'none' };
  return { ...c, kek };
}

/** The cgroup parent of a daemon beside the main one: `tetrix-` and 8 hex digits of its state dir's path. */
export function cgroupParentFor(stateDir: string): string {
  return `tetrix-${crypto.createHash('sha256').update(path.resolve(stateDir)).digest('hex').slice(0, 8)}`;
}

const CREDENTIAL = 'systemd-credential:';
// systemd.exec(5): a credential name is a file name in $CREDENTIALS_DIRECTORY.
const credentialName = (name: string): boolean => /^[A-Za-z0-9_.@-]{1,255}$/.test(name) && name !== '.' && name !== '..';

function parseSecretFileRef(key: string, value: string): SecretFileRef {
  if (value.startsWith(CREDENTIAL)) {
    const name = value.slice(CREDENTIAL.length);
    if (!credentialName(name)) throw new ConfigError(`${key}: "${name}" is not a systemd credential name`);
    return { kind: 'systemd-credential', name };
  }
  if (!path.isAbsolute(value)) throw new ConfigError(`${key}: must be an absolute path or ${CREDENTIAL}NAME, got "${value}"`);
  return { kind: 'file', path: value };
}

function parseKekSource(c: Config): KekSource {
  const v = c.kekSource;
  const kms = v.startsWith('kms:');
  if (!kms) {
    for (const key of ['kmsTokenFile', 'kmsCaFile'] as const) {
      if (c[key] !== '') throw new ConfigError(`${key}: only for kekSource kms:URL (kekSource is "${v}")`);
    }
  }
  if (v === 'state-dir') return { kind: 'state-dir' };
  if (v.startsWith('file:')) {
    const ref = parseSecretFileRef('kekSource', v.slice('file:'.length));
    if (ref.kind !== 'file') throw new ConfigError(`kekSource: file: needs a path`);
    if (isInside(ref.path, c.stateDir)) throw new ConfigError(`kekSource: the root key file ${ref.path} must not be in the state dir it protects (${c.stateDir})`);
    return ref;
  }
  if (v.startsWith(CREDENTIAL)) return parseSecretFileRef('kekSource', v);
  if (kms) {
    const url = v.slice('kms:'.length);
    if (!/^https:\/\/[^/\s]+\/v1\/[A-Za-z0-9_.\/-]+\/keys\/[A-Za-z0-9_.-]+$/.test(url)) {
      throw new ConfigError(`kekSource: kms: needs a Vault key URL https://HOST:PORT/v1/<mount>/keys/<name>, got "${url}"`);
    }
    if (c.kmsTokenFile === '') throw new ConfigError('kmsTokenFile: kekSource kms: needs the file holding the Vault token');
    if (c.kmsCaFile === '') throw new ConfigError('kmsCaFile: kekSource kms: needs the CA certificate of the Vault server');
    const tokenFile = parseSecretFileRef('kmsTokenFile', c.kmsTokenFile);
    if (tokenFile.kind === 'file' && isInside(tokenFile.path, c.stateDir)) {
      throw new ConfigError(`kmsTokenFile: ${tokenFile.path} must not be in the state dir (${c.stateDir})`);
    }
    return { kind: 'kms', url, tokenFile, caFile: c.kmsCaFile };
  }
  throw new ConfigError(`kekSource: "${v}" is none of state-dir, file:/PATH, ${CREDENTIAL}NAME, kms:https://HOST:PORT/v1/<mount>/keys/<name>`);
}

const isInside = (file: string, dir: string): boolean => {
  const rel = path.relative(path.resolve(dir), path.resolve(file));
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
};

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
    // Its workspaces' cgroups live under a parent named after its state dir, never the main daemon's.
    merged.cgroupParent ??= cgroupParentFor(String(merged.stateDir));
  }
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(merged)) out[key] = coerce(key, value);
  return Object.freeze(validate(out as unknown as Config));
}

/** registryMirrors as registry -> mirrors in order ("docker.io=m1:5000,docker.io=m2:5000"). */
export function registryMirrorsOf(value: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const pair of listOf(value)) {
    const m = /^([A-Za-z0-9.-]+(?::\d{1,5})?)=([A-Za-z0-9.-]+(?::\d{1,5})?)$/.exec(pair);
    if (!m) throw new ConfigError(`registryMirrors: expected REGISTRY=MIRROR (host[:port] each), got "${pair}"`);
    out.set(m[1], [...(out.get(m[1]) ?? []), m[2]]);
  }
  return out;
}

/** A comma-separated config value as a list. */
export const listOf = (value: string): string[] => value.split(',').map((s) => s.trim()).filter(Boolean);
