// tetrixctl images: the OCI images the node holds.
import { unaryCall, type Clients } from './client';
import type { ListImagesResponse__Output } from '../generated/tetrix/agent/v1/ListImagesResponse';

export async function images(c: Clients, json: boolean, table: (rows: string[][]) => string): Promise<number> {
  const res = await unaryCall<ListImagesResponse__Output>((md, o, cb) => c.images.ListImages({}, md, o, cb));
  if (json) {
    for (const i of res.images) process.stdout.write(`${JSON.stringify(i)}\n`);
    return 0;
  }
  const rows = res.images.map((i) => [
    i.references.join(',') || '<none>', i.digest.slice(0, 19), `${(Number(i.size) / 1048576).toFixed(1)}MiB`, String(i.layers),
    new Date(Number(i.lastUsedMs)).toISOString(), String(i.inUse),
  ]);
  process.stdout.write(table([['REFERENCE', 'DIGEST', 'SIZE', 'LAYERS', 'LAST USED', 'IN USE'], ...rows]));
  return 0;
}
