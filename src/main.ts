#!/usr/bin/env node
// tetrixd: wires the parts by hand, in the order requests flow (api -> workspace -> sandbox).
import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { loadConfig, ConfigError, packageRoot, usage, type Config } from './config/config';
import { createApiServer, refuseServedSocket } from './api/server';
import { bindTransports, startEndpoints } from './api/transport';
import { createAuditLog, openAuditLogger } from './api/audit';
import { workspaceHandlers } from './api/workspace-api';
import { nodeHandlers } from './api/node-api';
import { execHandlers } from './api/exec-api';
import { ExecSessions } from './exec/sessions';
import { createTerminalEndpoint } from './api/terminal-ws';
import { WorkspaceService } from './workspace/service';
import { WorkspaceStore } from './workspace/store';
import { native } from './native';
import { stateLayout } from './layout';
import { createSandbox } from './workspace/adapters/sandbox';
import { acquireStateLock, claimNodeNames, loadOrCreateSecret, nodeNamesOf, releaseNodeNames, type NodeName } from './state-dir';
import { checkHost } from './preflight';
import { uninstall } from './uninstall';
import { DaemonMetrics, startMetricsServer } from './api/metrics';
import { OciImageStore } from './images/store';
import { imageHandlers, imageRegistryCheck } from './api/image-api';
import { listOf, registryMirrorsOf } from './config/config';
import { openNodeKeyRing } from './crypto/kek-source';
import { KeyRotation } from './crypto/rotation';
import { openNodeNetwork, workspaceNetwork } from './workspace/adapters/network';
import { WorkspaceOutput } from './workspace/adapters/output';
import { LogStore } from './logs';
import { openBackups } from './content/repo/open-backups';
import { backupHandlers } from './api/backups-api';
import { openBackupStorage } from './content/open-storage';
import { loadOrCreateSigningKey } from './prebuild/signing-key';
import { provenancePublisher } from './workspace/adapters/provenance';
import { openSecret, resealSecret, sealedKeyIdsIn, sealSecret } from './crypto/secrets';
import { defaultDisk, openWorkspaceVolumes } from './storage/open';
import { createSource } from './source';
import { PrebuildTrees } from './prebuild/trees';

export const version: string = (JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;

async function run(config: Config): Promise<void> {
  await checkHost(config); // first: a host that cannot run workspaces is refused before anything is created
  const log = pino({ level: config.logLevel, base: { node: config.nodeId } });
  fs.mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(config.stateDir, 0o700);
  const releaseLock = acquireStateLock(config.stateDir);
  // Before anything is adopted or cleaned up: a second daemon must harm neither another's socket nor its names.
  refuseServedSocket(config.socketPath, (p) => native.unixSocketPeerPid(p));
  const nodeNames = nodeNamesOf(config);
  const claimed = claimNodeNames(config.claimsDir, config.stateDir, nodeNames);
  try {
    await serve(config, log, nodeNames, releaseLock);
  } catch (err) {
    // A start that fails gives back the names it claimed just now (held before, they stay: workspaces
    // outlive a daemon), so a refused start leaves nothing in claimsDir.
    releaseNodeNames(config.claimsDir, config.stateDir, claimed);
    releaseLock();
    throw err;
  }
}

async function serve(config: Config, log: Logger, nodeNames: readonly NodeName[], releaseLock: () => void): Promise<void> {
  const kek = await openNodeKeyRing(config.kek, config.stateDir);
  const { keyring } = kek;
  log.info({ keyId: keyring.current().id, protection: keyring.protection }, 'keyring open');
  if (config.kek.kind === 'state-dir') {
    // Said at every start: with this source, a copy of the state dir decrypts every backup, secret and log.
    log.warn({ keys: path.join(config.stateDir, 'keys') },
      'node keys are stored in the clear in the state dir; set kekSource to seal them (docs/operations.md#keys)');
  }
  const store = new WorkspaceStore(config.stateDir, {
    seal: (plaintext, aad) => sealSecret(keyring, plaintext, aad),
    open: (sealed, aad) => openSecret(keyring, sealed, aad).toString('utf8'),
    reseal: (sealed, aad) => resealSecret(keyring, sealed, aad),
    keyIdsIn: sealedKeyIdsIn,
    sealBytes: (plaintext, aad) => sealSecret(keyring, plaintext, aad),
    openBytes: (sealed, aad) => openSecret(keyring, sealed, aad),
  });
  const metrics = new DaemonMetrics();
  let workspaces: WorkspaceService | undefined;
  // Workspaces per image digest: RemoveImage and the image GC never take an image in use.
  const imagesInUse = (): Map<string, number> => {
    const used = new Map<string, number>();
    for (const r of workspaces?.list() ?? []) used.set(r.status.imageDigest, (used.get(r.status.imageDigest) ?? 0) + 1);
    return used;
  };
  const oci = new OciImageStore({
    stateDir: config.stateDir,
    defaultRegistry: config.defaultRegistry,
    registry: { mirrors: registryMirrorsOf(config.registryMirrors), caFile: config.registryCaFile || undefined, insecureHosts: listOf(config.insecureRegistry), authFile: config.registryAuthFile || undefined },
    inUse: imagesInUse,
  });
  await oci.open();
  metrics.imageStoreBytes(() => oci.storeBytes());
  const sandbox = await createSandbox(config, log, { onCleanup: (kind) => metrics.countCleanup(kind), oci });
  const nodeNetwork = await openNodeNetwork(config);
  const network = workspaceNetwork(nodeNetwork);
  const logStore = new LogStore({ dir: stateLayout(config.stateDir).logs, sealer: keyring, maxBytesPerLog: config.logMaxBytes });
  await logStore.init();
  const output = new WorkspaceOutput(logStore, native, log);
  const storage = openBackupStorage(config);
  const backups = openBackups(config, storage, keyring, log);
  const signingKey = await loadOrCreateSigningKey(config.stateDir);
  const rotation = new KeyRotation(keyring, [
    { kind: 'backup', usage: () => backups.keyUsage(), rewrap: (keyId) => backups.rewrap('all', keyId) },
    { kind: 'secret', usage: async () => store.keyUsage(), rewrap: async () => store.resealAll() },
    { kind: 'log', usage: () => logStore.keyUsage(), rewrap: (keyId) => logStore.rewrap(keyId) },
  ]);
  // Storage that is down (an S3 outage) must not keep the node from running and adopting workspaces.
  const leftovers = await backups.cleanupTemporary().catch((err: unknown) => {
    log.warn({ err: err instanceof Error ? err.message : String(err) }, 'backup leftovers not cleaned: storage unavailable');
    return 0;
  });
  if (leftovers > 0) metrics.countCleanup('backup_temporary', leftovers);
  const volumes = await openWorkspaceVolumes(config, {
    put: (id, key) => store.putDiskKey(id, key), get: (id) => store.diskKey(id), erase: (id) => store.eraseDiskKey(id),
  }, log);
  // Verified prebuild trees unpacked on the node, the lower layer of /workspace (docs/source.md). Not beside
  // encrypted volumes: a plaintext copy of what they hold would undo their encryption.
  const prebuildTrees = volumes || config.prebuildCacheMaxBytes === 0 ? undefined : new PrebuildTrees({
    dir: stateLayout(config.stateDir).prebuildTrees,
    maxBytes: config.prebuildCacheMaxBytes,
    inUse: (snapshotId) => (workspaces?.list() ?? []).some((r) => r.status.uidBase !== 0 && r.status.content?.prebuildSnapshotId === snapshotId
      && (r.status.content.prebuildTree === 'cached' || r.status.content.prebuildTree === 'unpacked')),
    log,
  });
  await prebuildTrees?.open();
  if (prebuildTrees) backups.onDeleted = (backupId) => prebuildTrees.forget(backupId);
  // eslint-disable-next-line prefer-const
  workspaces = new WorkspaceService({
    stateDir: config.stateDir,
    defaultGraceMs: config.stopGraceMs,
    store,
    sandbox,
    log,
    specKey: loadOrCreateSecret(stateLayout(config.stateDir).specKey),
    defaultResources: { memoryBytes: config.defaultMemoryBytes, cpuMillis: config.defaultCpuMillis, pids: config.defaultPids, ...defaultDisk(config) },
    network,
    logs: output,
    backups,
    provenance: provenancePublisher(storage, signingKey, { nodeId: config.nodeId, version }),
    ...(volumes ? { storage: volumes } : {}),
    source: createSource(config, log, { launch: (spec) => sandbox.launchHelper(spec), listenInNetns: (pid, port) => native.listenInNetns(pid, port), outputPipe: (capacity) => native.outputPipe(capacity) }),
    ...(prebuildTrees ? { prebuildTrees } : {}),
  });
  // A tree whose last workspace went (its snapshot deleted, or the cache over its size) goes after it.
  if (prebuildTrees) workspaces.events.on('removed', () => void prebuildTrees.collect().catch(() => undefined));
  output.onTaskEvent = (id, event) => workspaces.onTaskEvent(id, event);
  workspaces.events.on('backup', (b: { seconds: number; bytes: number }) => metrics.observeBackup(b.seconds, b.bytes));
  metrics.watch(workspaces);
  await workspaces.recover();
  await prebuildTrees?.collect();
  const sessions = new ExecSessions({ workspaces, native, log, detachedTimeoutMs: config.execDetachedTimeoutMs });
  sessions.recover();
  const metricsServer = config.metricsListen ? await startMetricsServer(metrics, config.metricsListen) : undefined;
  const limits = { ...config, defaultNetwork: config.defaultNetwork === 'isolated' ? ('ISOLATED' as const) : ('NONE' as const) };
  const audit = createAuditLog(openAuditLogger(config.auditLog, config.stateDir, log, { node: config.nodeId }));
  const checkImage = imageRegistryCheck(oci, listOf(config.userRegistries), audit);
  const api = createApiServer({
    workspaces: workspaceHandlers(workspaces, output, limits, audit, log, checkImage),
    images: imageHandlers(oci, imagesInUse, audit, log, checkImage),
    backups: backupHandlers(backups, audit, log),
    exec: execHandlers(sessions, workspaces, audit, log),
    node: nodeHandlers({
      nodeId: config.nodeId,
      version,
      cgroupMode: sandbox.cgroupMode,
      currentKeyId: () => keyring.current().id,
      provenancePublicKeyPem: () => signingKey.publicKeyPem,
      rotateKey: async (req) => {
        const out = await rotation.run(req);
        log.info({ keyId: out.keyId, newKey: req.newKey, rewrapped: out.rewrapped, retired: out.retired }, 'key rotation');
        return {
          keyId: out.keyId, rewrapped: out.rewrapped.backup, rewrappedSecrets: out.rewrapped.secret, rewrappedLogs: out.rewrapped.log,
          retiredKeyIds: out.retired, usage: out.usage, keyIds: out.keyIds,
        };
      },
    }, log),
  });
  const transport = await bindTransports(api.server, config, audit, log, (p) => native.unixSocketPeerPid(p));
  const endpoints = await startEndpoints(config, transport.pki, {
    route: (id) => {
      const r = workspaces.find(id);
      return r && { ip: r.status.ipAddress, ownerId: r.spec.ownerId, ports: r.status.ports, running: r.status.state === 'RUNNING' };
    },
  }, audit, log, createTerminalEndpoint({ sessions, workspaces, audit, nodeDomain: config.nodeDomain, log }));
  api.serving();
  native.sdNotify('READY=1');
  // systemd's watchdog (WatchdogSec=): ping at half the interval; WATCHDOG_PID names the process meant.
  const watchdogUsec = Number(process.env.WATCHDOG_USEC ?? 0);
  const watchdogPid = Number(process.env.WATCHDOG_PID ?? process.pid);
  if (watchdogUsec > 0 && watchdogPid === process.pid) {
    setInterval(() => native.sdNotify('WATCHDOG=1'), Math.max(1, Math.floor(watchdogUsec / 2000))).unref();
  }
  log.info({ socket: config.socketPath, tcpPort: transport.tcpPort, endpointPort: endpoints?.port, stateDir: config.stateDir, cgroups: sandbox.cgroupMode, version }, 'tetrixd serving');

  const sweepLogs = (): void => {
    logStore.sweep(config.logRetentionMs).catch((err: unknown) => log.warn({ err: String(err) }, 'log retention sweep failed'));
  };
  sweepLogs();
  setInterval(sweepLogs, 3600_000).unref();
  const collectImages = (): void => {
    oci.collect({ maxAgeMs: config.imageGcMaxAgeMs, maxBytes: config.imageStoreMaxBytes })
      .then((removed) => removed.length > 0 && log.info({ removed }, 'unused images removed'))
      .catch((err: unknown) => log.warn({ err: String(err) }, 'image garbage collection failed'));
  };
  collectImages();
  setInterval(collectImages, 3600_000).unref();

  let stopping = false;
  const shutdown = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    native.sdNotify('STOPPING=1');
    log.info({ signal }, 'shutting down; workspaces keep running');
    await api.close();
    await metricsServer?.close();
    metrics.close();
    await endpoints?.close();
    transport.close();
    // Names are held for the workspaces that outlive the daemon; with none left, nothing needs them.
    const holdsWorkspaces = workspaces.list().length > 0;
    workspaces.close();
    await volumes?.stop();
    await nodeNetwork?.close();
    store.close();
    kek.close();
    if (!holdsWorkspaces) releaseNodeNames(config.claimsDir, config.stateDir, nodeNames);
    releaseLock();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

if (require.main === module) {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(usage());
    process.exit(0);
  }
  if (process.argv.includes('--version')) {
    process.stdout.write(`tetrixd ${version}\n`);
    process.exit(0);
  }
  const args = process.argv.slice(2);
  if (args[0] === 'uninstall') {
    runUninstall(args.slice(1));
  } else {
    runDaemon(args);
  }
}

function runDaemon(args: string[]): void {
  let config: Config;
  try {
    config = loadConfig(args);
  } catch (err) {
    process.stderr.write(`tetrixd: ${(err as Error).message}\n`);
    process.exit(2);
  }
  run(config).catch((err: unknown) => {
    const message = err instanceof ConfigError || err instanceof Error ? err.message : String(err);
    process.stderr.write(`tetrixd: ${message}\n`);
    process.exit(1);
  });
}

/** `tetrixd uninstall [--force] [the daemon's own flags]`: see src/uninstall.ts. */
function runUninstall(args: string[]): void {
  const force = args.includes('--force');
  let config: Config;
  try {
    config = loadConfig(args.filter((a) => a !== '--force'));
  } catch (err) {
    process.stderr.write(`tetrixd uninstall: ${(err as Error).message}\n`);
    process.exit(2);
  }
  uninstall(config, { force, say: (line) => process.stdout.write(`${line}\n`) }).then(
    () => process.stdout.write('tetrixd uninstall: done\n'),
    (err: unknown) => {
      process.stderr.write(`tetrixd uninstall: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
