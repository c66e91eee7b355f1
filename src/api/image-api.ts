// ImageService: pull, list and remove OCI images (src/images). Who may call what: auth.ts decideImageAccess.
import type { Logger } from 'pino';
import type { ImageServiceHandlers } from '../generated/tetrix/agent/v1/ImageService';
import type { ImageInfo } from '../generated/tetrix/agent/v1/ImageInfo';
import type { PullImageEvent } from '../generated/tetrix/agent/v1/PullImageEvent';
import { invalidArgument } from '../errors';
import type { OciImageStore, StoredImage } from '../images/store';
import type { AuditLog } from './audit';
import { authorizeImageAccess, authorizeImageRegistry, type Principal } from './auth';
import { looksLikeReference } from '../images/reference';
import { serverStream, unary } from './handlers';

function imageField(value: string): string {
  if (value === '') throw invalidArgument('image', 'is required');
  if (value.length > 512 || value.includes('\0')) throw invalidArgument('image', 'is not an image reference');
  return value;
}

export function imageInfo(img: StoredImage, inUse: number): ImageInfo {
  return {
    references: img.references, digest: img.digest, manifestDigest: img.manifestDigest, size: String(img.size),
    layers: img.chainIds.length, pulledMs: String(img.pulledMs), lastUsedMs: String(img.lastUsedMs), inUse,
  };
}

/** The --user-registries check for an image a caller names (PullImage, StartWorkspace). */
export function imageRegistryCheck(store: OciImageStore, userRegistries: readonly string[], audit: AuditLog): (principal: Principal | undefined, image: string) => void {
  return (principal, image) => {
    if (!looksLikeReference(image)) return;
    authorizeImageRegistry(principal, image, store.parse(image).registry, userRegistries, audit);
  };
}

export function imageHandlers(store: OciImageStore, inUse: () => Map<string, number>, audit: AuditLog, log: Logger, checkRegistry: (principal: Principal | undefined, image: string) => void = () => undefined): ImageServiceHandlers {
  return {
    PullImage: serverStream<{ image: string }, PullImageEvent>(log, 'PullImage', async (req, ctx, send) => {
      const image = imageField(req.image);
      authorizeImageAccess(ctx.principal, 'pull', image, audit);
      checkRegistry(ctx.principal, image); // and INVALID_ARGUMENT for a bad reference, before anything else
      const pending: Promise<void>[] = [];
      const stored = await store.pull(image, (p) => {
        pending.push(send({ layer: { index: p.index, digest: p.digest, bytesDone: String(p.bytesDone), bytesTotal: String(p.bytesTotal), cached: p.cached } }));
      });
      await Promise.all(pending);
      await send({ image: imageInfo(stored, inUse().get(stored.digest) ?? 0) });
    }),
    ListImages: unary(log, 'ListImages', async (_req, ctx) => {
      authorizeImageAccess(ctx.principal, 'list', '', audit);
      const used = inUse();
      return { images: (await store.list()).map((i) => imageInfo(i, used.get(i.digest) ?? 0)) };
    }),
    RemoveImage: unary<{ image: string }, { digest: string }>(log, 'RemoveImage', async (req, ctx) => {
      const image = imageField(req.image);
      authorizeImageAccess(ctx.principal, 'remove', image, audit);
      const removed = await store.remove(image);
      log.info({ image: removed.digest }, 'image removed');
      return { digest: removed.digest };
    }),
  };
}
