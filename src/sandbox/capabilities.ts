// Linux capabilities by name (capabilities(7)), and the set a workspace's processes keep. Seccomp
// profiles gate rules on these names (includes/excludes.caps); spawn takes the numbers.

/** Every capability the kernel defines, by its number (linux/capability.h). */
export const CAPABILITY_NUMBERS: Readonly<Record<string, number>> = Object.freeze({
  CAP_CHOWN: 0,
  CAP_DAC_OVERRIDE: 1,
  CAP_DAC_READ_SEARCH: 2,
  CAP_FOWNER: 3,
  CAP_FSETID: 4,
  CAP_KILL: 5,
  CAP_SETGID: 6,
  CAP_SETUID: 7,
  CAP_SETPCAP: 8,
  CAP_LINUX_IMMUTABLE: 9,
  CAP_NET_BIND_SERVICE: 10,
  CAP_NET_BROADCAST: 11,
  CAP_NET_ADMIN: 12,
  CAP_NET_RAW: 13,
  CAP_IPC_LOCK: 14,
  CAP_IPC_OWNER: 15,
  CAP_SYS_MODULE: 16,
  CAP_SYS_RAWIO: 17,
  CAP_SYS_CHROOT: 18,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_PACCT: 20,
  CAP_SYS_ADMIN: 21,
  CAP_SYS_BOOT: 22,
  CAP_SYS_NICE: 23,
  CAP_SYS_RESOURCE: 24,
  CAP_SYS_TIME: 25,
  CAP_SYS_TTY_CONFIG: 26,
  CAP_MKNOD: 27,
  CAP_LEASE: 28,
  CAP_AUDIT_WRITE: 29,
  CAP_AUDIT_CONTROL: 30,
  CAP_SETFCAP: 31,
  CAP_MAC_OVERRIDE: 32,
  CAP_MAC_ADMIN: 33,
  CAP_SYSLOG: 34,
  CAP_WAKE_ALARM: 35,
  CAP_BLOCK_SUSPEND: 36,
  CAP_AUDIT_READ: 37,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
  CAP_CHECKPOINT_RESTORE: 40,
});

/**
 * What a workspace's root keeps (bounding, permitted, effective; inheritable and ambient stay empty).
 * Podman's default: Docker's list without CAP_MKNOD (device nodes are refused in a user namespace
 * anyway), CAP_NET_RAW (raw and packet sockets: CVE-2020-14386) and CAP_AUDIT_WRITE. All of these are
 * capabilities in the workspace's own user namespace, never over the host's objects.
 */
export const DEFAULT_CAPABILITIES: readonly string[] = Object.freeze([
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_NET_BIND_SERVICE',
  'CAP_SETFCAP',
  'CAP_SETGID',
  'CAP_SETPCAP',
  'CAP_SETUID',
  'CAP_SYS_CHROOT',
]);

export function isCapabilityName(name: string): boolean {
  return Object.prototype.hasOwnProperty.call(CAPABILITY_NUMBERS, name);
}

/** Names to numbers for spawn's `capabilities`; throws on a name the kernel does not define. */
export function capabilityNumbers(names: readonly string[]): number[] {
  return names.map((name) => {
    if (!isCapabilityName(name)) throw new TypeError(`unknown capability "${name}"`);
    return CAPABILITY_NUMBERS[name];
  });
}
