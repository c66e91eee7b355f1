// What one tetrixd leaves on the machine: mounts, cgroups, named network namespaces, links, nftables
// tables/sets/rules, processes, uid-range claims, address leases and workspace directories. Snapshots taken before and
// after a run are compared, so what other programs keep (or other daemons hold) is not blamed on it.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { hostLinkIdPart } from '../../src/network/links';
import { mountsUnder } from '../../src/sandbox/rootfs';
import { loopsUnder } from '../../src/storage/loops';
import { cgroupDirsOf } from './launcher';

export interface LeakScope {
  dir: string;            // everything the daemon owns on disk lives below this
  stateDir: string;
  cgroupParent: string;
  daemonPid?: number;
  netns?: string;         // the daemon's own network namespace: links and nftables are read there
  idmapDir?: string;      // default /run/tetrix/idmap
}

export interface HostSnapshot {
  mounts: string[];
  cgroups: string[];
  netns: string[];
  links: string[];
  nft: string[];
  processes: string[];
  idClaims: string[];
  leases: string[];
  workspaceDirs: string[];
  loops: string[];        // loop devices bound to a file of the daemon's (workspace volumes, src/storage)
  volumes: string[];      // volume images left in <stateDir>/storage/images
}

export type Leaks = Partial<Record<keyof HostSnapshot, string[]>>;



/** Groups below the parent, in every hierarchy (the parent itself is left by design). */
function cgroupsBelow(parent: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      out.push(path.join(dir, entry.name));
      walk(path.join(dir, entry.name));
    }
  };
  for (const dir of cgroupDirsOf(parent)) walk(dir);
  return out;
}

function namedNetns(): string[] {
  try {
    return fs.readdirSync('/run/netns').filter((n) => n.includes('tetrix'));
  } catch {
    return [];
  }
}

/** Links Tetrix names: workspace veths (tw + 13 hex digits, or the older twv…) and anything called tetrix. */
function tetrixLinks(netns: string | undefined): string[] {
  try {
    const argv = [...(netns ? ['-n', netns] : []), '-j', 'link', 'show'];
    const links = JSON.parse(execFileSync('ip', argv, { encoding: 'utf8' })) as Array<{ ifname: string }>;
    return links.map((l) => l.ifname).filter((n) => /^tw[0-9a-fv][0-9a-f]{12}$/.test(n) || n.includes('tetrix'));
  } catch {
    return ['(ip link failed)'];
  }
}

interface NftObject {
  table?: { family: string; name: string };
  set?: { family: string; table: string; name: string; elem?: unknown[] };
  map?: { family: string; table: string; name: string; elem?: unknown[] };
  rule?: { family: string; table: string; chain: string; handle: number };
}

/** Tables named tetrix*, their set and map elements and their rules, each as one line. */
function tetrixNft(netns: string | undefined): string[] {
  let objects: NftObject[];
  try {
    const [cmd, argv] = netns ? ['ip', ['netns', 'exec', netns, 'nft', '-j', 'list', 'ruleset']] : ['nft', ['-j', 'list', 'ruleset']];
    objects = (JSON.parse(execFileSync(cmd, argv, { encoding: 'utf8', maxBuffer: 64 << 20 })) as { nftables: NftObject[] }).nftables;
  } catch {
    return ['(nft list ruleset failed)'];
  }
  const out: string[] = [];
  for (const o of objects) {
    if (o.table?.name.includes('tetrix')) out.push(`table ${o.table.family} ${o.table.name}`);
    const set = o.set ?? o.map;
    if (set?.table.includes('tetrix')) for (const e of set.elem ?? []) out.push(`element ${set.family} ${set.table} ${set.name} ${JSON.stringify(e)}`);
    if (o.rule?.table.includes('tetrix')) out.push(`rule ${o.rule.family} ${o.rule.table} ${o.rule.chain} #${o.rule.handle}`);
  }
  return out;
}

/** Processes in the daemon's cgroups or children of the daemon. */
function processesOf(scope: LeakScope): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cgroups = fs.readFileSync(`/proc/${entry}/cgroup`, 'utf8');
      const inParent = cgroups.split('\n').some((l) => l.split(':')[2]?.startsWith(`/${scope.cgroupParent}/`));
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (inParent || (scope.daemonPid !== undefined && ppid === scope.daemonPid)) {
        out.push(`${entry} ${stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))}`);
      }
    } catch {
      // exited while we looked
    }
  }
  return out;
}

function idClaimsOf(stateDir: string, idmapDir: string): string[] {
  const wanted = path.resolve(stateDir);
  const out: string[] = [];
  for (const name of fs.existsSync(idmapDir) ? fs.readdirSync(idmapDir) : []) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const claim = JSON.parse(fs.readFileSync(path.join(idmapDir, name), 'utf8')) as { stateDir: string; workspaceId: string };
      if (claim.stateDir === wanted) out.push(`${name} ${claim.workspaceId}`);
    } catch {
      // released while we looked
    }
  }
  return out;
}

/** Network address leases the daemon keeps in <stateDir>/network/leases.json (ISOLATED workspaces). */
function leasesOf(stateDir: string): string[] {
  try {
    const file = JSON.parse(fs.readFileSync(path.join(stateDir, 'network', 'leases.json'), 'utf8')) as { leases?: Record<string, { ip?: string }> };
    return Object.entries(file.leases ?? {}).map(([id, lease]) => `${id} ${lease.ip ?? ''}`);
  } catch {
    return [];
  }
}

export function snapshotHost(scope: LeakScope): HostSnapshot {
  const wsRoot = path.join(scope.stateDir, 'workspaces');
  const volumeRoot = path.join(scope.stateDir, 'storage', 'images');
  // The volume pool's formatted, empty volumes are the daemon's working set (like
  // its bridge): mounted while it runs, removed at its shutdown (src/storage/pool.ts).
  const pool = path.join(scope.stateDir, 'storage', 'pool') + '/';
  return {
    mounts: mountsUnder(scope.dir).filter((m) => !m.startsWith(pool)),
    cgroups: cgroupsBelow(scope.cgroupParent),
    netns: namedNetns(),
    links: tetrixLinks(scope.netns),
    nft: tetrixNft(scope.netns),
    processes: processesOf(scope),
    idClaims: idClaimsOf(scope.stateDir, scope.idmapDir ?? '/run/tetrix/idmap'),
    leases: leasesOf(scope.stateDir),
    workspaceDirs: fs.existsSync(wsRoot) ? fs.readdirSync(wsRoot) : [],
    loops: loopsUnder(scope.dir).filter((l) => !l.backingFile.startsWith(pool)).map((l) => `loop${l.minor} ${l.backingFile}`),
    volumes: fs.existsSync(volumeRoot) ? fs.readdirSync(volumeRoot) : [],
  };
}

/**
 * What after holds that before did not. Named network namespaces are host-wide (other programs make
 * tetrix-named ones too), so they count only when they name one of workspaceIds; links and nftables
 * too when the daemon shares the host's network namespace (scope.netns unset).
 */
export function leaksSince(before: HostSnapshot, after: HostSnapshot, opts: { workspaceIds: Iterable<string>; privateNetns: boolean }): Leaks {
  const names: string[] = [];
  for (const id of opts.workspaceIds) names.push(id, hostLinkIdPart(id)); // a veth's name ends with this, on any bridge
  const hostWide: ReadonlyArray<keyof HostSnapshot> = opts.privateNetns ? ['netns'] : ['netns', 'links', 'nft'];
  const ours = (key: keyof HostSnapshot, item: string): boolean => !hostWide.includes(key) || names.some((n) => item.includes(n));
  const leaks: Leaks = {};
  for (const key of Object.keys(after) as Array<keyof HostSnapshot>) {
    const known = new Set(before[key]);
    const added = after[key].filter((item) => !known.has(item) && ours(key, item));
    if (added.length) leaks[key] = added;
  }
  return leaks;
}

export function describeLeaks(leaks: Leaks): string {
  const parts = Object.entries(leaks).map(([kind, items]) => `${kind}: ${items!.slice(0, 5).join(', ')}${items!.length > 5 ? ` (+${items!.length - 5})` : ''}`);
  return parts.length ? parts.join('; ') : 'none';
}
