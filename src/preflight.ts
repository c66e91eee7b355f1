// Before the daemon touches anything: does this host give it what workspaces need? Each missing
// piece is named with the fix, all at once, so an operator does not learn them one restart at a time.
// (Another tetrixd holding the state directory is refused by acquireStateLock in state-dir.ts.)
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Config } from './config/config';
import { DomainError } from './errors';
import { native } from './native';

const CGROUP2_SUPER_MAGIC = 0x63677270;
const CGROUP_SUPER_MAGIC = 0x27e0eb;
const CGROUP_CONTROLLERS = ['cpu', 'memory', 'pids'] as const;
const NAMESPACES = ['user', 'pid', 'mnt', 'net', 'ipc', 'uts', 'cgroup'] as const;

/** Capabilities the daemon itself uses (linux/capability.h numbers); root in a container may lack some. */
const REQUIRED_CAPABILITIES: ReadonlyArray<[string, number]> = [
  ['CAP_CHOWN', 0],          // shifting image ownership into the workspace's id range
  ['CAP_DAC_OVERRIDE', 1],
  ['CAP_FOWNER', 3],
  ['CAP_KILL', 5],           // signalling workspaces that run as other host uids
  ['CAP_SETGID', 6],         // writing gid_map
  ['CAP_SETUID', 7],         // writing uid_map
  ['CAP_NET_ADMIN', 12],     // veth, bridges, nftables
  ['CAP_SYS_ADMIN', 21],     // namespaces, mounts, pivot_root
];

/** Pidfds (pidfd_open 5.3, waitid(P_PIDFD) 5.4) watch workspaces without stealing libuv's children. */
const MIN_KERNEL: [number, number] = [5, 4];

type HostConfig = Pick<Config, 'cgroupRoot' | 'cgroupParent'>;

/** Refuses (FAILED_PRECONDITION) with every problem found, or resolves when the host is fit. */
export async function checkHost(config: HostConfig): Promise<void> {
  const problems = await hostProblems(config);
  if (problems.length > 0) throw new DomainError('FAILED_PRECONDITION', `host check failed: ${problems.join('; ')}`);
}

export async function hostProblems(config: HostConfig): Promise<string[]> {
  const uid = process.geteuid?.() ?? -1;
  // Nothing below means anything without root, and the other checks would only add noise.
  if (uid !== 0) return [`tetrixd must run as root (running as uid ${uid}): it creates namespaces, mounts and cgroups`];
  return [
    ...(await capabilityProblems()),
    ...(await namespaceProblems()),
    ...(await overlayProblems()),
    ...(await cgroupProblems(config.cgroupRoot, config.cgroupParent)),
    ...kernelProblems(os.release()),
  ];
}

async function capabilityProblems(): Promise<string[]> {
  const status = await fs.readFile('/proc/self/status', 'utf8');
  const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
  if (!hex) return ['cannot read the effective capabilities from /proc/self/status'];
  const effective = BigInt('0x' + hex);
  const missing = REQUIRED_CAPABILITIES.filter(([, bit]) => (effective & (1n << BigInt(bit))) === 0n).map(([name]) => name);
  return missing.length ? [`root lacks capabilities ${missing.join(', ')} (a restricted container?); tetrixd needs them`] : [];
}

async function namespaceProblems(): Promise<string[]> {
  const problems: string[] = [];
  for (const ns of NAMESPACES) {
    const file = `/proc/sys/user/max_${ns}_namespaces`;
    const text = await fs.readFile(file, 'utf8').catch(() => undefined);
    if (text === undefined) problems.push(`the kernel has no ${ns} namespaces (${file} is missing)`);
    else if (Number(text.trim()) === 0) problems.push(`${ns} namespaces are disabled (${file} is 0; raise it: sysctl -w user.max_${ns}_namespaces=15000)`);
  }
  return problems;
}

/** A filesystem the kernel would autoload on first mount still shows up once loaded; ask for it explicitly. */
async function overlayProblems(): Promise<string[]> {
  const filesystems = await fs.readFile('/proc/filesystems', 'utf8');
  if (/^\S*\toverlay$/m.test(filesystems)) return [];
  return ['the overlay filesystem is not available (no "overlay" in /proc/filesystems): load it with "modprobe overlay" and list it in /etc/modules-load.d/'];
}

async function fsType(dir: string): Promise<number | undefined> {
  try {
    return (await fs.statfs(dir)).type;
  } catch {
    return undefined;
  }
}

async function controllersListed(file: string): Promise<string[] | undefined> {
  const text = await fs.readFile(file, 'utf8').catch(() => undefined);
  return text?.trim().split(/\s+/).filter(Boolean);
}

/** The same choice as detectCgroupDriver: cgroup2 at the root means v2, otherwise one v1 hierarchy per controller. */
export async function cgroupProblems(root: string, parent: string): Promise<string[]> {
  if ((await fsType(root)) === CGROUP2_SUPER_MAGIC) {
    const problems: string[] = [];
    for (const dir of [root, path.join(root, parent)]) {
      const listed = await controllersListed(path.join(dir, 'cgroup.controllers'));
      if (listed === undefined) continue; // the parent is created on first use
      const missing = CGROUP_CONTROLLERS.filter((c) => !listed.includes(c));
      if (missing.length) {
        problems.push(`cgroup controllers missing: ${missing.join(', ')} (cgroup v2 at ${dir} offers "${listed.join(' ')}"; enable them in the parent's cgroup.subtree_control or delegate them)`);
        break;
      }
    }
    return problems;
  }
  const missing: string[] = [];
  for (const controller of CGROUP_CONTROLLERS) {
    if ((await fsType(path.join(root, controller))) !== CGROUP_SUPER_MAGIC) missing.push(controller);
  }
  if (missing.length === 0) return [];
  const where = missing.length === CGROUP_CONTROLLERS.length ? `neither cgroup2 at ${root} nor v1 hierarchies below it` : `no cgroup v1 hierarchy at ${missing.map((c) => path.join(root, c)).join(', ')}`;
  return [`cgroup controllers missing: ${missing.join(', ')} (${where})`];
}

export function kernelProblems(release: string): string[] {
  const m = /^(\d+)\.(\d+)/.exec(release);
  const [major, minor] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  if (major < MIN_KERNEL[0] || (major === MIN_KERNEL[0] && minor < MIN_KERNEL[1])) {
    return [`kernel ${release} is too old: pidfds need Linux ${MIN_KERNEL.join('.')} or later`];
  }
  try {
    native.closeFd(native.pidfdOpen(process.pid));
  } catch (err) {
    return [`pidfd_open does not work on this kernel (${(err as Error).message}); tetrixd watches workspaces through pidfds`];
  }
  return [];
}
