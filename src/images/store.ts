// The OCI image store under <stateDir>/oci (docs/images.md):
//   layers/<chain id hex>/fs/       one unpacked layer, keyed by its chain id as containerd's snapshotters key
//   layers/<chain id hex>/layer.json  diff id, blob digest, bytes on disk
//   images/<manifest hex>.json      one pulled image: references, config, its layers' chain ids
//   base/                           the mount points Tetrix provides whatever the image has
//   tmp/                            layers being unpacked (renamed into layers/ when complete)
// A layer directory exists only once it is complete: it is unpacked in tmp/ and renamed into place, so a
// kill -9 leaves at most a temp dir, which the next start removes. A layer shared by images is stored once.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { DomainError } from '../errors';
import { parseImageConfig, parseManifest, MAX_CONFIG_BYTES, type Descriptor, type ImageConfig } from './manifest';
import { formatReference, parseReference, type ImageReference } from './reference';
import { RegistryClient, type RegistryOptions } from './registry';
import { DigestCheck, unpackLayer } from './unpack';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';

export interface StoredImage {
  digest: string;          // what the registry names the reference by (the index's, for a multi-platform image)
  manifestDigest: string;  // the linux/amd64 image manifest's (the same as digest for a single-platform image)
  references: string[];    // full references that point here
  configDigest: string;
  chainIds: string[];      // bottom layer first
  config: ImageConfig;
  size: number;            // compressed bytes of its layers
  pulledMs: number;
  lastUsedMs: number;
}

export interface LayerProgress {
  index: number;
  digest: string;
  bytesDone: number;
  bytesTotal: number;
  cached: boolean;
}

export interface ResolvedOciImage {
  digest: string;
  lowerDirs: string[];     // host paths, top first (the base layer, then the image's layers top down)
  config: ImageConfig;
}

export interface OciImageStoreOptions {
  stateDir: string;
  defaultRegistry?: string;
  registry?: RegistryOptions;
  /** Manifest digest -> number of workspaces using it (RemoveImage and the GC never take one in use). */
  inUse?: () => Map<string, number>;
}

interface LayerMeta {
  chainId: string;
  diffId: string;
  blob: string;
  mediaType: string;
  bytes: number;
  implicitDirs?: string[];
  parentsFixed?: boolean;
}

const LAYERS_AT_ONCE = 3;
const LAST_USED_GRANULARITY_MS = 60_000;
// The GC leaves an image alone this long after a start resolved it: the workspace record naming it may not
// be written yet.
const RECENT_USE_MS = 5 * 60_000;
const HEX = /^[a-f0-9]{64}$/;

/** containerd's chain id: chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)). */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    out.push(out.length === 0 ? d : `sha256:${crypto.createHash('sha256').update(`${out[out.length - 1]} ${d}`).digest('hex')}`);
  }
  return out;
}

const hexOf = (digest: string): string => digest.slice('sha256:'.length);

export class OciImageStore {
  readonly root: string;
  private readonly client: RegistryClient;
  private readonly layerFlights = new Map<string, Promise<void>>();
  private readonly pullFlights = new Map<string, Promise<StoredImage>>();
  private readonly pinned = new Map<string, number>(); // chain ids a pull in progress will reference
  private readonly readyLayers = new Set<string>();     // chain ids seen unpacked and fixed up
  private refs: Record<string, string> | undefined;     // reference -> manifest digest

  constructor(private readonly opts: OciImageStoreOptions) {
    this.root = path.join(opts.stateDir, 'oci');
    this.client = new RegistryClient(opts.registry ?? {});
  }

  /** Creates the directories and the base layer; removes what a killed daemon left in tmp/. */
  async open(): Promise<void> {
    for (const d of ['', 'layers', 'images', 'tmp']) await fsp.mkdir(path.join(this.root, d), { recursive: true, mode: 0o700 });
    await fsp.rm(path.join(this.root, 'tmp'), { recursive: true, force: true });
    await fsp.mkdir(path.join(this.root, 'tmp'), { mode: 0o700 });
    await this.ensureBase();
  }

  parse(image: string, field = 'image'): ImageReference {
    return parseReference(image, { field, ...(this.opts.defaultRegistry ? { defaultRegistry: this.opts.defaultRegistry } : {}) });
  }

  /** Pulls (or refreshes) an image; concurrent pulls of one reference share one. */
  pull(image: string, onProgress?: (p: LayerProgress) => void): Promise<StoredImage> {
    const ref = this.parse(image);
    const key = formatReference(ref);
    let flight = this.pullFlights.get(key);
    if (!flight) {
      flight = this.doPull(ref, onProgress).finally(() => this.pullFlights.delete(key));
      this.pullFlights.set(key, flight);
    }
    return flight;
  }

  /** For a start: the stored image (pulled now if missing), its layers' host dirs and its config. */
  async resolve(image: string): Promise<ResolvedOciImage> {
    const ref = this.parse(image);
    const stored = (await this.lookup(ref)) ?? (await this.pull(image));
    const missing = stored.chainIds.find((c) => !this.layerReady(c));
    const img = missing ? await this.pull(image) : stored;
    // The GC reads minutes, not milliseconds: a start writes the record at most once a minute.
    if (Date.now() - img.lastUsedMs > LAST_USED_GRANULARITY_MS) {
      img.lastUsedMs = Date.now();
      await this.writeImage(img);
    }
    const lowerDirs = [path.join(this.root, 'base'), ...[...img.chainIds].reverse().map((c) => this.layerFs(c))];
    return { digest: img.digest, lowerDirs, config: img.config };
  }

  async list(): Promise<StoredImage[]> {
    const dir = path.join(this.root, 'images');
    const out: StoredImage[] = [];
    for (const name of await fsp.readdir(dir)) {
      if (!/^[a-f0-9]{64}\.json$/.test(name)) continue;
      const img = await this.readImage(`sha256:${name.slice(0, 64)}`);
      if (img) out.push(img);
    }
    return out.sort((a, b) => a.digest.localeCompare(b.digest));
  }

  /** Removes an image by reference or digest; FAILED_PRECONDITION while a workspace uses it. Layers no
   *  other image uses go with it. */
  async remove(image: string): Promise<StoredImage> {
    const img = await this.find(image);
    if (!img) throw new DomainError('NOT_FOUND', `image: "${image}" is not in the store`);
    const users = this.opts.inUse?.().get(img.digest) ?? 0;
    if (users > 0) throw new DomainError('FAILED_PRECONDITION', `image: ${img.digest} is used by ${users} workspace(s)`);
    await this.dropImage(img);
    return img;
  }

  /** Removes images unused for maxAgeMs, then least recently used ones while the store is above maxBytes
   *  (0: no limit); never one in use or used in the last minutes. Returns the digests removed. */
  async collect(opts: { maxAgeMs: number; maxBytes: number }): Promise<string[]> {
    const now = Date.now();
    const used = this.opts.inUse?.() ?? new Map<string, number>();
    const removable = (await this.list()).filter((i) => !used.get(i.digest) && now - i.lastUsedMs > RECENT_USE_MS).sort((a, b) => a.lastUsedMs - b.lastUsedMs);
    const removed: string[] = [];
    for (const img of removable) {
      const old = opts.maxAgeMs > 0 && now - img.lastUsedMs > opts.maxAgeMs;
      const tooBig = opts.maxBytes > 0 && (await this.storeBytes()) > opts.maxBytes;
      if (!old && !tooBig) continue;
      await this.dropImage(img);
      removed.push(img.digest);
    }
    await this.dropUnreferencedLayers();
    return removed;
  }

  /** Bytes of file data in the unpacked layers (each layer's layer.json, written when it was unpacked). */
  async storeBytes(): Promise<number> {
    let total = 0;
    for (const name of await fsp.readdir(path.join(this.root, 'layers'))) {
      const meta = await readJson<{ bytes?: number }>(path.join(this.root, 'layers', name, 'layer.json'));
      total += meta?.bytes ?? 0;
    }
    return total;
  }

  // --- pulling -----------------------------------------------------------------------------------

  private async doPull(ref: ImageReference, onProgress?: (p: LayerProgress) => void): Promise<StoredImage> {
    let fetched = await this.client.manifest(ref);
    const topDigest = fetched.digest;
    let parsed = parseManifest(fetched.body, fetched.mediaType);
    if (parsed.kind === 'index') {
      const entry = parsed.manifest;
      fetched = await this.client.manifest(ref, entry.digest);
      if (fetched.body.length !== entry.size) throw new DomainError('DATA_LOSS', `image: manifest ${entry.digest} is ${fetched.body.length} bytes, the index says ${entry.size}`);
      parsed = parseManifest(fetched.body, fetched.mediaType);
      if (parsed.kind !== 'image') throw new DomainError('DATA_LOSS', 'image: an index points at another index');
    }
    const { config: configDesc, layers } = parsed.image;
    const config = parseImageConfig(await this.fetchConfig(ref, configDesc), layers.length);
    const chains = chainIds(config.diffIds);
    for (const c of chains) this.pinned.set(c, (this.pinned.get(c) ?? 0) + 1);
    try {
      await runLimited(layers.map((layer, i) => () => this.ensureLayer(ref, layer, config.diffIds[i], chains[i], i, onProgress)), LAYERS_AT_ONCE);
      await this.fixImplicitParents(chains);
      const previous = await this.readImage(topDigest);
      const image: StoredImage = {
        digest: topDigest,
        manifestDigest: fetched.digest,
        references: [...new Set([...(previous?.references ?? []), formatReference(ref)])],
        configDigest: configDesc.digest,
        chainIds: chains,
        config,
        size: layers.reduce((n, l) => n + l.size, 0),
        pulledMs: Date.now(),
        lastUsedMs: previous?.lastUsedMs ?? Date.now(),
      };
      await this.writeImage(image);
      await this.pointReference(formatReference(ref), image.digest);
      return image;
    } finally {
      for (const c of chains) {
        const n = (this.pinned.get(c) ?? 1) - 1;
        if (n > 0) this.pinned.set(c, n);
        else this.pinned.delete(c);
      }
    }
  }

  private async fetchConfig(ref: ImageReference, desc: Descriptor): Promise<Buffer> {
    if (desc.size > MAX_CONFIG_BYTES) throw new DomainError('DATA_LOSS', `image: config ${desc.digest} is larger than ${MAX_CONFIG_BYTES}`);
    const res = await this.client.blob(ref, desc.digest, desc.size);
    const chunks: Buffer[] = [];
    await pipeline(res, new DigestCheck(desc.digest, desc.size, 'config'), new Writable({ write: (c: Buffer, _e, done) => (chunks.push(c), done()) }));
    return Buffer.concat(chunks);
  }

  /** One download per chain id at a time, whoever asks (single-flight); none when it is stored already. */
  private ensureLayer(ref: ImageReference, layer: Descriptor, diffId: string, chain: string, index: number, onProgress?: (p: LayerProgress) => void): Promise<void> {
    const report = (bytesDone: number, cached: boolean) => onProgress?.({ index, digest: layer.digest, bytesDone, bytesTotal: layer.size, cached });
    if (fs.existsSync(path.join(this.root, 'layers', hexOf(chain)))) {
      report(layer.size, true);
      return Promise.resolve();
    }
    let flight = this.layerFlights.get(chain);
    if (!flight) {
      flight = this.fetchLayer(ref, layer, diffId, chain, report).finally(() => this.layerFlights.delete(chain));
      this.layerFlights.set(chain, flight);
    } else {
      void flight.then(() => report(layer.size, true), () => undefined);
    }
    return flight;
  }

  private async fetchLayer(ref: ImageReference, layer: Descriptor, diffId: string, chain: string, report: (done: number, cached: boolean) => void): Promise<void> {
    const temp = await fsp.mkdtemp(path.join(this.root, 'tmp', 'layer-'));
    try {
      const rootDir = path.join(temp, 'fs');
      await fsp.mkdir(rootDir, { mode: 0o755 });
      const body = await this.client.blob(ref, layer.digest, layer.size);
      let done = 0;
      let last = 0;
      report(0, false);
      const { bytes, implicitDirs } = await unpackLayer({ body, mediaType: layer.mediaType, digest: layer.digest, size: layer.size, diffId }, rootDir, (n) => {
        done += n;
        if (done - last >= 1 << 20 || done === layer.size) {
          last = done;
          report(done, false);
        }
      });
      const meta: LayerMeta = { chainId: chain, diffId, blob: layer.digest, mediaType: layer.mediaType, bytes, implicitDirs, parentsFixed: implicitDirs.length === 0 };
      await fsp.writeFile(path.join(temp, 'layer.json'), `${JSON.stringify(meta)}\n`, { mode: 0o600 });
      await renameIntoPlace(temp, path.join(this.root, 'layers', hexOf(chain)));
    } finally {
      await fsp.rm(temp, { recursive: true, force: true });
    }
  }

  /**
   * A layer's parents that no entry described ("home/app" for "home/app/.wh.cache") were made 0755 root;
   * as containerd's mkparent, each takes the owner, mode and times the same directory has in the nearest
   * layer below. Bottom up, once every layer is unpacked (they unpack in parallel); a layer is ready only
   * after this (layer.json parentsFixed), so a kill -9 in between is finished by the next pull.
   */
  private async fixImplicitParents(chains: string[]): Promise<void> {
    for (const [i, chain] of chains.entries()) {
      const metaFile = path.join(this.root, 'layers', hexOf(chain), 'layer.json');
      const meta = await readJson<LayerMeta>(metaFile);
      if (!meta || meta.parentsFixed !== false) continue;
      for (const rel of meta.implicitDirs ?? []) {
        for (let j = i - 1; j >= 0; j--) {
          const below = await lstatInside(this.layerFs(chains[j]), rel);
          if (!below) continue;
          if (below.isDirectory()) {
            const dir = path.join(this.layerFs(chain), rel);
            await fsp.lchown(dir, below.uid, below.gid);
            await fsp.chmod(dir, below.mode & 0o7777);
            await fsp.utimes(dir, below.atime, below.mtime);
          }
          break; // a whiteout or file below: the directory is new here, 0755 root is right
        }
      }
      await writeAtomically(metaFile, `${JSON.stringify({ ...meta, parentsFixed: true })}\n`);
    }
  }

  /** Unpacked and fixed up; remembered once seen, forgotten when the layer is removed. */
  private layerReady(chain: string): boolean {
    if (this.readyLayers.has(chain)) return true;
    const dir = path.join(this.root, 'layers', hexOf(chain));
    if (!fs.existsSync(path.join(dir, 'fs'))) return false;
    try {
      if ((JSON.parse(fs.readFileSync(path.join(dir, 'layer.json'), 'utf8')) as LayerMeta).parentsFixed === false) return false;
    } catch {
      return false;
    }
    this.readyLayers.add(chain);
    return true;
  }

  // --- records -----------------------------------------------------------------------------------

  private layerFs(chain: string): string {
    return path.join(this.root, 'layers', hexOf(chain), 'fs');
  }

  private async lookup(ref: ImageReference): Promise<StoredImage | undefined> {
    const refs = await this.loadRefs();
    const digest = refs[formatReference(ref)] ?? (ref.digest || undefined);
    return digest ? this.readImage(digest) : undefined;
  }

  private async find(image: string): Promise<StoredImage | undefined> {
    if (/^sha256:[a-f0-9]{64}$/.test(image)) return this.readImage(image);
    return this.lookup(this.parse(image));
  }

  private async readImage(digest: string): Promise<StoredImage | undefined> {
    if (!HEX.test(hexOf(digest))) return undefined;
    return readJson<StoredImage>(path.join(this.root, 'images', `${hexOf(digest)}.json`));
  }

  private async writeImage(img: StoredImage): Promise<void> {
    await writeAtomically(path.join(this.root, 'images', `${hexOf(img.digest)}.json`), `${JSON.stringify(img)}\n`);
  }

  private async loadRefs(): Promise<Record<string, string>> {
    this.refs ??= (await readJson<Record<string, string>>(path.join(this.root, 'refs.json'))) ?? {};
    return this.refs;
  }

  private async pointReference(reference: string, digest: string): Promise<void> {
    const refs = await this.loadRefs();
    const before = refs[reference];
    refs[reference] = digest;
    await writeAtomically(path.join(this.root, 'refs.json'), `${JSON.stringify(refs)}\n`);
    // A tag moved: the image it named no longer has this reference.
    if (before && before !== digest) {
      const old = await this.readImage(before);
      if (old) {
        old.references = old.references.filter((r) => r !== reference);
        await this.writeImage(old);
      }
    }
  }

  private async dropImage(img: StoredImage): Promise<void> {
    const refs = await this.loadRefs();
    for (const [r, d] of Object.entries(refs)) if (d === img.digest) delete refs[r];
    await writeAtomically(path.join(this.root, 'refs.json'), `${JSON.stringify(refs)}\n`);
    await fsp.rm(path.join(this.root, 'images', `${hexOf(img.digest)}.json`), { force: true });
    await this.dropUnreferencedLayers();
  }

  /** Layers no image lists and no pull is about to use: renamed out of layers/ first, so a half-deleted
   *  layer never looks complete. */
  private async dropUnreferencedLayers(): Promise<void> {
    const kept = new Set<string>([...this.pinned.keys()].map(hexOf));
    for (const img of await this.list()) for (const c of img.chainIds) kept.add(hexOf(c));
    for (const name of await fsp.readdir(path.join(this.root, 'layers'))) {
      if (kept.has(name) || this.layerFlights.has(`sha256:${name}`)) continue;
      this.readyLayers.delete(`sha256:${name}`);
      const trash = path.join(this.root, 'tmp', `gone-${name}-${crypto.randomBytes(4).toString('hex')}`);
      await fsp.rename(path.join(this.root, 'layers', name), trash);
      await fsp.rm(trash, { recursive: true, force: true });
    }
  }

  /** The mount points every workspace gets (runc creates them too): the top lower layer. */
  private async ensureBase(): Promise<void> {
    const base = path.join(this.root, 'base');
    if (fs.existsSync(base)) return;
    const temp = await fsp.mkdtemp(path.join(this.root, 'tmp', 'base-'));
    await fsp.chmod(temp, 0o755);
    for (const [dir, mode] of [['proc', 0o555], ['dev', 0o755], ['sys', 0o555], ['workspace', 0o755], ['tmp', 0o1777]] as const) {
      await fsp.mkdir(path.join(temp, dir));
      await fsp.chmod(path.join(temp, dir), mode);
    }
    await renameIntoPlace(temp, base);
  }
}

/** lstat of root/rel where every component but the last must be a real directory (never a symlink: a lower
 *  layer's `home -> /root` must not make us read the host's /root/...). undefined if not so. */
async function lstatInside(root: string, rel: string): Promise<fs.Stats | undefined> {
  let at = root;
  const parts = rel.split('/');
  for (const [i, part] of parts.entries()) {
    at = path.join(at, part);
    const st = await fsp.lstat(at).catch(() => undefined);
    if (!st || (i < parts.length - 1 && !st.isDirectory())) return undefined;
    if (i === parts.length - 1) return st;
  }
  return undefined;
}

async function renameIntoPlace(temp: string, target: string): Promise<void> {
  try {
    await fsp.rename(temp, target);
  } catch (err) {
    // Another pull (another daemon on the same store never happens: the state dir is locked) won.
    if ((err as NodeJS.ErrnoException).code !== 'ENOTEMPTY' && (err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

async function writeAtomically(file: string, content: string): Promise<void> {
  const temp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  await fsp.writeFile(temp, content, { mode: 0o600 });
  await fsp.rename(temp, file);
}

async function runLimited(tasks: Array<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  const worker = async (): Promise<void> => {
    while (next < tasks.length) {
      const task = tasks[next++];
      try {
        await task();
      } catch (err) {
        errors.push(err);
        next = tasks.length; // start nothing more
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  if (errors.length > 0) throw errors[0];
}
