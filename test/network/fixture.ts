// A whole test "node" inside network namespaces of its own, so the machine's routes, forwarding and
// firewall stay untouched:
//
//   workspace netns --veth-- [node netns: bridge, nft tables, uplink] --veth-- [internet netns]
//
// node:     uplink 192.0.2.2/24 + 2001:db8:1::2/64, default routes to the internet namespace;
//           169.254.169.254 and fd00:ec2::254 (the metadata addresses) on its lo (this kernel has no
//           dummy links), an HTTP server on every node address, port 80 (so a refusal is the
//           firewall, not a missing route), and a resolver on port 53.
// internet: 192.0.2.1/24 + 2001:db8:1::1/64, and 198.51.100.7 on lo (inside a denied range); HTTP on
//           port 80 everywhere, DNS on 192.0.2.1:53 answering every name with 192.0.2.1.
// Every name holds "tetrix", the pid and a random suffix; teardown removes all of it.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { NodeNetworkOptions } from '../../src/network';

const run = promisify(execFile);
const fixtures = path.join(__dirname, 'fixtures');

interface TapLike {
  teardown(fn: () => unknown): void;
}

export const internet = { ip: '192.0.2.1', ip6: '2001:db8:1::1', denied: '198.51.100.7' } as const;
export const nodeUplink = { ip: '192.0.2.2', ip6: '2001:db8:1::2' } as const;
export const metadata = { ip: '169.254.169.254', ip6: 'fd00:ec2::254' } as const;
/** The node also runs a resolver (UDP 53 on every address) that answers with this. */
export const nodeResolverAnswer = '192.0.2.99';

export interface ProbeResult {
  ok: boolean;
  error?: string;
  status?: number;
  body?: string;
  data?: string;
  addresses?: string[];
}

export interface TestNode {
  readonly name: string;        // node netns name
  readonly netns: string;       // its path, for NodeNetworkOptions.netns
  readonly inet: string;        // internet netns name
  readonly stateDir: string;
  readonly table: string;
  readonly bridge: string;
  options(extra?: Partial<NodeNetworkOptions>): NodeNetworkOptions;
  /** A fresh network namespace standing in for a workspace's; returns its path. */
  workspaceNetns(): Promise<string>;
  /** Runs a command in the node's namespace. */
  sh(cmd: string): Promise<string>;
  /** Starts test servers (fixtures/serve.js) inside a namespace path; stopped in teardown. */
  serve(netnsPath: string, label: string, specs: string[]): Promise<void>;
}

// pid, then a counter: never the same name twice in one run (2 random bytes alone collided now and then
// across the ~100 names one test file makes), plus a random byte against a dead run's leftovers.
let made = 0;
export const unique = (): string => `${process.pid.toString(36)}${(made++).toString(36)}${crypto.randomBytes(1).toString('hex')}`;

export async function ip(...args: string[]): Promise<string> {
  return (await run('ip', args)).stdout;
}

/** Runs a probe inside a namespace (a path), optionally with resolv.conf/hosts bound over /etc's. */
export async function probe(netnsPath: string, args: string[], files?: { resolvConf: string; hosts: string }): Promise<ProbeResult> {
  const probeJs = path.join(fixtures, 'probe.js');
  let argv = ['nsenter', `--net=${netnsPath}`, process.execPath, probeJs, ...args];
  let tmp: string | undefined;
  if (files) {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-net-probe-'));
    fs.writeFileSync(path.join(tmp, 'resolv.conf'), files.resolvConf);
    fs.writeFileSync(path.join(tmp, 'hosts'), files.hosts);
    // A private mount namespace: the binds are gone when the probe exits.
    const script = `mount --bind "$1/resolv.conf" /etc/resolv.conf && mount --bind "$1/hosts" /etc/hosts && shift && exec "$@"`;
    argv = ['nsenter', `--net=${netnsPath}`, 'unshare', '-m', 'sh', '-c', script, 'sh', tmp, process.execPath, probeJs, ...args];
  }
  try {
    const { stdout } = await run(argv[0]!, argv.slice(1), { timeout: 15_000 });
    return JSON.parse(stdout.trim().split('\n').pop()!) as ProbeResult;
  } finally {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  }
}

export async function createTestNode(t: TapLike): Promise<TestNode> {
  const id = unique();
  const name = `tetrix-node-${id}`;
  const inet = `tetrix-inet-${id}`;
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-net-${id}-`));
  const children: ChildProcess[] = [];
  const namespaces: string[] = [];
  t.teardown(async () => {
    for (const child of children) if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
    for (const ns of namespaces.reverse()) await ip('netns', 'del', ns).catch(() => undefined);
    fs.rmSync(stateDir, { recursive: true, force: true });
  });
  const addNetns = async (ns: string): Promise<string> => {
    await ip('netns', 'add', ns);
    namespaces.push(ns);
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
    return `/run/netns/${ns}`;
  };

  await addNetns(name);
  await addNetns(inet);
  const up = `tetrixu${id}`.slice(0, 15);
  const down = `tetrixi${id}`.slice(0, 15);
  const script = [
    `link add ${up} type veth peer name ${down} netns ${inet}`,
    `addr add ${nodeUplink.ip}/24 dev ${up}`,
    `-6 addr add ${nodeUplink.ip6}/64 dev ${up} nodad`,
    `link set ${up} up`,
    `route add default via ${internet.ip}`,
    `-6 route add default via ${internet.ip6}`,
    `addr add ${metadata.ip}/32 dev lo`,
    `-6 addr add ${metadata.ip6}/128 dev lo nodad`,
  ];
  for (const line of script) await ip('-n', name, ...line.split(' '));
  const inetScript = [
    `addr add ${internet.ip}/24 dev ${down}`,
    `-6 addr add ${internet.ip6}/64 dev ${down} nodad`,
    `link set ${down} up`,
    `addr add ${internet.denied}/32 dev lo`,
  ];
  for (const line of inetScript) await ip('-n', inet, ...line.split(' '));

  const node: TestNode = {
    name,
    netns: `/run/netns/${name}`,
    inet,
    stateDir,
    table: `tetrix_${id}`,
    bridge: `tetrixb${id}`.slice(0, 15),
    options: (extra = {}) => ({
      stateDir,
      netns: `/run/netns/${name}`,
      bridge: node.bridge,
      tableName: node.table,
      subnet: '10.88.0.0/16',
      dnsServers: [internet.ip],
      deniedRanges: ['198.51.100.0/24'],
      ...extra,
    }),
    workspaceNetns: async () => addNetns(`tetrix-ws-${unique()}`),
    sh: async (cmd) => (await run('ip', ['netns', 'exec', name, 'sh', '-c', cmd])).stdout,
    serve: async (netnsPath, label, specs) => {
      const child = spawn('nsenter', [`--net=${netnsPath}`, process.execPath, path.join(fixtures, 'serve.js'), ...specs], {
        env: { ...process.env, SERVE_LABEL: label },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      await new Promise<void>((resolve, reject) => {
        let err = '';
        child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
        child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
        child.once('exit', (code) => reject(new Error(`serve ${label} exited ${code}: ${err}`)));
      });
    },
  };
  await node.serve(node.netns, 'node', ['http:80', `dns:53=${nodeResolverAnswer}`]);
  await node.serve(`/run/netns/${inet}`, 'internet', ['http:80', `dns:53=${internet.ip}`]);
  return node;
}

/** The node's nft tables of this test, as text ('' when absent). */
export async function listTables(node: TestNode): Promise<string> {
  const out: string[] = [];
  for (const family of ['inet', 'bridge']) {
    out.push(await node.sh(`nft list table ${family} ${node.table} 2>/dev/null || true`));
  }
  return out.join('\n');
}

/** Every per-workspace element in the test's tables (addresses, ports), as nft prints them. */
export async function workspaceElements(node: TestNode): Promise<string[]> {
  const out: string[] = [];
  for (const [family, sets] of [['bridge', ['ws_mac', 'ws_src4', 'ws_src6']], ['inet', ['ports4', 'ports6']]] as const) {
    for (const set of sets) {
      const json = JSON.parse(await node.sh(`nft -j list set ${family} ${node.table} ${set}`)) as { nftables: Array<{ set?: { elem?: unknown[] } }> };
      for (const item of json.nftables) for (const e of item.set?.elem ?? []) out.push(`${set}: ${JSON.stringify(e)}`);
    }
  }
  return out;
}

/** "tw" + 13 hex digits (src/network/links.ts), or the older "twv" + 12. */
export const WORKSPACE_VETH = /^tw[0-9a-fv][0-9a-f]{12}$/;

/** Names of the workspace veths in the node's namespace. */
export async function workspaceLinks(node: TestNode): Promise<string[]> {
  const out = await ip('-n', node.name, '-o', 'link', 'show');
  return out.split('\n').map((l) => l.split(': ')[1]?.split('@')[0] ?? '').filter((n) => WORKSPACE_VETH.test(n));
}

export function leasesOnFile(node: TestNode): Record<string, { ip: string }> {
  const file = path.join(node.stateDir, 'network', 'leases.json');
  if (!fs.existsSync(file)) return {};
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { leases: Record<string, { ip: string }> }).leases;
}
