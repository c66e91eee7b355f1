// native/chunker.c: FastCDC cut points for the repository format.
import type { NativePart } from './part';

export interface ChunkerNative {
  /** The first chunk of buf[0..len), scanning from `from` (earlier bytes had no boundary): its length, or
   *  -len when no boundary lies before len and len < max (append more data and ask again). Masks are the
   *  top bitsSmall bits before `normal` and the top bitsLarge bits after it. */
  chunkerCut(gear: Buffer, buf: Buffer, from: number, len: number, min: number, normal: number, max: number,
    bitsSmall: number, bitsLarge: number): number;
}

export const chunkerPart: NativePart<ChunkerNative> = {
  file: 'native/chunker.c',
  functions: { chunkerCut: true },
};
