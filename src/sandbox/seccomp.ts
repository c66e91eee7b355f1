// Seccomp profiles in Docker/moby's JSON format (profiles/seccomp/*.json), validated strictly and compiled
// once each, at daemon start, into the BPF program the workspace child installs before exec.
//
// The flow: read -> validate (every error names the file and the JSON path) -> select the rules that
// apply to this workspace's capabilities, arch and kernel (includes/excludes) -> compile with libseccomp
// in the addon (native/seccomp.c) -> cache the Buffer. A start request picks a profile by name.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { DomainError } from '../errors';
import { DEFAULT_CAPABILITIES, isCapabilityName } from './capabilities';
import { NativeError, seccompNative as addon, type CompileArg, type CompileRule, type CompileSpec } from '../native';
import { argWidths, comparedValue, expandComparisons } from './seccomp-args';

// ---- the profile format --------------------------------------------------------------------------------

const ACTIONS = new Set([
  'SCMP_ACT_ALLOW',
  'SCMP_ACT_ERRNO',
  'SCMP_ACT_KILL',
  'SCMP_ACT_KILL_THREAD',
  'SCMP_ACT_KILL_PROCESS',
  'SCMP_ACT_TRAP',
  'SCMP_ACT_TRACE',
  'SCMP_ACT_LOG',
]);
const ERRNO_ACTIONS = new Set(['SCMP_ACT_ERRNO', 'SCMP_ACT_TRACE']);
const OPS = new Set([
  'SCMP_CMP_NE',
  'SCMP_CMP_LT',
  'SCMP_CMP_LE',
  'SCMP_CMP_EQ',
  'SCMP_CMP_GE',
  'SCMP_CMP_GT',
  'SCMP_CMP_MASKED_EQ',
]);
const EPERM = 1;
const MAX_ERRNO = 4095;

/** Profile arch names (OCI) -> libseccomp's names. */
const ARCHES: Readonly<Record<string, string>> = {
  SCMP_ARCH_X86: 'x86',
  SCMP_ARCH_X86_64: 'x86_64',
  SCMP_ARCH_X32: 'x32',
  SCMP_ARCH_ARM: 'arm',
  SCMP_ARCH_AARCH64: 'aarch64',
  SCMP_ARCH_MIPS: 'mips',
  SCMP_ARCH_MIPS64: 'mips64',
  SCMP_ARCH_MIPS64N32: 'mips64n32',
  SCMP_ARCH_MIPSEL: 'mipsel',
  SCMP_ARCH_MIPSEL64: 'mipsel64',
  SCMP_ARCH_MIPSEL64N32: 'mipsel64n32',
  SCMP_ARCH_PPC: 'ppc',
  SCMP_ARCH_PPC64: 'ppc64',
  SCMP_ARCH_PPC64LE: 'ppc64le',
  SCMP_ARCH_S390: 's390',
  SCMP_ARCH_S390X: 's390x',
  SCMP_ARCH_PARISC: 'parisc',
  SCMP_ARCH_PARISC64: 'parisc64',
  SCMP_ARCH_RISCV64: 'riscv64',
  SCMP_ARCH_LOONGARCH64: 'loongarch64',
  SCMP_ARCH_M68K: 'm68k',
  SCMP_ARCH_SH: 'sh',
  SCMP_ARCH_SHEB: 'sheb',
};

/** libseccomp arch -> the Go-style name moby uses in includes/excludes.arches. */
const INCLUDE_ARCH_OF: Readonly<Record<string, string>> = {
  x86: 'x86',
  x86_64: 'amd64',
  x32: 'x32',
  arm: 'arm',
  aarch64: 'arm64',
  mips: 'mips',
  mips64: 'mips64',
  mips64n32: 'mips64n32',
  mipsel: 'mipsel',
  mipsel64: 'mipsel64',
  mipsel64n32: 'mipsel64n32',
  ppc: 'ppc',
  ppc64: 'ppc64',
  ppc64le: 'ppc64le',
  s390: 's390',
  s390x: 's390x',
  parisc: 'parisc',
  parisc64: 'parisc64',
  riscv64: 'riscv64',
  loongarch64: 'loong64',
};
// moby also spells mipsel64n32 "mips3l64n32" (a typo kept for compatibility) and knows "mipsle".
const INCLUDE_ARCHES = new Set([...Object.values(INCLUDE_ARCH_OF), 'mips3l64n32', 'mipsle', 'loong64']);

// ---- validation ----------------------------------------------------------------------------------------

/** A profile that failed validation: file and JSON path are in the message. */
class ProfileError extends Error {}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

interface Filter {
  caps: string[];
  arches: string[];
  minKernel: number[] | null;
}

interface Arg {
  index: number;
  value: number;
  valueTwo: number;
  op: string;
}

interface SyscallEntry {
  path: string;              // "syscalls[3]"
  names: string[];
  namesPath: string;         // "syscalls[3].names" or "syscalls[3].name"
  action: string;
  errnoRet: number;
  args: Arg[];
  includes: Filter;
  excludes: Filter;
}

/** A validated profile: what the file says, nothing yet decided about a particular workspace. */
export interface SeccompProfile {
  readonly file: string;
  readonly defaultAction: string;
  readonly defaultErrnoRet: number;
  /** The arches a filter built here covers: the native one plus those archMap/architectures add. */
  readonly filterArches: readonly string[];
  readonly syscalls: readonly SyscallEntry[];
}

function describe(v: Json | undefined): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}

function fail(at: string, why: string): never {
  throw new ProfileError(at ? `${at}: ${why}` : why);
}

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function expectObject(v: Json | undefined, at: string): JsonObject {
  if (!isObject(v)) fail(at, `must be an object, got ${describe(v)}`);
  return v;
}

function expectKeys(obj: JsonObject, at: string, allowed: readonly string[]): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) fail(at ? `${at}.${key}` : key, 'unknown field');
  }
}

function expectString(v: Json | undefined, at: string): string {
  if (typeof v !== 'string' || v === '') fail(at, `must be a non-empty string, got ${describe(v)}`);
  return v;
}

function expectArray(v: Json | undefined, at: string): Json[] {
  if (!Array.isArray(v)) fail(at, `must be an array, got ${describe(v)}`);
  return v;
}

/** Optional arrays: absent and null mean empty, as in moby's Go structs. */
function optionalArray(v: Json | undefined, at: string): Json[] {
  return v === undefined || v === null ? [] : expectArray(v, at);
}

function expectStrings(v: Json | undefined, at: string): string[] {
  return optionalArray(v, at).map((item, i) => expectString(item, `${at}[${i}]`));
}

function expectInteger(v: Json | undefined, at: string, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    fail(at, `must be a non-negative integer, got ${describe(v)}`);
  }
  // JSON.parse rounds above 2^53; refuse rather than filter on a value the file does not say.
  if (!Number.isSafeInteger(v)) fail(at, `${v} is above 2^53 and cannot be read exactly`);
  if (v > max) fail(at, `must be at most ${max}, got ${v}`);
  return v;
}

function expectAction(v: Json | undefined, at: string): string {
  if (typeof v !== 'string') fail(at, `must be an action name, got ${describe(v)}`);
  if (v === 'SCMP_ACT_NOTIFY') fail(at, 'SCMP_ACT_NOTIFY is not supported (the daemon runs no seccomp agent)');
  if (!ACTIONS.has(v)) fail(at, `unknown action ${JSON.stringify(v)}`);
  return v;
}

function parseKernelVersion(v: string, at: string): number[] {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?$/.exec(v);
  if (!m) fail(at, `must be a kernel version like "5.8", got ${JSON.stringify(v)}`);
  return [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)];
}

function parseFilter(v: Json | undefined, at: string): Filter {
  if (v === undefined || v === null) return { caps: [], arches: [], minKernel: null };
  const obj = expectObject(v, at);
  expectKeys(obj, at, ['caps', 'arches', 'minKernel']);
  const caps = expectStrings(obj.caps, `${at}.caps`);
  caps.forEach((cap, i) => {
    if (!isCapabilityName(cap)) fail(`${at}.caps[${i}]`, `unknown capability ${JSON.stringify(cap)}`);
  });
  const arches = expectStrings(obj.arches, `${at}.arches`);
  arches.forEach((arch, i) => {
    if (!INCLUDE_ARCHES.has(arch)) fail(`${at}.arches[${i}]`, `unknown arch ${JSON.stringify(arch)}`);
  });
  const minKernel =
    obj.minKernel === undefined || obj.minKernel === null || obj.minKernel === ''
      ? null
      : parseKernelVersion(expectString(obj.minKernel, `${at}.minKernel`), `${at}.minKernel`);
  return { caps, arches, minKernel };
}

function parseArg(v: Json, at: string): Arg {
  const obj = expectObject(v, at);
  expectKeys(obj, at, ['index', 'value', 'valueTwo', 'op']);
  const index = expectInteger(obj.index, `${at}.index`, 5);
  const value = expectInteger(obj.value, `${at}.value`, Number.MAX_SAFE_INTEGER);
  const valueTwo = obj.valueTwo === undefined ? 0 : expectInteger(obj.valueTwo, `${at}.valueTwo`, Number.MAX_SAFE_INTEGER);
  if (typeof obj.op !== 'string') fail(`${at}.op`, `must be a comparison name, got ${describe(obj.op)}`);
  if (!OPS.has(obj.op)) fail(`${at}.op`, `unknown comparison ${JSON.stringify(obj.op)}`);
  return { index, value, valueTwo, op: obj.op };
}

function parseSyscall(v: Json, at: string): SyscallEntry {
  const obj = expectObject(v, at);
  expectKeys(obj, at, ['names', 'name', 'action', 'errnoRet', 'args', 'comment', 'includes', 'excludes']);
  if (obj.names !== undefined && obj.name !== undefined) fail(at, 'has both "name" and "names"; use one');
  let names: string[];
  let namesPath: string;
  if (obj.name !== undefined) {
    namesPath = `${at}.name`;
    names = [expectString(obj.name, namesPath)];
  } else {
    namesPath = `${at}.names`;
    names = expectArray(obj.names, namesPath).map((n, i) => expectString(n, `${namesPath}[${i}]`));
    if (names.length === 0) fail(namesPath, 'must name at least one syscall');
  }
  const action = expectAction(obj.action, `${at}.action`);
  let errnoRet = EPERM;
  if (obj.errnoRet !== undefined && obj.errnoRet !== null) {
    if (!ERRNO_ACTIONS.has(action)) fail(`${at}.errnoRet`, `only applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE, not ${action}`);
    errnoRet = expectInteger(obj.errnoRet, `${at}.errnoRet`, MAX_ERRNO);
  }
  if (obj.comment !== undefined && typeof obj.comment !== 'string') fail(`${at}.comment`, `must be a string, got ${describe(obj.comment)}`);
  const args = optionalArray(obj.args, `${at}.args`).map((a, i) => parseArg(a, `${at}.args[${i}]`));
  return {
    path: at,
    names,
    namesPath,
    action,
    errnoRet,
    args,
    includes: parseFilter(obj.includes, `${at}.includes`),
    excludes: parseFilter(obj.excludes, `${at}.excludes`),
  };
}

function parseArch(v: Json, at: string): string {
  const name = expectString(v, at);
  const arch = ARCHES[name];
  if (!arch) fail(at, `unknown architecture ${JSON.stringify(name)}`);
  return arch;
}

/** The arches a filter built on this machine covers. */
function parseArches(obj: JsonObject, nativeArch: string): string[] {
  const hasList = obj.architectures !== undefined && obj.architectures !== null;
  const hasMap = obj.archMap !== undefined && obj.archMap !== null;
  if (hasList && hasMap) fail('', 'has both "architectures" and "archMap"; use one');
  if (hasList) {
    const list = expectArray(obj.architectures, 'architectures').map((a, i) => parseArch(a, `architectures[${i}]`));
    list.forEach((arch, i) => {
      if (!archSupported(arch)) fail(`architectures[${i}]`, `${arch} is not supported by this libseccomp`);
    });
    return unique([nativeArch, ...list]);
  }
  let filter = [nativeArch];
  optionalArray(obj.archMap, 'archMap').forEach((entry, i) => {
    const at = `archMap[${i}]`;
    const e = expectObject(entry, at);
    expectKeys(e, at, ['architecture', 'subArchitectures']);
    const main = parseArch(e.architecture, `${at}.architecture`);
    const subs = optionalArray(e.subArchitectures, `${at}.subArchitectures`).map((s, j) =>
      parseArch(s, `${at}.subArchitectures[${j}]`),
    );
    // Like moby: only the entry for the arch we run on adds to the filter.
    if (main === nativeArch) {
      subs.forEach((arch, j) => {
        if (!archSupported(arch)) fail(`${at}.subArchitectures[${j}]`, `${arch} is not supported by this libseccomp`);
      });
      filter = unique([nativeArch, ...subs]);
    }
  });
  return filter;
}

function parseFlags(v: Json | undefined): void {
  optionalArray(v, 'flags').forEach((flag, i) => {
    const at = `flags[${i}]`;
    // The child is single-threaded when it installs the filter, so TSYNC changes nothing.
    if (expectString(flag, at) !== 'SECCOMP_FILTER_FLAG_TSYNC') fail(at, `flag ${JSON.stringify(flag)} is not supported`);
  });
}

/** Arches this libseccomp can build filters for (2.5.4 predates loongarch64, m68k and sh). */
const supportedArches = new Map<string, boolean>();
function archSupported(arch: string): boolean {
  let ok = supportedArches.get(arch);
  if (ok === undefined) {
    try {
      addon.seccompResolveSyscall('read', arch);
      ok = true;
    } catch {
      ok = false;
    }
    supportedArches.set(arch, ok);
  }
  return ok;
}

function unique(list: string[]): string[] {
  return [...new Set(list)];
}

/** True when libseccomp can place a rule for `name` on `arch`: a real number, or socketcall/ipc multiplexing. */
function existsOn(name: string, arch: string): boolean {
  const nr = addon.seccompResolveSyscall(name, arch);
  if (nr >= 0) return true;
  if (nr <= -100 && nr > -200) return addon.seccompResolveSyscall('socketcall', arch) >= 0;
  if (nr <= -200 && nr > -300) return addon.seccompResolveSyscall('ipc', arch) >= 0;
  return false;
}

/**
 * Syscalls Linux gained after libseccomp 2.5.4's table (Docker's current profile lists some). This
 * libseccomp cannot name them, and the filter answers them with ENOSYS. A rule that allows one is
 * therefore dropped (refusing is what the filter does anyway); a rule that would refuse one under a
 * default that allows cannot be enforced and is an error (see buildSpec).
 */
const NEWER_THAN_LIBSECCOMP = new Set([
  'cachestat', 'fchmodat2', 'map_shadow_stack', 'futex_wake', 'futex_wait', 'futex_requeue', 'statmount',
  'listmount', 'lsm_get_self_attr', 'lsm_set_self_attr', 'lsm_list_modules', 'mseal', 'setxattrat', 'getxattrat',
  'listxattrat', 'removexattrat', 'open_tree_attr', 'file_getattr', 'file_setattr', 'uretprobe', 'riscv_hwprobe',
]);

function unnameable(name: string, nativeArch: string): boolean {
  return NEWER_THAN_LIBSECCOMP.has(name) && addon.seccompResolveSyscall(name, nativeArch) === -1;
}

/** Every name must be one libseccomp knows; whether it exists on the filter's arches is checked when compiling. */
function checkSyscallNames(entry: SyscallEntry, nativeArch: string): void {
  entry.names.forEach((name, i) => {
    const at = entry.namesPath.endsWith('.name') ? entry.namesPath : `${entry.namesPath}[${i}]`;
    if (unnameable(name, nativeArch)) return;
    if (addon.seccompResolveSyscall(name, nativeArch) === -1) fail(at, `unknown syscall ${JSON.stringify(name)}`);
  });
}

/** Parses and validates one profile; throws ProfileError with the JSON path (no file name yet). */
function parseProfileText(file: string, text: string): SeccompProfile {
  let doc: Json;
  try {
    doc = JSON.parse(text) as Json;
  } catch (err) {
    throw new ProfileError(`invalid JSON${jsonErrorPosition(text, (err as Error).message)}: ${(err as Error).message}`);
  }
  const obj = expectObject(doc, '(top level)');
  expectKeys(obj, '', ['defaultAction', 'defaultErrnoRet', 'architectures', 'archMap', 'syscalls', 'flags', 'listenerPath', 'listenerMetadata']);
  if (obj.listenerPath !== undefined) fail('listenerPath', 'seccomp agents (SCMP_ACT_NOTIFY) are not supported');
  if (obj.listenerMetadata !== undefined) fail('listenerMetadata', 'seccomp agents (SCMP_ACT_NOTIFY) are not supported');
  const defaultAction = expectAction(obj.defaultAction, 'defaultAction');
  let defaultErrnoRet = EPERM;
  if (obj.defaultErrnoRet !== undefined && obj.defaultErrnoRet !== null) {
    if (!ERRNO_ACTIONS.has(defaultAction)) fail('defaultErrnoRet', `only applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE, not ${defaultAction}`);
    defaultErrnoRet = expectInteger(obj.defaultErrnoRet, 'defaultErrnoRet', MAX_ERRNO);
  }
  parseFlags(obj.flags);
  const nativeArch = addon.seccompNativeArch();
  const filterArches = parseArches(obj, nativeArch);
  const syscalls = optionalArray(obj.syscalls, 'syscalls').map((s, i) => parseSyscall(s, `syscalls[${i}]`));
  for (const entry of syscalls) checkSyscallNames(entry, nativeArch);
  return { file, defaultAction, defaultErrnoRet, filterArches, syscalls };
}

function jsonErrorPosition(text: string, message: string): string {
  const m = /position (\d+)/.exec(message);
  if (!m) return '';
  const before = text.slice(0, Number(m[1]));
  const line = before.split('\n').length;
  const column = Number(m[1]) - before.lastIndexOf('\n');
  return ` at line ${line} column ${column}`;
}

// ---- selecting rules for a workspace -------------------------------------------------------------------

/** What includes/excludes are judged against: the workspace's capabilities, arch and kernel. */
export interface SeccompContext {
  /** The workspace's bounding set by name (default: DEFAULT_CAPABILITIES). */
  capabilities?: readonly string[];
  /** uname -r (default: this machine's). */
  kernelRelease?: string;
}

function kernelVersion(release: string): number[] {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(release);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : [0, 0, 0];
}

function atLeast(have: number[], want: number[]): boolean {
  for (let i = 0; i < 3; i++) {
    if (have[i] !== want[i]) return have[i] > want[i];
  }
  return true;
}

/** moby's rules: every included cap present, no excluded cap present, arch listed or not, kernel new enough. */
function applies(entry: SyscallEntry, caps: ReadonlySet<string>, arch: string, kernel: number[]): boolean {
  const { includes: inc, excludes: exc } = entry;
  if (exc.arches.includes(arch)) return false;
  if (exc.caps.some((c) => caps.has(c))) return false;
  if (exc.minKernel && atLeast(kernel, exc.minKernel)) return false;
  if (inc.arches.length && !inc.arches.includes(arch)) return false;
  if (!inc.caps.every((c) => caps.has(c))) return false;
  if (inc.minKernel && !atLeast(kernel, inc.minKernel)) return false;
  return true;
}

/** Conditions on distinct args are ANDed in one rule; repeated indexes become separate rules (OR), as runc does. */
function argGroups(args: Arg[]): Arg[][] {
  if (args.length === 0) return [[]];
  const indexes = new Set(args.map((a) => a.index));
  return indexes.size === args.length ? [args] : args.map((a) => [a]);
}

/**
 * A group's comparisons as the kernel reads them: on an int argument only the low 32 bits count (see
 * seccomp-args.ts), so those become masked equalities; each returned list is one libseccomp rule.
 */
function kernelComparisons(entry: SyscallEntry, name: string, group: Arg[]): CompileArg[][] {
  if (group.length === 0) return [[]];
  const widths = argWidths(name);
  if (!widths) fail(`${entry.path}.args`, `the argument types of ${JSON.stringify(name)} are not known, so comparisons on them cannot be compiled`);
  for (const arg of group) {
    const at = `${entry.path}.args[${entry.args.indexOf(arg)}]`;
    if (arg.index >= widths.length) fail(`${at}.index`, `${name} takes ${widths.length} argument${widths.length === 1 ? '' : 's'}, there is no argument ${arg.index}`);
    const width = widths[arg.index];
    const value = comparedValue(arg);
    if (width < 64 && value >= 2 ** width) {
      fail(`${at}.${arg.op === 'SCMP_CMP_MASKED_EQ' ? 'valueTwo' : 'value'}`, `argument ${arg.index} of ${name} is ${width} bits wide to the kernel, ${value} does not fit`);
    }
  }
  try {
    return expandComparisons(group, widths);
  } catch (err) {
    if (err instanceof RangeError) fail(`${entry.path}.args`, err.message);
    throw err;
  }
}

interface Compiled {
  spec: CompileSpec;
  rulePaths: string[];    // rules[i] came from this JSON path
}

const allows = (action: string): boolean => action === 'SCMP_ACT_ALLOW' || action === 'SCMP_ACT_LOG';

/** "SCMP_ACT_ERRNO(1)": one spelling per distinct outcome. */
function actionKey(action: string, errno: number): string {
  const norm = action === 'SCMP_ACT_KILL' ? 'SCMP_ACT_KILL_THREAD' : action;
  return ERRNO_ACTIONS.has(norm) ? `${norm}(${errno})` : norm;
}

interface Placed {
  action: string;
  path: string;
  unconditional: boolean;
}

/**
 * libseccomp keeps the first unconditional rule of a syscall and silently drops every later rule for it
 * with another action, so such a profile would not do what it says. Refuse it, naming both places.
 */
function checkConflict(placed: Map<string, Placed[]>, name: string, rule: Placed): void {
  const earlier = placed.get(name) ?? [];
  const clash = earlier.find((e) => e.action !== rule.action && (e.unconditional || rule.unconditional));
  if (clash) {
    fail(rule.path, `${JSON.stringify(name)} is ${rule.action} here but ${clash.action} at ${clash.path}, and one of them has no conditions`);
  }
  placed.set(name, [...earlier, rule]);
}

function buildSpec(profile: SeccompProfile, ctx: SeccompContext): Compiled {
  const caps = new Set(ctx.capabilities ?? DEFAULT_CAPABILITIES);
  const nativeArch = addon.seccompNativeArch();
  const includeArch = INCLUDE_ARCH_OF[nativeArch] ?? nativeArch;
  const kernel = kernelVersion(ctx.kernelRelease ?? os.release());
  const rules: CompileRule[] = [];
  const rulePaths: string[] = [];
  const placed = new Map<string, Placed[]>();
  const allowByDefault = allows(profile.defaultAction);
  for (const entry of profile.syscalls) {
    if (!applies(entry, caps, includeArch, kernel)) continue;
    // libseccomp refuses a rule that repeats the default action; it would change nothing anyway.
    if (actionKey(entry.action, entry.errnoRet) === actionKey(profile.defaultAction, profile.defaultErrnoRet)) continue;
    entry.names.forEach((name, i) => {
      const at = entry.namesPath.endsWith('.name') ? entry.namesPath : `${entry.namesPath}[${i}]`;
      if (unnameable(name, nativeArch)) {
        if (allows(entry.action) && !allowByDefault) return;
        fail(at, `${JSON.stringify(name)} is newer than this libseccomp, so a rule that refuses it cannot be enforced`);
      }
      // A rule that applies here must reach a syscall the filter can see (Docker's profiles gate
      // arch-specific names with includes.arches, so those never get this far on other arches).
      if (!profile.filterArches.some((arch) => existsOn(name, arch))) {
        fail(at, `syscall ${JSON.stringify(name)} does not exist on ${profile.filterArches.join(', ')}`);
      }
      checkConflict(placed, name, { action: actionKey(entry.action, entry.errnoRet), path: at, unconditional: entry.args.length === 0 });
      for (const group of argGroups(entry.args)) {
        for (const args of kernelComparisons(entry, name, group)) {
          rules.push({ syscall: name, action: entry.action, errno: entry.errnoRet, args });
          rulePaths.push(at);
        }
      }
    });
  }
  return {
    spec: {
      defaultAction: profile.defaultAction,
      defaultErrno: profile.defaultErrnoRet,
      arches: [...profile.filterArches],
      rules,
      enosysUnknown: !allowByDefault,
    },
    rulePaths,
  };
}

// ---- public API ----------------------------------------------------------------------------------------

function profileFailure(file: string, err: unknown): DomainError {
  if (err instanceof ProfileError) return new DomainError('FAILED_PRECONDITION', `${file}: ${err.message}`);
  return new DomainError('INTERNAL', `${file}: ${(err as Error).message}`, { cause: err });
}

/** Reads and validates one profile file. Throws DomainError(FAILED_PRECONDITION) naming file and JSON path. */
export async function readProfile(file: string): Promise<SeccompProfile> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new DomainError('FAILED_PRECONDITION', `${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    return parseProfileText(file, text);
  } catch (err) {
    throw profileFailure(file, err);
  }
}

/** Compiles a validated profile for a workspace context into a struct sock_filter[] program. */
export async function compileProfile(profile: SeccompProfile, ctx: SeccompContext = {}): Promise<Buffer> {
  let compiled: Compiled;
  try {
    compiled = buildSpec(profile, ctx);
  } catch (err) {
    throw profileFailure(profile.file, err);
  }
  try {
    return await addon.seccompCompile(compiled.spec);
  } catch (err) {
    // native/seccomp.c says which rule it could not add; name the JSON path it came from.
    const rule = (err as { rule?: number }).rule;
    const at = rule !== undefined && rule >= 0 ? `${compiled.rulePaths[rule]}: ` : '';
    if (err instanceof NativeError) throw new DomainError('FAILED_PRECONDITION', `${profile.file}: ${at}${err.message}`, { cause: err });
    throw profileFailure(profile.file, err);
  }
}

/** The OCI runtime-spec `linux.seccomp` object for a profile, includes/excludes already decided. */
export interface OciSeccomp {
  defaultAction: string;
  defaultErrnoRet: number;
  architectures: string[];
  syscalls: Array<{ names: string[]; action: string; errnoRet?: number; args?: CompileArg[] }>;
}

/**
 * The same policy for another runtime (crun, runc): bench/ compares start times under one profile.
 * Runtimes differ on syscalls newer than their libseccomp; everything else is rule for rule the same.
 */
export function toOciSeccomp(profile: SeccompProfile, ctx: SeccompContext = {}): OciSeccomp {
  const { spec } = buildSpec(profile, ctx);
  const ociArch = new Map(Object.entries(ARCHES).map(([oci, seccompName]) => [seccompName, oci]));
  return {
    defaultAction: spec.defaultAction,
    defaultErrnoRet: spec.defaultErrno,
    architectures: spec.arches.map((a) => ociArch.get(a) ?? a),
    syscalls: spec.rules.map((r) => ({
      names: [r.syscall],
      action: r.action,
      ...(ERRNO_ACTIONS.has(r.action) ? { errnoRet: r.errno } : {}),
      ...(r.args.length ? { args: r.args } : {}),
    })),
  };
}

const PROFILE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;  // the same pattern the API checks seccomp_profile against
export const DEFAULT_PROFILE = 'default';

/**
 * The profiles of a directory, each validated and compiled once. load() refuses the whole directory if any
 * profile is malformed, so the daemon never starts workspaces with a half-loaded set.
 */
export class SeccompProfiles {
  private constructor(private readonly filters: ReadonlyMap<string, Buffer>) {}

  static async load(dir: string, ctx: SeccompContext = {}): Promise<SeccompProfiles> {
    let entries: string[];
    try {
      entries = (await fs.readdir(dir)).filter((f) => f.endsWith('.json')).sort();
    } catch (err) {
      throw new DomainError('FAILED_PRECONDITION', `${dir}: cannot read seccomp profiles: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    for (const f of entries) {
      if (!PROFILE_NAME.test(f.slice(0, -'.json'.length))) {
        throw new DomainError('FAILED_PRECONDITION', `${path.join(dir, f)}: profile names are lower-case letters, digits, ".", "_" and "-"`);
      }
    }
    if (!entries.includes(`${DEFAULT_PROFILE}.json`)) {
      throw new DomainError('FAILED_PRECONDITION', `${dir}: no ${DEFAULT_PROFILE}.json seccomp profile`);
    }
    const profiles = await Promise.all(entries.map((f) => readProfile(path.join(dir, f))));
    const filters = await Promise.all(profiles.map((p) => compileProfile(p, ctx)));
    return new SeccompProfiles(new Map(entries.map((f, i) => [f.slice(0, -'.json'.length), filters[i]])));
  }

  /** The compiled filter for a start request's `seccomp_profile` ('' = default). Shared: do not modify. */
  filterFor(name: string): Buffer {
    const filter = this.filters.get(name === '' ? DEFAULT_PROFILE : name);
    if (!filter) throw new DomainError('INVALID_ARGUMENT', `seccomp_profile: unknown profile ${JSON.stringify(name)}`);
    return filter;
  }

  /** Profile names, sorted; 'default' is always among them. */
  names(): string[] {
    return [...this.filters.keys()];
  }
}
