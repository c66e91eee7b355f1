// native/tree-pack.c: the packed literal records of a snapshot's tree stream (zero runs as counts).
import type { NativePart } from './part';

export interface TreePackNative {
  /** Packs src[srcOff..srcOff+srcLen) into dst at dstOff, which must have room for srcLen +
   *  constants.TREE_PACK_SLACK; returns the packed length. */
  treePack(src: Buffer, srcOff: number, srcLen: number, dst: Buffer, dstOff: number): number;
  /** Unpacks src[off..off+len) into dst; false when it is malformed or does not fill dst exactly. */
  treeUnpack(src: Buffer, off: number, len: number, dst: Buffer): boolean;
}

export const treePackPart: NativePart<TreePackNative> = {
  file: 'native/tree-pack.c',
  functions: { treePack: true, treeUnpack: true },
  constants: ['TREE_PACK_SLACK'],
};
