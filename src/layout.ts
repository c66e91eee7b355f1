// Where the daemon keeps a workspace on the host, written once. Every layer (main, the lifecycle, the
// sandbox and the adapters) asks here rather than joining the names itself:
//
// <stateDir>/
//   workspaces/<id>/   one directory per workspace:
//     lower/           the image, bind-mounted read-only with its ids shifted into the workspace's range
//     upper/           the overlay's writable layer (what the workspace changes outside /workspace)
//     work/            overlayfs scratch
//     rootfs/          the overlay mount the workspace pivots into
//     content/         the /workspace tree, bind-mounted by spawn; the part that is backed up. From a cached
//                      prebuild tree it is an overlay mount (docs/source.md, "The prebuild tree cache"):
//     content-lower/   the prebuild tree, bind-mounted read-only with its ids shifted into the workspace's range
//     content-upper/   what the workspace changed of it
//     content-work/    overlayfs scratch
//     content-tree     which tree content-lower shows (its path), so the overlay can be mounted again after a reboot
//     exit-status      what init recorded of the workload's end (native/init.c)
//     source/          the git fetch's tool root and its output while it runs (src/source/git-sandbox.ts)
//   logs/              the sealed log store
//   storage/           workspace volumes (storageBackend ext4-fscrypt): images/, mnt/, pool/ (docs/storage.md);
//                      a workspace's dir above is then its volume's encrypted dir, bind-mounted
//   prebuild-trees/    verified prebuild snapshots, unpacked once with unshifted ids (0700): <snapshotId>/tree/,
//                      <snapshotId>/meta.json; .staging-* while one is unpacked (src/prebuild/trees.ts)
//   bin/tetrix-init    the daemon's private copy of init
//   spec.key           the HMAC key of spec digests
// A new per-workspace directory goes in WorkspaceLayout, and nowhere else.
import path from 'node:path';

export interface WorkspaceLayout {
  wsDir: string;
  lower: string;
  upper: string;
  work: string;
  rootfs: string;
  content: string;
  contentLower: string;
  contentUpper: string;
  contentWork: string;
  contentTree: string;
  exitStatus: string;
  source: string;
}

export interface StateLayout {
  workspaces: string;
  logs: string;
  storage: string;
  prebuildTrees: string;
  initBinary: string;
  specKey: string;
}

export function stateLayout(stateDir: string): StateLayout {
  const dir = path.resolve(stateDir);
  return {
    workspaces: path.join(dir, 'workspaces'),
    logs: path.join(dir, 'logs'),
    storage: path.join(dir, 'storage'),
    prebuildTrees: path.join(dir, 'prebuild-trees'),
    initBinary: path.join(dir, 'bin', 'tetrix-init'),
    specKey: path.join(dir, 'spec.key'),
  };
}

/** <stateDir>/workspaces/<id> */
export function workspaceDir(stateDir: string, workspaceId: string): string {
  return path.join(stateLayout(stateDir).workspaces, workspaceId);
}

export function workspaceLayout(wsDir: string): WorkspaceLayout {
  const dir = path.resolve(wsDir);
  return {
    wsDir: dir,
    lower: path.join(dir, 'lower'),
    upper: path.join(dir, 'upper'),
    work: path.join(dir, 'work'),
    rootfs: path.join(dir, 'rootfs'),
    content: path.join(dir, 'content'),
    contentLower: path.join(dir, 'content-lower'),
    contentUpper: path.join(dir, 'content-upper'),
    contentWork: path.join(dir, 'content-work'),
    contentTree: path.join(dir, 'content-tree'),
    exitStatus: path.join(dir, 'exit-status'),
    source: path.join(dir, 'source'),
  };
}
