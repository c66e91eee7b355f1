// tetrixctl rmi IMAGE: removes an image the node holds (refused while a workspace uses it).
import { unaryCall, type Clients } from './client';
import type { RemoveImageResponse__Output } from '../generated/tetrix/agent/v1/RemoveImageResponse';

export async function rmi(c: Clients, image: string, json: boolean): Promise<number> {
  const res = await unaryCall<RemoveImageResponse__Output>((md, o, cb) => c.images.RemoveImage({ image }, md, o, cb));
  process.stdout.write(json ? `${JSON.stringify(res)}\n` : `removed ${res.digest}\n`);
  return 0;
}
