// The sandbox as the workspace lifecycle sees it: images, uid ranges, rootfs, cgroups, seccomp and
// capabilities behind one object (the Sandbox port of src/workspace/ports.ts), built from src/sandbox.
// The lifecycle names a workspace by its id and an image by its reference: the image's directory, the
// workspace's paths (src/layout.ts), init, the seccomp filter and the cgroup placement stay in here.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../../config/config';
import type { ImageRef, Sandbox, WorkloadLaunch } from '../ports';
import type { Resources } from '../types';
import { stateLayout, workspaceDir, workspaceLayout } from '../../layout';
import { capabilityNumbers, DEFAULT_CAPABILITIES } from '../../sandbox/capabilities';
import { boundedLimits, detectCgroupDriver, type CgroupDriver, type CgroupPlacement } from '../../sandbox/cgroups';
import { IdRangeAllocator } from '../../sandbox/idmap';
import { ImageStore, type ResolvedImage } from '../../sandbox/images';
import { Launcher, readInitExitRecord, type Launched, type LaunchSpec } from '../../sandbox/launch';
import { initBinaryPath, native } from '../../native';
import { prepareRootfs, releaseRootfs, remountContent, unmountRootfs, writeRootfsFiles, type ImageOwnership } from '../../sandbox/rootfs';
import { SeccompProfiles } from '../../sandbox/seccomp';
import { looksLikeReference } from '../../images/reference';
import type { OciImageStore } from '../../images/store';

export interface NodeSandbox extends Sandbox {
  readonly cgroupMode: string;
  /** A helper process in the workspace's cgroup and id range, with its own root and mounts (the source
   *  fetch, src/source/git-sandbox.ts); not part of the lifecycle's port. */
  launchHelper(spec: LaunchSpec): Promise<Launched>;
}

/**
 * A private copy of the static init in the state dir (root-owned, 0555): workspaces bind it read-only,
 * and a rebuild or upgrade of the package never pulls it from under a start.
 */
function installInit(stateDir: string): string {
  const target = stateLayout(stateDir).initBinary;
  fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
  const tmp = `${target}.tmp-${process.pid}`;
  fs.copyFileSync(initBinaryPath, tmp);
  fs.chmodSync(tmp, 0o555);
  fs.renameSync(tmp, target);
  return target;
}

export async function createSandbox(config: Config, log: Logger, hooks: { onCleanup?: (kind: string) => void; oci?: OciImageStore } = {}): Promise<NodeSandbox> {
  const cgroups: CgroupDriver = detectCgroupDriver(config.cgroupParent, config.cgroupRoot);
  const cleaned = (kind: string): void => hooks.onCleanup?.(kind);
  const images = new ImageStore({ stateDir: config.stateDir, imagesDir: config.imagesDir });
  const ids = new IdRangeAllocator({ dir: config.idmapDir });
  // Every profile is validated and compiled now: the daemon never starts with a half-loaded filter.
  const profiles = await SeccompProfiles.load(config.profilesDir);
  const capabilities = capabilityNumbers(DEFAULT_CAPABILITIES);
  const initPath = installInit(config.stateDir);
  // The built-in image never changes while we run: resolve (and digest) it once.
  const builtin = new Map<string, Promise<ResolvedImage>>();
  const resolve = (image: string): Promise<ResolvedImage> => {
    if (!image.startsWith('builtin:')) return images.resolve(image);
    let p = builtin.get(image);
    if (!p) {
      p = images.resolve(image);
      builtin.set(image, p);
      p.catch(() => builtin.delete(image));
    }
    return p;
  };
  // Where each resolved image's tree is: the lifecycle holds the ImageRef, never the path.
  const imageDirs = new WeakMap<ImageRef, string | string[]>();
  const resolveImage = async (image: string): Promise<ImageRef> => {
    // Registry references (src/images): the layers' dirs, top first; names without '/', ':' or '@' stay
    // operator directories.
    if (looksLikeReference(image) && hooks.oci) {
      const oci = await hooks.oci.resolve(image);
      const ref: ImageRef = { reference: image, digest: oci.digest, config: oci.config };
      imageDirs.set(ref, oci.lowerDirs);
      return ref;
    }
    const resolved = await resolve(image);
    const ref: ImageRef = { reference: image, digest: resolved.digest };
    imageDirs.set(ref, resolved.rootfs);
    return ref;
  };
  const imageDirOf = (image: ImageRef): string | string[] => {
    const dir = imageDirs.get(image);
    if (dir === undefined) throw new Error(`image ${image.reference}: not resolved by this sandbox`);
    return dir;
  };
  const dirOf = (workspaceId: string): string => workspaceDir(config.stateDir, workspaceId);
  // The workload as spawn takes it: the workspace's rootfs, exit-status file and /workspace.
  const launchSpecOf = (w: WorkloadLaunch): LaunchSpec => {
    const layout = workspaceLayout(dirOf(w.workspaceId));
    return { ...w, wsDir: layout.wsDir, rootfs: layout.rootfs, mounts: [{ source: layout.content, target: '/workspace', readonly: false }] };
  };
  // Where each workspace created here goes; a workspace adopted after a restart is never launched again.
  const placements = new Map<string, CgroupPlacement>();
  const launcher = new Launcher({
    native,
    initPath,
    capabilities,
    ptyLimit: config.ptyLimit,
    seccompFilter: (profile) => profiles.filterFor(profile),
    placementOf: (workspaceId) => placements.get(workspaceId) ?? cgroups.open(workspaceId).placement(),
  });
  log.info({ cgroups: cgroups.mode, profiles: profiles.names() }, 'sandbox ready');
  // Which way images reach container root: said on the first start, and again only if it changes.
  let ownershipLogged = '';
  const logOwnershipOnce = (ownership: ImageOwnership): void => {
    if (ownership.how === ownershipLogged) return;
    ownershipLogged = ownership.how;
    if (ownership.how === 'idmapped') log.info('rootfs: images are mounted idmapped into each workspace\'s range');
    else log.warn({ reason: ownership.reason }, 'rootfs: idmapped mounts refused; shifting image ownership by chown (slow for large images)');
  };

  return {
    cgroupMode: cgroups.mode,
    resolveImage,
    checkSeccompProfile: (profile) => void profiles.filterFor(profile),
    allocateIds: (workspaceId) => ids.allocate({ stateDir: config.stateDir, workspaceId }).base,
    releaseIds: (base) => ids.release(base),
    prepareRootfs: async (workspaceId, image, uidBase, { files, beforeMount, contentLower }) => {
      const prepared = await prepareRootfs({ wsDir: dirOf(workspaceId), lowerDir: imageDirOf(image), uidBase, ...(beforeMount ? { beforeMount } : {}), ...(contentLower ? { contentLower } : {}) });
      logOwnershipOnce(prepared.ownership);
      if (files) writeRootfsFiles(prepared.rootfs, files);
    },
    // Its files stay until teardown: /workspace over a prebuild tree stays mounted (src/sandbox/rootfs.ts).
    unmountRootfs: (workspaceId) => unmountRootfs(dirOf(workspaceId), { keepContent: true }),
    remountContent: (workspaceId, uidBase) => remountContent(dirOf(workspaceId), uidBase),
    removeWorkspaceDir: (workspaceId) => releaseRootfs(dirOf(workspaceId)),
    createCgroup: async (workspaceId, resources: Resources) => {
      placements.set(workspaceId, (await cgroups.create(workspaceId, boundedLimits(resources))).placement());
    },
    destroyCgroup: async (workspaceId) => {
      placements.delete(workspaceId);
      if (cgroups.list().includes(workspaceId)) await cgroups.open(workspaceId).destroy();
    },
    launch: (workload) => launcher.launch(launchSpecOf(workload)),
    launchHelper: (spec) => launcher.launch(spec),
    adopt: (pid, startTime) => launcher.adopt(pid, startTime),
    initExitRecord: (workspaceId) => readInitExitRecord(dirOf(workspaceId)),
    oomKillCount: (workspaceId) => (cgroups.list().includes(workspaceId) ? cgroups.open(workspaceId).oomKillCount() : 0),
    sweep: async (liveIds) => {
      for (const name of cgroups.list()) {
        if (liveIds.has(name)) continue;
        log.warn({ cgroup: name }, 'removing a cgroup no workspace accounts for');
        await cgroups.open(name).destroy();
        cleaned('cgroup');
      }
      const wsRoot = stateLayout(config.stateDir).workspaces;
      for (const id of fs.existsSync(wsRoot) ? fs.readdirSync(wsRoot) : []) {
        if (liveIds.has(id)) continue;
        log.warn({ workspace: id }, 'removing a workspace directory no record accounts for');
        await releaseRootfs(dirOf(id));
        cleaned('workspace_dir');
      }
      for (const claim of ids.claimedBy(config.stateDir)) {
        if (liveIds.has(claim.workspaceId)) continue;
        ids.release(claim.base);
        cleaned('id_range');
      }
    },
  };
}
