// IP forwarding in the node's namespace: Tetrix turns it on for the bridge, and remembers what it was the
// first time, so an uninstall can give the node back as it found it.
import fs from 'node:fs';
import path from 'node:path';

const SYSCTLS = { ipv4: '/proc/sys/net/ipv4/ip_forward', ipv6: '/proc/sys/net/ipv6/conf/all/forwarding' } as const;
type Family = keyof typeof SYSCTLS;

const recordFile = (stateDir: string): string => path.join(stateDir, 'network-forwarding-before.json');

function readSysctl(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined; // no IPv6 in this kernel
  }
}

/** Records the forwarding settings before Tetrix first changes them; later starts keep the first record. */
export function recordForwardingBefore(stateDir: string): void {
  const file = recordFile(stateDir);
  if (fs.existsSync(file)) return;
  const before: Partial<Record<Family, string>> = {};
  for (const family of Object.keys(SYSCTLS) as Family[]) {
    const value = readSysctl(SYSCTLS[family]);
    if (value !== undefined) before[family] = value;
  }
  fs.writeFileSync(file, JSON.stringify(before), { mode: 0o600 });
}

/** Writes back what recordForwardingBefore saw; returns what it restored (nothing without a record). */
export function restoreForwarding(stateDir: string): Partial<Record<Family, string>> {
  const file = recordFile(stateDir);
  if (!fs.existsSync(file)) return {};
  const before = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<Record<Family, string>>;
  for (const family of Object.keys(SYSCTLS) as Family[]) {
    const value = before[family];
    if (value !== undefined && /^[01]$/.test(value)) fs.writeFileSync(SYSCTLS[family], `${value}\n`);
  }
  return before;
}
