// The one loader of the C addon (native/): it loads the built .node once, checks that every part the TS
// side uses is there (each part's interface lives in its own file here), and hands it out typed.
// Nothing else in src/ loads the .node file.
import fs from 'node:fs';
import path from 'node:path';
import { NativeError } from './errors';
import type { NativePart } from './part';
import { aeadPart, type AeadNative } from './aead';
import { archivePart, type ArchiveWalkNative } from './archive';
import { channelPart, type ChannelNative } from './channel';
import { chunkerPart, type ChunkerNative } from './chunker';
import { execPart, type ExecNative } from './exec';
import { exitPart, type ExitNative } from './exit';
import { extractPart, type ExtractNative } from './extract';
import { fsopsPart, type FsOpsNative } from './fsops';
import { fscryptPart, type FscryptNative } from './fscrypt';
import { idmapPart, type IdmapNative } from './idmap';
import { loopPart, type LoopNative } from './loop';
import { mountPart, type MountNative } from './mount';
import { netPart, type NetNative } from './net';
import { notifyPart, type NotifyNative } from './notify';
import { outputPart, type OutputNative } from './output';
import { overlayPart, type OverlayNative } from './overlay';
import { seccompPart, type SeccompNative } from './seccomp';
import { spawnPart, type SpawnNative } from './spawn';
import { netnsListenPart, type NetnsListenNative } from './netns-listen';
import { treePackPart, type TreePackNative } from './tree-pack';

export { NativeError, isProgramFault } from './errors';
export type * from './aead';
export type * from './archive';
export type * from './channel';
export type * from './chunker';
export type * from './exec';
export type * from './exit';
export type * from './extract';
export type * from './fsops';
export type * from './fscrypt';
export type * from './idmap';
export type * from './loop';
export type * from './mount';
export type * from './net';
export type * from './notify';
export type * from './output';
export type * from './overlay';
export type * from './seccomp';
export type * from './spawn';
export type * from './netns-listen';
export type * from './tree-pack';

export type NativeAddon = SpawnNative & ExitNative & MountNative & NotifyNative & ChannelNative & OutputNative &
  NetNative & SeccompNative & IdmapNative & FsOpsNative & ArchiveWalkNative & ExtractNative & ExecNative & OverlayNative & LoopNative & FscryptNative & ChunkerNative & TreePackNative & NetnsListenNative & AeadNative & {
    constants: Record<string, number>;   // MS_*, MNT_*, signals, init's fds and exit codes, TAR_BLOCK, TREE_PACK_SLACK
  };

export const NATIVE_PARTS: Readonly<Record<string, NativePart<object>>> = {
  spawn: spawnPart, exit: exitPart, mount: mountPart, notify: notifyPart, channel: channelPart,
  output: outputPart, net: netPart, seccomp: seccompPart, idmap: idmapPart, fsops: fsopsPart,
  archive: archivePart, extract: extractPart, exec: execPart, overlay: overlayPart, loop: loopPart, fscrypt: fscryptPart, chunker: chunkerPart, treePack: treePackPart, netnsListen: netnsListenPart, aead: aeadPart,
};

/** The addon as NativeAddon, or an Error naming each part with what it lacks: a .node built from older
 *  sources fails here, at load, rather than at its first call. */
export function checkParts(addon: Record<string, unknown>, parts = NATIVE_PARTS): NativeAddon {
  const constants = (addon.constants ?? {}) as Record<string, unknown>;
  const missing: string[] = [];
  for (const [name, part] of Object.entries(parts)) {
    const lacks = [
      ...Object.keys(part.functions).filter((fn) => typeof addon[fn] !== 'function'),
      ...(part.constants ?? []).filter((c) => typeof constants[c] !== 'number').map((c) => `constants.${c}`),
    ];
    if (lacks.length > 0) missing.push(`${name} (${part.file}: ${lacks.join(', ')})`);
  }
  if (missing.length > 0) {
    throw new Error(`native addon lacks the part(s) ${missing.join('; ')}: rebuild with node-gyp rebuild -C native`);
  }
  return addon as unknown as NativeAddon;
}

// Built beside the sources: dist/src/native -> ../../../native (compiled), src/native -> ../../native (tests).
function builtFile(name: string): string {
  const compiled = path.join(__dirname, '..', '..', '..', 'native', 'build', 'Release', name);
  return fs.existsSync(compiled) ? compiled : path.join(__dirname, '..', '..', 'native', 'build', 'Release', name);
}

function loadAddon(): NativeAddon {
  // No catch-and-retry: a dlopen failure (say, an undefined symbol) must surface as itself.
  const mod = require(builtFile('tetrix.node')) as { init(errorClass: typeof NativeError): Record<string, unknown> };
  return checkParts(mod.init(NativeError));
}

export const native: NativeAddon = loadAddon();

/** Host path of the static init built beside the addon. */
export const initBinaryPath: string = builtFile('tetrix-init');

// Views of the one addon as a single part, for the modules that use only that part.
export const fsops: FsOpsNative = native;
export const archiveWalk: ArchiveWalkNative = native;
/** The tar block size native/archive.c and native/extract.c write and read (tetrix.h's TAR_BLOCK). */
export const TAR_BLOCK: number = native.constants.TAR_BLOCK!;
export const extract: ExtractNative = native;
export const netNative: NetNative = native;
export const seccompNative: SeccompNative = native;
export const loopNative: LoopNative = native;
export const fscryptNative: FscryptNative = native;
export const chunker: ChunkerNative = native;
export const treePack: TreePackNative = native;
/** The most a packed tree literal exceeds its plain bytes by (native/tree-pack.c). */
export const TREE_PACK_SLACK: number = native.constants.TREE_PACK_SLACK!;
export const aeadNative: AeadNative = native;
