// native/seccomp.c: compiling a profile into a BPF filter with libseccomp.
import type { NativePart } from './part';

export interface CompileArg {
  index: number;
  op: string;
  value: number;
  valueTwo: number;
}

export interface CompileRule {
  syscall: string;
  action: string;
  errno: number;
  args: CompileArg[];
}

export interface CompileSpec {
  defaultAction: string;
  defaultErrno: number;
  arches: string[];          // libseccomp names: "x86_64", "aarch64"
  rules: CompileRule[];
  enosysUnknown: boolean;    // answer syscalls newer than libseccomp knows with ENOSYS
}

export interface SeccompNative {
  seccompCompile(spec: CompileSpec): Promise<Buffer>;
  /** >= 0 the number; -1 unknown to libseccomp; other negatives are libseccomp pseudo numbers. */
  seccompResolveSyscall(name: string, arch: string): number;
  seccompNativeArch(): string;
}

export const seccompPart: NativePart<SeccompNative> = {
  file: 'native/seccomp.c',
  functions: { seccompCompile: true, seccompResolveSyscall: true, seccompNativeArch: true },
};
