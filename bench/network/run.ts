// Cost of a workspace's network: Tetrix's attach + detach (netlink and nft from the addon, lease on
// disk) against the anchor, the same veth made by spawning `ip link add ... type veth` and
// `ip link del`, and, for scale, the whole attach done with spawned ip/bridge/nft commands.
// Everything happens in namespaces the benchmark creates (a "node" and one per workspace) and
// removes; the machine's own network is untouched. Not a test: run by hand (bench/network/run.sh).
// TETRIX_BENCH_COUNT sets the number of workspaces per round (default 100).
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NodeNetwork } from '../../src/network';

const count = Number(process.env.TETRIX_BENCH_COUNT ?? 100);
const id = `${process.pid.toString(36)}${crypto.randomBytes(2).toString('hex')}`;
const nodeNs = `tetrix-bench-node-${id}`;
const namespaces: string[] = [];

const ipCmd = (...args: string[]): void => void execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'inherit'] });
const inNode = (cmd: string, ...args: string[]): void => void execFileSync('ip', ['netns', 'exec', nodeNs, cmd, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
const now = (): number => Number(process.hrtime.bigint()) / 1e6;

function addNetns(name: string): string {
  ipCmd('netns', 'add', name);
  namespaces.push(name);
  return name;
}

function workspaceNamespaces(round: string): string[] {
  return Array.from({ length: count }, (_, i) => addNetns(`tetrix-bench-${round}-${id}-${i}`));
}

function dropNamespaces(names: string[]): void {
  for (const n of names) {
    ipCmd('netns', 'del', n);
    namespaces.splice(namespaces.indexOf(n), 1);
  }
}

interface Round {
  attach: number[];   // ms per workspace
  detach: number[];
  total: number;      // ms for the whole round
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const p90 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.9)] ?? NaN;

async function tetrixRound(net: NodeNetwork): Promise<Round> {
  const targets = workspaceNamespaces('tx');
  const r: Round = { attach: [], detach: [], total: 0 };
  const start = now();
  for (let i = 0; i < count; i++) {
    const t0 = now();
    await net.attach(`bench-${i}`, `/run/netns/${targets[i]}`, [8080]);
    r.attach.push(now() - t0);
  }
  for (let i = 0; i < count; i++) {
    const t0 = now();
    await net.detach(`bench-${i}`);
    r.detach.push(now() - t0);
  }
  r.total = now() - start;
  dropNamespaces(targets);
  return r;
}

/** The anchor: only the veth, by spawning ip, as a shell script would. */
function ipVethRound(): Round {
  const targets = workspaceNamespaces('ip');
  const r: Round = { attach: [], detach: [], total: 0 };
  const start = now();
  for (let i = 0; i < count; i++) {
    const t0 = now();
    ipCmd('-n', nodeNs, 'link', 'add', `tetrixv${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', targets[i]!);
    r.attach.push(now() - t0);
  }
  for (let i = 0; i < count; i++) {
    const t0 = now();
    ipCmd('-n', nodeNs, 'link', 'del', `tetrixv${i}`);
    r.detach.push(now() - t0);
  }
  r.total = now() - start;
  dropNamespaces(targets);
  return r;
}

/** For scale: everything attach does, one spawned command per step. */
function ipFullRound(bridge: string, table: string): Round {
  const targets = workspaceNamespaces('full');
  const r: Round = { attach: [], detach: [], total: 0 };
  const start = now();
  for (let i = 0; i < count; i++) {
    const ws = targets[i]!;
    const host = `tetrixf${i}`;
    const ip = `10.89.${Math.floor((i + 2) / 256)}.${(i + 2) % 256}`;
    const mac = `02:54:0a:59:${Math.floor((i + 2) / 256).toString(16).padStart(2, '0')}:${((i + 2) % 256).toString(16).padStart(2, '0')}`;
    const t0 = now();
    ipCmd('-n', nodeNs, 'link', 'add', host, 'master', bridge, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ws, 'address', mac);
    inNode('bridge', 'link', 'set', 'dev', host, 'isolated', 'on');
    ipCmd('-n', nodeNs, 'link', 'set', host, 'up');
    ipCmd('-n', ws, 'link', 'set', 'lo', 'up');
    ipCmd('-n', ws, 'link', 'set', 'eth0', 'up');
    ipCmd('-n', ws, 'addr', 'add', `${ip}/16`, 'dev', 'eth0');
    ipCmd('-n', ws, 'route', 'add', 'default', 'via', '10.89.0.1');
    inNode('nft', `add element bridge ${table} ws_mac { "${host}" . ${mac} }; add element bridge ${table} ws_src4 { "${host}" . ${mac} . ${ip} }; add element inet ${table} ports4 { ${ip} . 8080 }`);
    r.attach.push(now() - t0);
  }
  for (let i = 0; i < count; i++) {
    const host = `tetrixf${i}`;
    const ip = `10.89.${Math.floor((i + 2) / 256)}.${(i + 2) % 256}`;
    const mac = `02:54:0a:59:${Math.floor((i + 2) / 256).toString(16).padStart(2, '0')}:${((i + 2) % 256).toString(16).padStart(2, '0')}`;
    const t0 = now();
    ipCmd('-n', nodeNs, 'link', 'del', host);
    inNode('nft', `delete element bridge ${table} ws_mac { "${host}" . ${mac} }; delete element bridge ${table} ws_src4 { "${host}" . ${mac} . ${ip} }; delete element inet ${table} ports4 { ${ip} . 8080 }`);
    r.detach.push(now() - t0);
  }
  r.total = now() - start;
  dropNamespaces(targets);
  return r;
}

function line(name: string, r: Round, anchor: Round): string {
  const opsPerSec = (count * 1000) / r.total;
  return [
    name.padEnd(34),
    opsPerSec.toFixed(0).padStart(8),
    `${(anchor.total / r.total).toFixed(2)}x`.padStart(9),
    median(r.attach).toFixed(2).padStart(10),
    p90(r.attach).toFixed(2).padStart(8),
    `${(median(anchor.attach) / median(r.attach)).toFixed(2)}x`.padStart(9),
    median(r.detach).toFixed(2).padStart(10),
  ].join('  ');
}

async function main(): Promise<void> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-bench-net-${id}-`));
  const table = `tetrix_bench_${id}`;
  const bridge = `tetrixb${id}`.slice(0, 15);
  try {
    addNetns(nodeNs);
    ipCmd('-n', nodeNs, 'link', 'set', 'lo', 'up');
    const net = await NodeNetwork.open({ stateDir, netns: `/run/netns/${nodeNs}`, bridge, tableName: table, subnet: '10.88.0.0/16', dnsServers: ['192.0.2.53'] });
    // A second bridge and table shape for the spawned-command round, so it pays the same kernel work.
    ipCmd('-n', nodeNs, 'link', 'add', 'tetrixbf', 'type', 'bridge');
    ipCmd('-n', nodeNs, 'addr', 'add', '10.89.0.1/16', 'dev', 'tetrixbf');
    ipCmd('-n', nodeNs, 'link', 'set', 'tetrixbf', 'up');
    const fullTable = `tetrix_bench_full_${id}`;
    inNode('nft', `add table bridge ${fullTable}; add set bridge ${fullTable} ws_mac { type ifname . ether_addr; }; add set bridge ${fullTable} ws_src4 { type ifname . ether_addr . ipv4_addr; }; add table inet ${fullTable}; add set inet ${fullTable} ports4 { type ipv4_addr . inet_service; }`);

    await tetrixRound(net); // warm-up: page cache, nft context, lazily loaded modules
    const tetrix = await tetrixRound(net);
    const veth = ipVethRound();
    const full = ipFullRound('tetrixbf', fullTable);
    await net.close();

    console.log(`network attach + detach, ${count} workspaces in sequence, node ${os.cpus().length} cpus, kernel ${os.release()}`);
    console.log(['case'.padEnd(34), 'ops/s'.padStart(8), 'vs anchor'.padStart(9), 'attach p50'.padStart(10), 'p90'.padStart(8), 'vs anchor'.padStart(9), 'detach p50'.padStart(10)].join('  '));
    console.log(line('anchor: ip link add/del veth', veth, veth));
    console.log(line('tetrix attach/detach (full setup)', tetrix, veth));
    console.log(line('spawned ip/bridge/nft (full setup)', full, veth));
    console.log('ops/s = attach+detach pairs per second; times in ms; "vs anchor" = anchor time / this time (higher is faster)');
    console.log(`load average at the end: ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  } finally {
    for (const n of [...namespaces].reverse()) {
      try {
        ipCmd('netns', 'del', n);
      } catch {
        // already gone
      }
    }
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
