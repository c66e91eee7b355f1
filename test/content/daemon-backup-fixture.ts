// Shared by the daemon backup tests: busybox workspaces that write a tree, a backup call read to its
// end, and a host-side picture of a content tree (with owners as the container sees them) to compare.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { Readable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import type { Test } from 'tap';
import { unaryCall } from '../../src/cli/client';
import { KeyRing } from '../../src/crypto/keys';
import { DEFAULT_SEGMENT_SIZE, EncryptStream, newDataKey, STREAM_VERSION } from '../../src/crypto/stream';
import { createCompressStream } from '../../src/content/compress';
import { FsObjectStorage } from '../../src/content/storage-fs';
import { TreeArchiveStream } from '../../src/content/tree-walk';
import { cgroupDirsOf, mountsUnder, refusal, startDaemon, uniqueName, type Daemon } from '../helpers/daemon';

export { refusal };
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { Progress__Output } from '../../src/generated/tetrix/agent/v1/Progress';
import type { BackupResult__Output } from '../../src/generated/tetrix/agent/v1/BackupResult';
import type { BackupProgress__Output } from '../../src/generated/tetrix/agent/v1/BackupProgress';
import type { RotateKeyResponse__Output } from '../../src/generated/tetrix/agent/v1/RotateKeyResponse';

export const busybox = (id: string, script: string, extra: Partial<StartWorkspaceRequest> = {}): StartWorkspaceRequest => ({
  id,
  ownerId: 'alice',
  image: 'builtin:busybox',
  command: ['/bin/sh', '-c', script],
  resources: { memoryBytes: 256 << 20, cpuMillis: 1000, pids: 128 },
  ...extra,
});

/** A workspace that only waits (for restore targets: nothing touches /workspace). */
export const idle = (id: string, extra: Partial<StartWorkspaceRequest> = {}): StartWorkspaceRequest =>
  busybox(id, 'trap "exit 0" TERM; while true; do sleep 0.2; done', extra);

export const contentDir = (d: Daemon, id: string): string => path.join(d.stateDir, 'workspaces', id, 'content');
export const backupDir = (d: Daemon): string => path.join(d.stateDir, 'backups');

/** Waits until the workload wrote /workspace/<marker> (it does so last). */
export async function waitForMarker(d: Daemon, id: string, marker = 'done', timeoutMs = 30_000): Promise<void> {
  const p = path.join(contentDir(d, id), marker);
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(p)) {
    const w = await d.get(id);
    if (w.state !== 'WORKSPACE_STATE_RUNNING') throw new Error(`${id} is ${w.state} (${w.message}) before writing ${marker}`);
    if (Date.now() > end) throw new Error(`${marker} never appeared in ${id}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface BackupRun {
  progress: Progress__Output[];
  result: BackupResult__Output;
  /** 'progress' or 'result' per message, in arrival order. */
  kinds: string[];
}

/** BackupWorkspace read to its end; rejects with the call's status error. */
export function backupOf(d: Daemon, id: string, includeUpper = false): Promise<BackupRun> {
  return new Promise((resolve, reject) => {
    const progress: Progress__Output[] = [];
    const kinds: string[] = [];
    let result: BackupResult__Output | undefined;
    const call = d.clients.workspaces.BackupWorkspace({ id, includeUpper }, { deadline: Date.now() + 60_000 });
    call.on('data', (m: BackupProgress__Output) => {
      if (m.progress) progress.push(m.progress);
      if (m.result) result = m.result;
      kinds.push(m.result ? 'result' : 'progress');
    });
    call.on('error', reject);
    call.on('end', () => (result ? resolve({ progress, result, kinds }) : reject(new Error('the stream ended without a result'))));
  });
}

export const rotateKey = (d: Daemon, rewrapBackups: boolean): Promise<RotateKeyResponse__Output> =>
  unaryCall<RotateKeyResponse__Output>((md, o, cb) => d.clients.node.RotateKey({ rewrapBackups }, md, o, cb));

export const sha256Of = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink' | 'other';
  mode: string;         // octal, 12 permission bits
  uid: number;          // as the container sees it: host id - the workspace's uid base
  gid: number;
  mtimeUs: string;      // microseconds (what a restore keeps)
  sha256?: string;
  target?: string;
  sameFileAs?: string;  // hard links: the first path (in walk order) of the same inode
}

/** Every entry below root (root itself as '.'), sorted, as the container would see it. */
export function pictureOf(root: string, uidBase: number): Record<string, TreeEntry> {
  const out: Record<string, TreeEntry> = {};
  const firstPathOfInode = new Map<bigint, string>();
  const visit = (rel: string): void => {
    const abs = path.join(root, rel);
    const st = fs.lstatSync(abs, { bigint: true });
    const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
    const e: TreeEntry = {
      type, mode: (Number(st.mode) & 0o7777).toString(8), uid: Number(st.uid) - uidBase, gid: Number(st.gid) - uidBase,
      mtimeUs: (st.mtimeNs / 1000n).toString(),
    };
    if (type === 'file') {
      e.sha256 = sha256Of(abs);
      if (st.nlink > 1n) {
        const first = firstPathOfInode.get(st.ino);
        if (first === undefined) firstPathOfInode.set(st.ino, rel);
        else e.sameFileAs = first;
      }
    }
    if (type === 'symlink') e.target = fs.readlinkSync(abs);
    out[rel] = e;
    if (type === 'dir') for (const name of fs.readdirSync(abs).sort()) visit(rel === '.' ? name : path.join(rel, name));
  };
  visit('.');
  return out;
}

/** Every path below dir whose name contains needle, or whose (small) regular file content does. */
export function findEverywhere(dir: string, needle: string): string[] {
  const hits: string[] = [];
  const bytes = Buffer.from(needle);
  const walk = (p: string): void => {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(p);
    } catch {
      return;
    }
    if (path.basename(p).includes(needle)) hits.push(p);
    if (st.isDirectory()) for (const name of fs.readdirSync(p)) walk(path.join(p, name));
    else if (st.isFile() && st.size < 64 << 20 && fs.readFileSync(p).includes(bytes)) hits.push(p);
  };
  walk(dir);
  return hits;
}

/** Every path below dir whose name contains needle. */
export function findNames(dir: string, needle: string): string[] {
  const hits: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.name.includes(needle)) hits.push(p);
    if (entry.isDirectory()) hits.push(...findNames(p, needle));
  }
  return hits;
}

// ---------------------------------------------------------------------------------------------------------
// Users: a daemon that trusts a test control plane, and calls made with its tokens (as in
// test/api/daemon-auth.test.ts: Ed25519 JWTs whose audience is the node id). Over the unix socket a call
// with a token speaks for that user; one without is the local operator.

export interface UserDaemon {
  d: Daemon;
  token(sub: string, teams?: string[]): string;
}

export async function startUserDaemon(t: Test, extra: string[] = []): Promise<UserDaemon> {
  const nodeId = uniqueName('tetrix-node');
  const keys = crypto.generateKeyPairSync('ed25519');
  const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-cp-key-'));
  t.teardown(() => fs.rmSync(keyDir, { recursive: true, force: true }));
  const keyFile = path.join(keyDir, 'control-plane.pub.pem');
  fs.writeFileSync(keyFile, keys.publicKey.export({ type: 'spki', format: 'pem' }));
  const d = await startDaemon(t, ['--control-plane-key-file', keyFile, '--node-id', nodeId, ...extra]);
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const token = (sub: string, teams: string[] = []): string => {
    const input = `${b64({ alg: 'EdDSA', typ: 'JWT' })}.${b64({ sub, teams, aud: nodeId, iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 3600 })}`;
    return `${input}.${crypto.sign(null, Buffer.from(input), keys.privateKey).toString('base64url')}`;
  };
  return { d, token };
}

export const asUser = (token: string | undefined): grpc.Metadata => {
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', `Bearer ${token}`);
  return md;
};

/** StartWorkspace as a user (token) or, without one, as the local operator. */
export const startAs = (d: Daemon, token: string | undefined, req: StartWorkspaceRequest): Promise<Workspace__Output> =>
  unaryCall<Workspace__Output>((md, o, cb) => d.clients.workspaces.StartWorkspace(req, md, o, cb), { metadata: asUser(token), deadlineMs: 60_000 });

/** BackupWorkspace as a user, read to its end: the result. */
export function backupAs(d: Daemon, token: string | undefined, id: string): Promise<BackupResult__Output> {
  return new Promise((resolve, reject) => {
    let result: BackupResult__Output | undefined;
    const call = d.clients.workspaces.BackupWorkspace({ id, includeUpper: false }, asUser(token), { deadline: Date.now() + 60_000 });
    call.on('data', (m: BackupProgress__Output) => (result = m.result ?? result));
    call.on('error', reject);
    call.on('end', () => (result ? resolve(result) : reject(new Error('the stream ended without a result'))));
  });
}


/**
 * A backup of `dir` written the way Tetrix wrote them before backups recorded their workspace (manifest
 * version 1, data key wrapped for `backup:<id>` only), into the daemon's own storage and keyring: the
 * format a node upgraded in place still holds.
 */
export async function storeVersion1Backup(d: Daemon, dir: string, uidBase: number): Promise<string> {
  const id = `bk-20251201T000000Z-${crypto.randomBytes(6).toString('hex')}`;
  const keyring = KeyRing.open({ dir: path.join(d.stateDir, 'keys') });
  const storage = new FsObjectStorage({ dir: backupDir(d) });
  const dataKey = newDataKey();
  const { keyId, wrapped } = keyring.wrap(dataKey, `backup:${id}`);
  let files = 0;
  const tree = new TreeArchiveStream([{ name: 'content', dir }], { uidBase, onProgress: (n) => (files += n) });
  const stored = await storage.put(`${id}.data`, tree.pipe(createCompressStream()).pipe(new EncryptStream(dataKey)));
  dataKey.fill(0);
  const manifest = {
    format: 'tetrix-backup', version: 1, backupId: id, createdAt: new Date().toISOString(), object: `${id}.data`,
    size: stored.size, sha256: stored.sha256, keyId, wrappedKey: wrapped.toString('base64'),
    streamVersion: STREAM_VERSION, segmentSize: DEFAULT_SEGMENT_SIZE, compression: 'zstd', roots: ['content'], files, bytes: 0,
  };
  await storage.put(`${id}.manifest`, Readable.from([Buffer.from(JSON.stringify(manifest) + '\n')]));
  return id;
}

/** What a failed start must not leave: the workspace's directory, a mount below the daemon's dir, a cgroup. */
export function leftoversOf(d: Daemon, id: string): string[] {
  const left: string[] = [];
  const dir = path.join(d.stateDir, 'workspaces', id);
  if (fs.existsSync(dir)) left.push(dir);
  left.push(...mountsUnder(d.dir).filter((m) => m.includes(`/${id}`)));
  for (const group of cgroupDirsOf(d.cgroupParent)) {
    const g = path.join(group, id);
    if (fs.existsSync(g)) left.push(g);
  }
  left.push(...findNames(d.stateDir, 'tetrix-restore'));
  return left;
}
