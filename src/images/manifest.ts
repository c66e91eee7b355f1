// What the registry's JSON may say, checked before anything is downloaded: OCI image-spec v1 and Docker
// v2 schema 2 manifests, indexes / manifest lists resolved to linux/amd64, and the image config.
import { DomainError } from '../errors';
import { MEDIA } from './registry';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface ImageManifest {
  config: Descriptor;
  layers: Descriptor[];
}

/** The parts of the image config Tetrix applies (image-spec config.md). */
export interface ImageConfig {
  env: string[];
  entrypoint: string[];
  cmd: string[];
  workingDir: string;
  user: string;
  diffIds: string[];
}

export const LAYER_MEDIA: Record<string, 'gzip' | 'zstd' | 'none'> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
};

const DIGEST = /^sha256:[a-f0-9]{64}$/;
export const MAX_LAYERS = 500;
const MAX_LAYER_BYTES = 64 * 2 ** 30;
export const MAX_CONFIG_BYTES = 8 << 20;
const PLATFORM = { os: 'linux', architecture: 'amd64' };

const dataLoss = (why: string): DomainError => new DomainError('DATA_LOSS', `image: ${why}`);

function parseJson(body: Buffer, what: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw dataLoss(`${what} is not a JSON object`);
}

function descriptor(v: unknown, what: string, maxSize: number): Descriptor {
  const d = v as Partial<Descriptor> | undefined;
  if (!d || typeof d.mediaType !== 'string' || typeof d.digest !== 'string' || !DIGEST.test(d.digest)) {
    throw dataLoss(`${what}: a descriptor needs a mediaType and a sha256 digest`);
  }
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0 || d.size > maxSize) {
    throw dataLoss(`${what} ${d.digest}: size ${String(d.size)} is not a size up to ${maxSize}`);
  }
  return { mediaType: d.mediaType, digest: d.digest, size: d.size };
}

export type ParsedManifest = { kind: 'index'; manifest: Descriptor } | { kind: 'image'; image: ImageManifest };

/** An index resolves to the linux/amd64 entry; an image manifest to its config and layers. */
export function parseManifest(body: Buffer, headerType: string): ParsedManifest {
  const json = parseJson(body, 'the manifest');
  const mediaType = typeof json.mediaType === 'string' ? json.mediaType : headerType;
  if (json.schemaVersion !== 2) throw dataLoss(`manifest schemaVersion ${String(json.schemaVersion)} is not 2 (schema 1 is not supported)`);
  if (mediaType === MEDIA.ociIndex || mediaType === MEDIA.dockerList || (mediaType === '' && Array.isArray(json.manifests))) {
    const list = Array.isArray(json.manifests) ? json.manifests : [];
    const match = list.find((m: { platform?: { os?: string; architecture?: string } }) => m?.platform?.os === PLATFORM.os && m.platform.architecture === PLATFORM.architecture);
    if (!match) throw new DomainError('NOT_FOUND', `image: the index has no ${PLATFORM.os}/${PLATFORM.architecture} manifest`);
    return { kind: 'index', manifest: descriptor(match, 'index entry', 4 << 20) };
  }
  if (mediaType !== MEDIA.ociManifest && mediaType !== MEDIA.dockerManifest && mediaType !== '') {
    throw dataLoss(`manifest media type ${JSON.stringify(mediaType.slice(0, 100))} is not supported`);
  }
  const config = descriptor(json.config, 'config', MAX_CONFIG_BYTES);
  if (config.mediaType !== MEDIA.ociConfig && config.mediaType !== MEDIA.dockerConfig) {
    throw dataLoss(`config media type ${JSON.stringify(config.mediaType.slice(0, 100))} is not an image config`);
  }
  if (!Array.isArray(json.layers) || json.layers.length > MAX_LAYERS) throw dataLoss(`a manifest lists 0..${MAX_LAYERS} layers`);
  const layers = json.layers.map((l, i) => {
    const d = descriptor(l, `layer ${i}`, MAX_LAYER_BYTES);
    if (!(d.mediaType in LAYER_MEDIA)) throw dataLoss(`layer ${i} ${d.digest}: media type ${JSON.stringify(d.mediaType.slice(0, 100))} is not supported`);
    return d;
  });
  return { kind: 'image', image: { config, layers } };
}

function strings(v: unknown, what: string): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string' && !s.includes('\0'))) throw dataLoss(`config ${what} is not a list of strings`);
  return v as string[];
}

export function parseImageConfig(body: Buffer, layerCount: number): ImageConfig {
  const json = parseJson(body, 'the image config');
  if (json.os !== undefined && json.os !== PLATFORM.os) throw new DomainError('FAILED_PRECONDITION', `image: built for ${String(json.os)}, not ${PLATFORM.os}`);
  const c = (json.config ?? {}) as Record<string, unknown>;
  const rootfs = (json.rootfs ?? {}) as { type?: unknown; diff_ids?: unknown };
  const diffIds = strings(rootfs.diff_ids, 'rootfs.diff_ids');
  if (rootfs.type !== 'layers' || diffIds.length !== layerCount || !diffIds.every((d) => DIGEST.test(d))) {
    throw dataLoss(`config rootfs.diff_ids must list one sha256 per layer (${layerCount})`);
  }
  const text = (v: unknown, what: string): string => {
    if (v === undefined || v === null) return '';
    if (typeof v !== 'string' || v.includes('\0') || v.length > 4096) throw dataLoss(`config ${what} is not a string`);
    return v;
  };
  return {
    env: strings(c.Env, 'Env'),
    entrypoint: strings(c.Entrypoint, 'Entrypoint'),
    cmd: strings(c.Cmd, 'Cmd'),
    workingDir: text(c.WorkingDir, 'WorkingDir'),
    user: text(c.User, 'User'),
    diffIds,
  };
}
