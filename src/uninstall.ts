// `tetrixd uninstall`: gives the node back as Tetrix found it. It removes only what this daemon's state dir
// owns (its claimed cgroup parent, bridge and nft tables, its uid-range claims, the state dir itself with
// its keys and PKI; for the node's main daemon also install.sh's module file and command wrappers) and
// refuses while a daemon serves it or a workspace still runs, unless --force. Debian packages and a
// systemd unit the operator copied stay: docs/operations.md says how to remove them.
import fs from 'node:fs';
import path from 'node:path';
import { defaults, packageRoot, type Config } from './config/config';
import { DomainError } from './errors';
import { refuseServedSocket } from './api/server';
import { removeNodeNetwork } from './network';
import { detectCgroupDriver, type CgroupDriver } from './sandbox/cgroups';
import { IdRangeAllocator } from './sandbox/idmap';
import { mountsUnder } from './sandbox/rootfs';
import { native } from './native';
import { acquireStateLock, claimNodeNames, nodeNamesOf, releaseNodeNames } from './state-dir';

export interface UninstallOptions {
  force: boolean;
  say(line: string): void;
}

/** Workspace groups that still hold processes: a workspace running, or a process it left. */
function liveGroups(cgroups: CgroupDriver): string[] {
  return cgroups.list().filter((name) => {
    const group = cgroups.open(name);
    return group.procsFiles().some((file) => fs.readFileSync(file, 'utf8').trim() !== '');
  });
}

export async function uninstall(config: Config, opts: UninstallOptions): Promise<void> {
  if (!fs.existsSync(config.stateDir)) {
    opts.say(`no state dir at ${config.stateDir}: only node-wide leftovers are looked for`);
  }
  refuseServedSocket(config.socketPath, (p) => native.unixSocketPeerPid(p));
  const releaseLock = fs.existsSync(config.stateDir) ? acquireStateLock(config.stateDir) : () => undefined;
  const names = nodeNamesOf(config);
  // Refuses (naming the owner) when another state dir owns one of the names: they are not ours to remove.
  claimNodeNames(config.claimsDir, config.stateDir, names);

  const cgroups = detectCgroupDriver(config.cgroupParent, config.cgroupRoot);
  const live = liveGroups(cgroups);
  if (live.length > 0 && !opts.force) {
    releaseLock();
    throw new DomainError('FAILED_PRECONDITION', `${live.length} workspace(s) still run (${live.slice(0, 5).join(', ')}); tear them down first, or pass --force to kill them`);
  }
  for (const name of cgroups.list()) {
    await cgroups.open(name).destroy();
    opts.say(`removed cgroup ${config.cgroupParent}/${name}${live.includes(name) ? ' (its processes killed)' : ''}`);
  }
  for (const mount of mountsUnder(config.stateDir).reverse()) {
    native.umount(mount, native.constants.MNT_DETACH);
    opts.say(`unmounted ${mount}`);
  }
  if (config.network === 'on') {
    for (const line of await removeNodeNetwork({ stateDir: config.stateDir, bridge: config.networkBridge, tableName: config.networkTable })) opts.say(`removed ${line}`);
  }
  await cgroups.removeParent();
  opts.say(`removed cgroup parent ${config.cgroupParent}`);
  const ids = new IdRangeAllocator({ dir: config.idmapDir });
  for (const claim of ids.claimedBy(config.stateDir)) {
    ids.release(claim.base);
    opts.say(`released uid range ${claim.base} (${claim.workspaceId})`);
  }
  releaseNodeNames(config.claimsDir, config.stateDir, names);
  removeIfPresent(config.socketPath, opts);
  releaseLock();
  removeIfPresent(config.stateDir, opts);
  const mainDaemon = path.resolve(config.stateDir) === defaults().stateDir;
  if (mainDaemon) removeOverlayModuleConfig(opts);
  // The wrappers run the main daemon; a TETRIX_BIN_DIR given (as to install.sh) names wrappers to remove.
  const binDir = process.env.TETRIX_BIN_DIR;
  if (mainDaemon || binDir) removeCommandWrappers(binDir ?? '/usr/local/bin', opts);
}

/** The tetrixd and tetrixctl wrappers deploy/install.sh wrote for this checkout into binDir; a file another
 *  checkout or someone else wrote there is left alone. */
function removeCommandWrappers(binDir: string, opts: UninstallOptions): void {
  const mark = `# Written by ${packageRoot}/deploy/install.sh:`;
  for (const name of ['tetrixd', 'tetrixctl']) {
    const file = path.join(binDir, name);
    const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    if (text.split('\n')[1]?.startsWith(mark)) removeIfPresent(file, opts);
  }
}

function removeIfPresent(target: string, opts: UninstallOptions): void {
  if (!fs.existsSync(target)) return;
  fs.rmSync(target, { recursive: true, force: true });
  opts.say(`removed ${target}`);
}

/** deploy/install.sh's one file outside the checkout, when it holds only what install.sh wrote. Only the
 *  node's main daemon removes it: daemons beside it may still need the module. */
function removeOverlayModuleConfig(opts: UninstallOptions): void {
  const file = path.join('/etc/modules-load.d', 'tetrix.conf');
  if (fs.existsSync(file) && fs.readFileSync(file, 'utf8').trim() === 'overlay') removeIfPresent(file, opts);
}
