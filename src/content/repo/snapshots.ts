// Snapshot backups: incremental, deduplicated, encrypted (docs/backup-format.md, "Repository format").
// A snapshot is one object, `snap-<id>`: its facts in the clear (the binding the access rule decides on,
// sizes, time) and its tree stream's chunk ids sealed under the repository key with every clear fact as
// associated data, so a changed fact does not open. It is written after every pack and pack index it
// needs, so a snapshot is listed only once complete. The API matches BackupStore (the full format).
import crypto from 'node:crypto';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { DomainError, ErrorCode } from '../../errors';
import type { KeyRing } from '../../crypto/keys';
import { GCM_NONCE_BYTES, GCM_TAG_BYTES } from '../../crypto/aead';
import { aeadNative } from '../../native';
import type { ArchiveRoot } from '../archive-roots';
import { streamSink, type RunnerMessage } from '../archive-runner';
import {
  canonicalJson, makeStagingDir, ProgressReporter, swapIntoPlace,
  type AuthorizeBackup, type BackupBinding, type BackupLog, type BackupOptions, type BackupResult, type RestoreOptions, type SourceDirs,
} from '../backups';
import { forkRunner, runRestore } from '../runner-client';
import type { ObjectStorage } from '../storage';
import { openRepoKeys, readSmallObject, repoKeyId, rewrapRepoKey } from './repo-keys';
import { RepoLock } from './repo-lock';
import { readAhead } from '../../promises';
import { chunkAad, openWith, PACK_TARGET, repoCrashPoint, repoName, Repository, sealWith, shortId, type PackEntry } from './repository';
import { FRAME_HEADER, inlineChunkOutput } from './chunk-frames';
import { jobParent, snapshotWalk, type ParentMessage, type SnapshotJob, type SnapshotMessage, type SnapshotWalkResult } from './snapshot-runner';
import { ID_BYTES, REC_CHUNK, REC_FILE, REC_IDENTITY, REC_LITERAL, TreeReader, type TreeRecord } from './tree-stream';

export const SNAPSHOT_FORMAT = 'tetrix-snapshot';
const SNAPSHOT_PREFIX = 'snap-';
const RUNNER = path.join(__dirname, 'snapshot-runner' + path.extname(__filename));
const RESTORE_AHEAD_BYTES = 8 << 20;
const TREE_READS_AHEAD = 8;     // tree chunks (<= 256 KiB each) in flight while records are read
const MAX_NAMED_FILES = 20;
/** A pack's buffer: the largest sealed chunk (4 MiB of data, its encoding byte, nonce and tag); a chunk that
 *  does not fit in what is left of it ends the pack first. */
const PACK_BUFFER = Math.max(PACK_TARGET, 4 << 20) + 64;
const MAX_FRAME_PAYLOAD = (4 << 20) + 64;
const PACKS_IN_FLIGHT = 2;

export interface SnapshotInfo {
  backupId: string;
  createdAt: string;
  repo: string;
  roots: string[];
  files: number;
  bytes: number;        // logical: file bytes in the snapshot
  storedBytes: number;  // new bytes this snapshot added to storage (sealed chunks, pack indexes, itself)
  newChunks: number;
  binding: BackupBinding;
}

/** The clear part of `snap-<id>` (JSON); `tree` is sealed. */
interface SnapshotObject {
  format: typeof SNAPSHOT_FORMAT;
  version: 1 | 2;   // 2: the tree's literals are packed (tree-stream.ts, record 0x05)
  snapshotId: string;
  repo: string;
  createdAt: string;
  roots: string[];
  files: number;
  bytes: number;
  storedBytes: number;
  newChunks: number;
  workspaceId: string;
  ownerId: string;
  teamId: string;
  kind: 'REGULAR' | 'PREBUILD';
  tree: string;  // base64 of the sealed tree chunk ids
}

/** Whose repository a backup goes to: the owner's, or for a prebuild its team's (every member may restore it). */
export function scopeOf(b: BackupBinding): string {
  return b.kind === 'PREBUILD' && b.teamId !== '' ? `team:${b.teamId}` : `owner:${b.ownerId}`;
}

export function isSnapshotId(id: string): boolean {
  return /^sn-\d{8}T\d{6}Z-[0-9a-f]{12}$/.test(id);
}

function newSnapshotId(): string {
  const t = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `sn-${t}-${crypto.randomBytes(6).toString('hex')}`;
}

function checkSnapshotId(id: string): void {
  if (!isSnapshotId(id)) throw new DomainError('INVALID_ARGUMENT', `backup_id: ${JSON.stringify(id)} is not a snapshot id`);
}

/** A workspace's previous snapshot, to reuse the chunks of its unchanged files. */
interface ParentSnapshot {
  backupId: string;
  tree: Buffer[];    // its tree chunks' ids
  totals: { bytes: number; files: number };
}

/** What a backup's walk starts from: the runner's job, and the parent whose tree follows it. */
interface WalkJob {
  repo: Repository;
  parent: ParentSnapshot | undefined;
  job: SnapshotJob;
}

export interface GcResult {
  repo: string;
  packsDeleted: number;
  packsRepacked: number;
  bytesFreed: number;
  liveChunks: number;
}

export interface CheckResult {
  snapshots: number;
  chunks: number;
  errors: string[];
}

export class SnapshotStore {
  readonly #storage: ObjectStorage;
  readonly #keyring: KeyRing;
  readonly #log: BackupLog;
  readonly #inProcess: boolean;
  readonly #repos = new Map<string, Promise<Repository>>();
  readonly #locks = new Map<string, RepoLock>();
  /** Repository key ids of backups under way (a key in use before any object names it). */
  readonly #active = new Map<string, string>();
  /** For tests of the prune race: called once a backup holds its repository and read its index. */
  onBackupHoldsRepo?: () => Promise<void> | void;

  constructor(opts: { storage: ObjectStorage; keyring: KeyRing; log: BackupLog; inProcess?: boolean }) {
    this.#storage = opts.storage;
    this.#keyring = opts.keyring;
    this.#log = opts.log;
    this.#inProcess = opts.inProcess ?? false;
  }

  lock(repo: string): RepoLock {
    let l = this.#locks.get(repo);
    if (!l) this.#locks.set(repo, (l = new RepoLock()));
    return l;
  }

  async #repo(scope: string): Promise<Repository> {
    const name = repoName(scope);
    let p = this.#repos.get(name);
    if (!p) {
      p = openRepoKeys(this.#storage, this.#keyring, name, scope).then(({ keys, keyId }) => new Repository(this.#storage, name, scope, keys, keyId));
      this.#repos.set(name, p);
      p.catch(() => this.#repos.delete(name));
    }
    return p;
  }

  // -------------------------------------------------------------------------------------------------
  // Backup

  async backup(sources: SourceDirs, opts: BackupOptions): Promise<BackupResult> {
    const roots: ArchiveRoot[] = [{ name: 'content', dir: sources.content }];
    if (sources.upper) roots.push({ name: 'upper', dir: sources.upper });
    const snapshotId = newSnapshotId();
    const repo = await this.#repo(scopeOf(opts.binding));
    this.#active.set(snapshotId, repo.keyId);
    const release = await this.lock(repo.name).shared();
    try {
      const progress = new ProgressReporter(0, 0, opts.onProgress);
      // The runner boots (~0.1-0.2 s of Node start-up) while the index is read.
      const job = (async (): Promise<WalkJob> => {
        await repo.refreshIndex();
        await this.onBackupHoldsRepo?.();
        const parent = await this.#parentOf(repo, opts.binding);
        return {
          repo, parent,
          job: {
            op: 'snapshot', roots, uidBase: opts.uidBase, idCount: opts.idCount, changes: opts.live ? 'skip' : 'fail',
            gear: repo.keys.gear, idKey: repo.keys.id, known: repo.knownIds(), ...(parent ? { parent: { totals: parent.totals } } : {}),
          },
        };
      })();
      const run = this.#startWalk(job, {
        onTotals: (bytes, files) => progress.setTotals(bytes, files),
        onProgress: (bytes, files) => progress.add(bytes, files),
        onSkip: (rel, why) => this.#log.warn({ backupId: snapshotId, path: rel, why }, 'backup: entry left out'),
        signal: opts.signal,
      });
      const packer = new Packer(repo);
      const ingest = ingestFrames(run.output, packer).catch((err) => { run.kill(); throw err; });
      const [walked] = await Promise.all([run.done, ingest]).catch((err) => {
        run.kill();
        throw opts.signal?.aborted ? new DomainError('ABORTED', `backup ${snapshotId} cancelled`, { cause: err }) : err;
      });
      await packer.finish();
      progress.flush();
      const snap = await this.#writeSnapshot(repo, snapshotId, roots, walked, packer.storedBytes, opts.binding);
      this.#log.info({ backupId: snapshotId, repo: repo.name, stored: snap.storedBytes, newChunks: walked.newChunks, files: walked.files, reusedFiles: walked.reusedFiles, workspace: opts.binding.workspaceId }, 'snapshot stored');
      return { backupId: snapshotId, size: snap.storedBytes, sha256: snap.sha256, keyId: repo.keyId };
    } finally {
      release();
      this.#active.delete(snapshotId);
    }
  }

  /**
   * The workspace's latest snapshot in this repository, verified: the walk reuses the chunks of a file whose
   * identity is unchanged since (restic's parent snapshot) and reads only the rest. Undefined when there is
   * none or it does not verify (the backup then reads every file).
   */
  async #parentOf(repo: Repository, b: BackupBinding): Promise<ParentSnapshot | undefined> {
    const candidates = (await this.list()).filter((s) => s.repo === repo.name && s.binding.workspaceId === b.workspaceId && s.binding.ownerId === b.ownerId);
    const latest = candidates.at(-1);
    if (!latest) return undefined;
    try {
      const { tree } = await this.#verify(parseSnapshot(await this.#readObject(latest.backupId), latest.backupId));
      return { backupId: latest.backupId, tree, totals: { bytes: latest.bytes, files: latest.files } };
    } catch (err) {
      this.#log.warn({ backupId: latest.backupId, err: (err as Error).message }, 'parent snapshot unreadable: every file is read');
      return undefined;
    }
  }

  /** The parent's tree stream to the walk, chunk by chunk, while it runs (parent-feed.ts). */
  async #feedParent(repo: Repository, parent: ParentSnapshot, send: (m: ParentMessage) => Promise<boolean>): Promise<void> {
    try {
      const plains = readAhead(parent.tree, TREE_READS_AHEAD, (id) => repo.readChunk(id, { neighbours: false }));
      for await (const bytes of plains) if (!(await send({ type: 'parent-tree', bytes }))) return;
    } catch (err) {
      this.#log.warn({ backupId: parent.backupId, err: (err as Error).message }, 'parent snapshot unreadable: the files after the damage are read');
    }
    await send({ type: 'parent-end' });
  }

  #startWalk(prepared: Promise<WalkJob>, hooks: { onTotals(b: number, f: number): void; onProgress(b: number, f: number): void; onSkip(p: string, w: string): void; signal?: AbortSignal }): { output: Readable; done: Promise<SnapshotWalkResult>; kill(): void } {
    const dispatch = (m: SnapshotMessage): void => {
      if (m.type === 'progress') hooks.onProgress(m.bytes, m.files);
      else if (m.type === 'totals') hooks.onTotals(m.bytes, m.files);
      else if (m.type === 'skip') hooks.onSkip(m.path, m.why);
    };
    if (this.#inProcess) {
      const out = new PassThrough({ highWaterMark: 4 << 20 });
      const done = prepared.then(({ repo, parent, job }) => {
        const from = jobParent(job);
        if (parent) void this.#feedParent(repo, parent, async (m) => (m.type === 'parent-end' ? from.parent.end() : from.parent.push(m.bytes as Buffer), true));
        return snapshotWalk(inlineChunkOutput(streamSink(out)), job, from, dispatch);
      }).catch((err) => {
        out.destroy();
        throw err;
      });
      done.catch(() => undefined);
      return { output: out, done, kill: () => out.destroy(new DomainError('ABORTED', 'cancelled')) };
    }
    const { child, stream: output } = forkRunner(RUNNER, 'out');
    let jobFailed: unknown;
    const done = new Promise<SnapshotWalkResult>((resolve, reject) => {
      let last: SnapshotMessage | undefined;
      child.on('message', (m: SnapshotMessage) => {
        if (m.type === 'snapshot-done' || m.type === 'error') last = m;
        else dispatch(m);
      });
      child.on('error', (err) => { if (child.pid === undefined) reject(err); });
      child.on('exit', (code, signal) => {
        if (last?.type === 'snapshot-done') return resolve({ ...last.result, tree: Buffer.from(last.result.tree) });
        if (jobFailed !== undefined) return reject(jobFailed);
        if (hooks.signal?.aborted) return reject(new DomainError('ABORTED', 'cancelled'));
        if (last?.type === 'error') return reject(new DomainError((last.code ?? 'INTERNAL') as ErrorCode, last.message));
        reject(new DomainError('INTERNAL', `snapshot runner ended without a result (code ${code}, signal ${signal})`));
      });
    });
    done.catch(() => undefined);
    const onAbort = (): void => void child.kill('SIGKILL');
    hooks.signal?.addEventListener('abort', onAbort, { once: true });
    child.once('exit', () => hooks.signal?.removeEventListener('abort', onAbort));
    const send = (m: SnapshotJob | ParentMessage): Promise<boolean> => new Promise((resolve) => {
      if (!child.connected) return resolve(false);
      child.send(m, (err) => resolve(!err));
    });
    prepared.then(async ({ repo, parent, job }) => {
      if (await send(job) && parent) await this.#feedParent(repo, parent, send);
    }, (err: unknown) => {
      jobFailed = err;
      onAbort();
    });
    return { output, done, kill: onAbort };
  }

  async #writeSnapshot(repo: Repository, snapshotId: string, roots: ArchiveRoot[], walked: SnapshotWalkResult, packBytes: number, b: BackupBinding): Promise<{ storedBytes: number; sha256: string }> {
    const clear: Omit<SnapshotObject, 'tree'> = {
      format: SNAPSHOT_FORMAT, version: 2, snapshotId, repo: repo.name, createdAt: new Date().toISOString(),
      roots: roots.map((r) => r.name), files: walked.files, bytes: walked.bytes, storedBytes: 0, newChunks: walked.newChunks,
      workspaceId: b.workspaceId, ownerId: b.ownerId, teamId: b.teamId, kind: b.kind,
    };
    // The object's own size counts too: estimated with the sealed tree, which does not depend on it.
    const treeSealedLen = walked.tree.length + 28;
    const probe = JSON.stringify({ ...clear, storedBytes: packBytes + 10 ** 12, tree: 'x'.repeat(Math.ceil(treeSealedLen / 3) * 4) }).length + 1;
    clear.storedBytes = packBytes + probe;
    const tree = sealWith(repo.keys.seal, walked.tree, snapshotAad(clear)).toString('base64');
    const body = Buffer.from(JSON.stringify({ ...clear, tree }) + '\n');
    repoCrashPoint('before-snapshot');
    const put = await this.#storage.put(SNAPSHOT_PREFIX + snapshotId, Readable.from([body]));
    return { storedBytes: clear.storedBytes, sha256: put.sha256 };
  }

  // -------------------------------------------------------------------------------------------------
  // Reading

  async #readObject(snapshotId: string): Promise<Buffer> {
    checkSnapshotId(snapshotId);
    try {
      return await readSmallObject(this.#storage, SNAPSHOT_PREFIX + snapshotId, 16 << 20);
    } catch (err) {
      if (err instanceof DomainError && err.code === 'NOT_FOUND') throw new DomainError('NOT_FOUND', `backup ${snapshotId} not found`);
      throw err;
    }
  }

  /** The verified snapshot: its repository and its tree's chunk ids. DATA_LOSS when anything was changed. */
  async #verify(s: SnapshotObject): Promise<{ repo: Repository; tree: Buffer[] }> {
    const binding = bindingOf(s);
    const scope = scopeOf(binding);
    // A snapshot names its owner twice: in its binding and by the repository whose key seals it.
    if (repoName(scope) !== s.repo) throw new DomainError('DATA_LOSS', `backup ${s.snapshotId}: its binding does not match its repository`);
    const repo = await this.#repo(scope);
    const { tree, ...clear } = s;
    const plain = openWith(repo.keys.seal, Buffer.from(tree, 'base64'), snapshotAad(clear));
    if (!plain || plain.length % ID_BYTES !== 0) throw new DomainError('DATA_LOSS', `backup ${s.snapshotId}: snapshot does not authenticate`);
    const ids: Buffer[] = [];
    for (let off = 0; off < plain.length; off += ID_BYTES) ids.push(Buffer.from(plain.subarray(off, off + ID_BYTES)));
    return { repo, tree: ids };
  }

  async open(snapshotId: string, authorize: AuthorizeBackup): Promise<{ roots: string[]; binding: BackupBinding | undefined; bytes: number; files: number }> {
    checkSnapshotId(snapshotId);
    let raw: Buffer;
    try {
      raw = await this.#readObject(snapshotId);
    } catch (err) {
      authorize(undefined);
      throw err;
    }
    let s: SnapshotObject;
    try {
      s = parseSnapshot(raw, snapshotId);
    } catch (err) {
      authorize(claimedBinding(raw));
      throw err;
    }
    authorize(bindingOf(s));
    await this.#verify(s);
    // bytes and files: what a restore must fit into the workspace's volume (src/storage checkFits).
    return { roots: s.roots, binding: bindingOf(s), bytes: s.bytes, files: s.files };
  }

  async restore(snapshotId: string, target: string | SourceDirs, opts: RestoreOptions): Promise<void> {
    const targets: SourceDirs = typeof target === 'string' ? { content: target } : target;
    const s = parseSnapshot(await this.#readObject(snapshotId), snapshotId);
    const { repo, tree } = await this.#verify(s);
    if (opts.expectBinding !== undefined && !sameBinding(bindingOf(s), opts.expectBinding)) {
      throw new DomainError('DATA_LOSS', `backup ${snapshotId}: snapshot changed since the restore was authorized`);
    }
    if (targets.upper && !s.roots.includes('upper')) throw new DomainError('FAILED_PRECONDITION', `backup ${snapshotId} does not include the upper layer`);
    const release = await this.lock(repo.name).shared();
    const staged = new Map<string, { target: string; staging: string }>();
    try {
      await repo.refreshIndex();
      for (const [root, dir] of Object.entries(targets) as [string, string | undefined][]) {
        if (dir) staged.set(root, { target: path.resolve(dir), staging: await makeStagingDir(path.resolve(dir)) });
      }
      const extractRoots: Record<string, string | null> = {};
      for (const root of s.roots) extractRoots[root] = staged.get(root)?.staging ?? null;
      const progress = new ProgressReporter(s.bytes, s.files, opts.onProgress);
      const tar = Readable.from(this.#plainTar(repo, snapshotId, tree), { objectMode: false, highWaterMark: 1 << 20 });
      await runRestore({ op: 'restore', roots: extractRoots, uidBase: opts.uidBase, idCount: opts.idCount, plain: true }, tar, {
        onProgress: (bytes, files) => progress.add(bytes, files), signal: opts.signal, inProcess: this.#inProcess,
      }).catch((err) => {
        throw opts.signal?.aborted ? new DomainError('ABORTED', `restore of ${snapshotId} cancelled`, { cause: err }) : err;
      });
      progress.flush();
      for (const { target: t, staging } of staged.values()) await swapIntoPlace(staging, t);
      staged.clear();
      this.#log.info({ backupId: snapshotId, files: s.files }, 'snapshot restored');
    } finally {
      repo.dropReadCache();
      release();
      for (const { staging } of staged.values()) await import('node:fs').then((fs) => fs.promises.rm(staging, { recursive: true, force: true }));
    }
  }

  /**
   * The tree stream's records, one batch per tree chunk: an await per record (hundreds of thousands in a
   * large tree) cost about a second of a 44k-file incremental backup; one per chunk costs nothing.
   */
  async *#recordBatches(repo: Repository, tree: Buffer[], literals = true): AsyncGenerator<TreeRecord[]> {
    const reader = new TreeReader({ literals });
    for await (const plain of readAhead(tree, TREE_READS_AHEAD, (id) => repo.readChunk(id, { neighbours: false }))) yield [...reader.feed(plain)];
    reader.end();
  }

  /** The snapshot's tar, rebuilt: literal bytes and file chunks, read ahead up to RESTORE_AHEAD_BYTES. */
  async *#plainTar(repo: Repository, snapshotId: string, tree: Buffer[]): AsyncGenerator<Buffer> {
    const ahead: { bytes: Promise<Buffer>; length: number }[] = [];
    let aheadBytes = 0;
    const take = async (): Promise<Buffer> => {
      const next = ahead.shift()!;
      aheadBytes -= next.length;
      return next.bytes;
    };
    let current = '';
    try {
      for await (const batch of this.#recordBatches(repo, tree)) for (const rec of batch) {
        if (rec.type === REC_FILE) current = rec.path;
        else if (rec.type === REC_LITERAL) ahead.push({ bytes: Promise.resolve(Buffer.from(rec.bytes)), length: 0 });
        else if (rec.type === REC_CHUNK) {
          const { id, length } = rec;
          const file = current;
          const bytes = repo.readChunk(id).then((b) => {
            if (b.length !== length) throw new DomainError('DATA_LOSS', `chunk ${shortId(id)}: ${b.length} bytes, the tree says ${length}`);
            return b;
          }).catch(async (err) => { throw await this.#damaged(repo, snapshotId, tree, id, file, err); });
          bytes.catch(() => undefined);
          ahead.push({ bytes, length });
          aheadBytes += length;
        }
        while (aheadBytes > RESTORE_AHEAD_BYTES || ahead.length > 4096) yield await take();
      }
      while (ahead.length) yield await take();
    } catch (err) {
      if (err instanceof DomainError && err.code === 'DATA_LOSS' && !err.message.startsWith(`backup ${snapshotId}`)) {
        throw new DomainError('DATA_LOSS', `backup ${snapshotId}: its tree is damaged (${err.message}); nothing was restored`);
      }
      throw err;
    }
  }

  /** DATA_LOSS naming every file of the snapshot that needs the bad chunk. */
  async #damaged(repo: Repository, snapshotId: string, tree: Buffer[], id: Buffer, file: string, cause: unknown): Promise<Error> {
    if (!(cause instanceof DomainError) || cause.code !== 'DATA_LOSS') return cause as Error;
    let files = [file];
    try {
      files = await this.#filesNeeding(repo, tree, new Set([id.toString('latin1')]));
    } catch { /* the tree read once; name the file we know */ }
    return new DomainError('DATA_LOSS', `backup ${snapshotId}: ${cause.message}; affected files: ${nameFiles(files)}; nothing was restored`);
  }

  async #filesNeeding(repo: Repository, tree: Buffer[], bad: Set<string>): Promise<string[]> {
    const files: string[] = [];
    let current = '';
    for await (const batch of this.#recordBatches(repo, tree, false)) for (const rec of batch) {
      if (rec.type === REC_FILE) current = rec.path;
      else if (rec.type === REC_CHUNK && bad.has(rec.id.toString('latin1')) && files[files.length - 1] !== current) files.push(current);
    }
    return files;
  }

  // -------------------------------------------------------------------------------------------------
  // Listing, deleting, keys

  /** Complete snapshots, oldest first (their clear facts, unverified: open() before acting on one). */
  async list(): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    for (const o of await this.#storage.list(SNAPSHOT_PREFIX)) {
      const id = o.name.slice(SNAPSHOT_PREFIX.length);
      if (!isSnapshotId(id)) continue;
      try {
        out.push(infoOf(parseSnapshot(await readSmallObject(this.#storage, o.name, 16 << 20), id)));
      } catch (err) {
        this.#log.warn({ object: o.name, err: (err as Error).message }, 'snapshot unreadable');
      }
    }
    return out.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0));
  }

  async get(snapshotId: string): Promise<SnapshotInfo> {
    return infoOf(parseSnapshot(await this.#readObject(snapshotId), snapshotId));
  }

  /** Forgets a snapshot; its chunks go at the next gc() unless another snapshot needs them. */
  async delete(snapshotId: string): Promise<void> {
    checkSnapshotId(snapshotId);
    await this.#storage.delete(SNAPSHOT_PREFIX + snapshotId);
  }

  async #repoNames(): Promise<string[]> {
    const names = new Set<string>();
    for (const o of await this.#storage.list('rp-')) {
      const m = /^rp-([0-9a-f]{24})\.key$/.exec(o.name);
      if (m) names.add(m[1]);
    }
    return [...names].sort();
  }

  async #scopeOf(repo: string): Promise<string> {
    const raw = JSON.parse((await readSmallObject(this.#storage, `rp-${repo}.key`, 1 << 16)).toString('utf8')) as { scope: string };
    return raw.scope;
  }

  async keyUsage(): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    const add = (k: string): void => void counts.set(k, (counts.get(k) ?? 0) + 1);
    for (const repo of await this.#repoNames()) {
      const k = await repoKeyId(this.#storage, repo);
      if (k) add(k);
    }
    for (const k of this.#active.values()) add(k);
    return counts;
  }

  /** Re-wraps every repository's master key under toKeyId. Chunks and snapshots are untouched. */
  async rewrap(toKeyId: string = this.#keyring.current().id): Promise<number> {
    if (!this.#keyring.has(toKeyId)) throw new DomainError('FAILED_PRECONDITION', `key ${toKeyId} is not in the keyring`);
    let n = 0;
    for (const repo of await this.#repoNames()) if (await rewrapRepoKey(this.#storage, this.#keyring, repo, toKeyId)) n++;
    this.#repos.clear();
    return n;
  }

  // -------------------------------------------------------------------------------------------------
  // Garbage collection and checking

  /**
   * Deletes the chunks no snapshot of the repository needs: packs with none left, and (repacked first) packs
   * mostly dead; and packs without an index (an interrupted backup's). Holds the repository exclusively.
   * Refuses (DATA_LOSS) when a snapshot of the repository does not verify: its chunks could not be told apart.
   */
  async gc(repoNameToCollect: string): Promise<GcResult> {
    const scope = await this.#scopeOf(repoNameToCollect);
    const repo = await this.#repo(scope);
    const release = await this.lock(repo.name).exclusive();
    try {
      await repo.refreshIndex();
      const live = new Set<string>();
      for (const s of await this.#snapshotsOf(repo.name)) {
        const { tree } = await this.#verify(s);
        for (const id of tree) live.add(id.toString('latin1'));
        for await (const batch of this.#recordBatches(repo, tree, false)) for (const rec of batch) if (rec.type === REC_CHUNK) live.add(rec.id.toString('latin1'));
      }
      const result: GcResult = { repo: repo.name, packsDeleted: 0, packsRepacked: 0, bytesFreed: 0, liveChunks: live.size };
      const packer = new Packer(repo);
      const retired: string[] = [];
      for (const [pack, entries] of [...repo.packs()]) {
        const alive = entries.filter((e) => live.has(idOf(e).toString('latin1')) && repo.index.get(idOf(e).toString('latin1'))?.pack === pack);
        const dead = entries.reduce((n, e) => n + e.length, 0) - alive.reduce((n, e) => n + e.length, 0);
        if (alive.length === entries.length || (alive.length > 0 && dead < PACK_TARGET / 2 && dead * 2 < entries.reduce((n, e) => n + e.length, 0))) continue;
        for (const e of alive) await packer.addSealed(idOf(e), e.rawLength, await repo.readSealed(idOf(e)));
        if (alive.length) result.packsRepacked++;
        retired.push(pack);
        result.bytesFreed += dead;
      }
      // New packs (and indexes) before the old ones go: a crash in between leaves duplicates, never a gap.
      await packer.finish();
      repoCrashPoint('gc-repacked');
      await repo.deletePacks(retired);
      result.packsDeleted += retired.length;
      const indexed = new Set(repo.packs().keys());
      for (const o of await this.#storage.list(`rp-${repo.name}.pack-`)) {
        if (indexed.has(o.name)) continue;
        await this.#storage.delete(o.name);
        result.packsDeleted++;
        result.bytesFreed += o.size;
      }
      this.#log.info({ ...result }, 'repository collected');
      return result;
    } finally {
      repo.dropReadCache();
      release();
    }
  }

  async gcAll(): Promise<GcResult[]> {
    const out: GcResult[] = [];
    for (const repo of await this.#repoNames()) out.push(await this.gc(repo));
    return out;
  }

  async #snapshotsOf(repo: string): Promise<SnapshotObject[]> {
    const out: SnapshotObject[] = [];
    for (const o of await this.#storage.list(SNAPSHOT_PREFIX)) {
      const id = o.name.slice(SNAPSHOT_PREFIX.length);
      if (!isSnapshotId(id)) continue;
      const s = parseSnapshot(await readSmallObject(this.#storage, o.name, 16 << 20), id);
      if (s.repo === repo) out.push(s);
    }
    return out;
  }

  /**
   * Verifies repositories as `restic check --read-data` does: every snapshot opens, every chunk of every
   * pack reads, authenticates and matches its id, and every chunk a snapshot needs is there. Errors name
   * the snapshot and files a damaged chunk affects.
   */
  async check(): Promise<CheckResult> {
    const result: CheckResult = { snapshots: 0, chunks: 0, errors: [] };
    for (const name of await this.#repoNames()) {
      let repo: Repository;
      try {
        repo = await this.#repo(await this.#scopeOf(name));
      } catch (err) {
        result.errors.push(`repository ${name}: ${(err as Error).message}`);
        continue;
      }
      const release = await this.lock(name).shared();
      try {
        await repo.refreshIndex().catch((err) => result.errors.push(`repository ${name}: ${(err as Error).message}`));
        const bad = new Set<string>();
        for (const [, entries] of repo.packs()) {
          for (const e of entries) {
            result.chunks++;
            try {
              await repo.readChunk(idOf(e), { verifyId: true });
            } catch (err) {
              bad.add(idOf(e).toString('latin1'));
              result.errors.push(`repository ${name}: ${(err as Error).message}`);
            }
          }
        }
        for (const s of await this.#snapshotsOf(name).catch(() => [] as SnapshotObject[])) {
          result.snapshots++;
          try {
            const { tree } = await this.#verify(s);
            const missing = new Set<string>();
            for (const id of tree) if (!repo.index.has(id.toString('latin1'))) missing.add(id.toString('latin1'));
            const files: string[] = [];
            let current = '';
            for await (const batch of this.#recordBatches(repo, tree)) for (const rec of batch) {
              if (rec.type === REC_FILE) current = rec.path;
              else if (rec.type === REC_CHUNK) {
                const k = rec.id.toString('latin1');
                if (!repo.index.has(k) || bad.has(k)) {
                  if (files[files.length - 1] !== current) files.push(current);
                }
              }
            }
            if (files.length) result.errors.push(`backup ${s.snapshotId}: damaged or missing chunks; affected files: ${nameFiles(files)}`);
          } catch (err) {
            result.errors.push(`backup ${s.snapshotId}: ${(err as Error).message}`);
          }
        }
      } finally {
        repo.dropReadCache();
        release();
      }
    }
    return result;
  }
}

/**
 * Collects sealed chunks into packs of about PACK_TARGET bytes. Up to PACKS_IN_FLIGHT packs are written
 * while the next fills: the disk takes concurrent fsynced writes faster than one after the other (here
 * 200 MiB/s for one writer, 350 for two). The buffers take turns, so a backup's memory stays at
 * PACKS_IN_FLIGHT + 1 packs however large the tree.
 */
class Packer {
  readonly #repo: Repository;
  readonly #writing: { done: Promise<void>; buffer: Buffer }[] = [];
  readonly #encoding = Buffer.alloc(1);
  #buffer: Buffer = Buffer.allocUnsafeSlow(PACK_BUFFER);
  #size = 0;
  #entries: (PackEntry & { id: Buffer })[] = [];
  #name: string;
  storedBytes = 0;

  constructor(repo: Repository) {
    this.#repo = repo;
    this.#name = repo.newPackName();
  }

  /**
   * Seals a chunk's encoded plaintext (encoding byte, then bytes) straight into the pack buffer: nonce,
   * ciphertext, tag, as sealWith() writes them. No sealed copy per chunk is left for V8 to collect.
   */
  async add(id: Buffer, rawLength: number, encoding: number, payload: Buffer): Promise<void> {
    const length = GCM_NONCE_BYTES + 1 + payload.length + GCM_TAG_BYTES;
    if (this.#size + length > PACK_BUFFER) await this.#flush();
    const buf = this.#buffer;
    const nonce = buf.subarray(this.#size, this.#size + GCM_NONCE_BYTES);
    crypto.randomFillSync(nonce);
    this.#encoding[0] = encoding;
    aeadNative.gcmSealInto(this.#repo.keys.seal, nonce, chunkAad(this.#repo.name, id), [this.#encoding, payload], buf, this.#size + GCM_NONCE_BYTES);
    await this.#added(id, rawLength, length);
  }

  async addSealed(id: Buffer, rawLength: number, sealed: Buffer): Promise<void> {
    await this.#push(id, rawLength, [sealed]);
  }

  async #push(id: Buffer, rawLength: number, parts: Buffer[]): Promise<void> {
    const length = parts.reduce((n, p) => n + p.length, 0);
    if (this.#size + length > PACK_BUFFER) await this.#flush();
    const buf = this.#buffer;
    let at = this.#size;
    for (const p of parts) at += p.copy(buf, at);
    await this.#added(id, rawLength, length);
  }

  /**
   * The length bytes at #size are in the buffer: record the entry; a pack at its target is written. Callers
   * await only when a pack is full, so an add that needs no flush completes synchronously (GC's repack
   * relies on that order).
   */
  #added(id: Buffer, rawLength: number, length: number): Promise<void> | undefined {
    this.#entries.push({ id, pack: this.#name, offset: this.#size, length, rawLength });
    this.#size += length;
    return this.#size >= PACK_TARGET ? this.#flush() : undefined;
  }

  async #flush(): Promise<void> {
    if (this.#entries.length === 0) return;
    const [name, buffer, entries] = [this.#name, this.#buffer, this.#entries];
    this.storedBytes += this.#size + entries.length * (ID_BYTES + 12) + 28;
    const done = this.#repo.writePack(name, [buffer.subarray(0, this.#size)], entries);
    done.catch(() => undefined);
    this.#writing.push({ done, buffer });
    this.#entries = [];
    this.#size = 0;
    this.#name = this.#repo.newPackName();
    this.#buffer = await this.#nextBuffer();
  }

  /** A buffer to fill: a new one while fewer than PACKS_IN_FLIGHT + 1 exist (each write holds one), else
   *  the oldest write's once it is stored (its failure is the backup's). */
  async #nextBuffer(): Promise<Buffer> {
    if (this.#writing.length <= PACKS_IN_FLIGHT) return Buffer.allocUnsafeSlow(PACK_BUFFER);
    const oldest = this.#writing.shift()!;
    await oldest.done;
    return oldest.buffer;
  }

  async finish(): Promise<void> {
    await this.#flush();
    const writes = this.#writing.splice(0);
    await Promise.all(writes.map((w) => w.done));
  }
}

/** Parses the child's frames (snapshot-runner.ts) and packs each new chunk. */
async function ingestFrames(source: Readable, packer: Packer): Promise<void> {
  const head = Buffer.allocUnsafe(FRAME_HEADER);
  // One payload buffer for every frame: a chunk is sealed (copied) before the next frame is read.
  const frameBuffer = Buffer.allocUnsafeSlow(MAX_FRAME_PAYLOAD);
  let headFill = 0;
  let payload: Buffer | undefined;
  let payloadFill = 0;
  for await (const c of source) {
    const chunk = c as Buffer;
    let off = 0;
    while (off < chunk.length) {
      if (!payload) {
        const n = Math.min(FRAME_HEADER - headFill, chunk.length - off);
        chunk.copy(head, headFill, off, off + n);
        headFill += n;
        off += n;
        if (headFill < FRAME_HEADER) continue;
        if (head[0] !== 1) throw new DomainError('INTERNAL', 'snapshot runner: malformed frame');
        const len = head.readUInt32BE(1 + ID_BYTES + 5);
        if (len > MAX_FRAME_PAYLOAD) throw new DomainError('INTERNAL', 'snapshot runner: frame too large');
        payload = frameBuffer.subarray(0, len);
        payloadFill = 0;
      }
      const n = Math.min(payload.length - payloadFill, chunk.length - off);
      chunk.copy(payload, payloadFill, off, off + n);
      payloadFill += n;
      off += n;
      if (payloadFill === payload.length) {
        const id = Buffer.from(head.subarray(1, 1 + ID_BYTES));
        await packer.add(id, head.readUInt32BE(1 + ID_BYTES), head[1 + ID_BYTES + 4], payload);
        payload = undefined;
        headFill = 0;
      }
    }
  }
  if (payload || headFill) throw new DomainError('INTERNAL', 'snapshot runner: output ended inside a frame');
}

function idOf(e: PackEntry): Buffer {
  return (e as PackEntry & { id: Buffer }).id;
}

function nameFiles(files: string[]): string {
  const shown = files.slice(0, MAX_NAMED_FILES).map((f) => JSON.stringify(f)).join(', ');
  return files.length > MAX_NAMED_FILES ? `${shown} and ${files.length - MAX_NAMED_FILES} more` : shown || '(the tree itself)';
}

function snapshotAad(clear: Omit<SnapshotObject, 'tree'>): Buffer {
  return Buffer.from(`tetrix/repo-snapshot/v1\0${canonicalJson(clear)}`);
}

function parseSnapshot(raw: Buffer, snapshotId: string): SnapshotObject {
  let s: SnapshotObject;
  try {
    s = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new DomainError('DATA_LOSS', `backup ${snapshotId}: snapshot is not JSON`);
  }
  const str = (v: unknown, empty = false): boolean => typeof v === 'string' && v.length <= 256 && (empty || v.length > 0);
  const ok = s && typeof s === 'object' && s.format === SNAPSHOT_FORMAT && (s.version === 1 || s.version === 2) && s.snapshotId === snapshotId
    && /^[0-9a-f]{24}$/.test(s.repo) && typeof s.createdAt === 'string' && Array.isArray(s.roots) && s.roots.every((r) => r === 'content' || r === 'upper')
    && [s.files, s.bytes, s.storedBytes, s.newChunks].every(Number.isSafeInteger)
    && str(s.workspaceId) && str(s.ownerId) && str(s.teamId, true) && (s.kind === 'REGULAR' || s.kind === 'PREBUILD') && typeof s.tree === 'string';
  if (!ok) throw new DomainError('DATA_LOSS', `backup ${snapshotId}: snapshot is malformed or of an unknown version`);
  return s;
}

function claimedBinding(raw: Buffer): BackupBinding | undefined {
  try {
    const s = JSON.parse(raw.toString('utf8')) as SnapshotObject;
    if (typeof s?.workspaceId === 'string' && typeof s.ownerId === 'string' && typeof s.teamId === 'string' && (s.kind === 'REGULAR' || s.kind === 'PREBUILD')) return bindingOf(s);
  } catch { /* judged as unknown */ }
  return undefined;
}

function bindingOf(s: Pick<SnapshotObject, 'workspaceId' | 'ownerId' | 'teamId' | 'kind'>): BackupBinding {
  return { workspaceId: s.workspaceId, ownerId: s.ownerId, teamId: s.teamId, kind: s.kind };
}

function sameBinding(a: BackupBinding, b: BackupBinding | null): boolean {
  return !!b && a.workspaceId === b.workspaceId && a.ownerId === b.ownerId && a.teamId === b.teamId && a.kind === b.kind;
}

function infoOf(s: SnapshotObject): SnapshotInfo {
  return {
    backupId: s.snapshotId, createdAt: s.createdAt, repo: s.repo, roots: s.roots, files: s.files, bytes: s.bytes,
    storedBytes: s.storedBytes, newChunks: s.newChunks, binding: bindingOf(s),
  };
}

export type { RunnerMessage };
