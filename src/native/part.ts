// What every part file declares beside its interface: the C file that registers it, and each function and
// constant the TS side calls, checked once when the addon loads (src/native/index.ts).
export interface NativePart<T> {
  /** The C file that registers the part. */
  file: string;
  /** Every function of T; the Record makes the compiler refuse a list that misses one. */
  functions: Record<keyof T & string, true>;
  /** Names in addon.constants the TS side relies on. */
  constants?: readonly string[];
}
