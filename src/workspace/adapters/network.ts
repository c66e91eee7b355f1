// The lifecycle's view of the node network (src/network): an address and resolver files (the sandbox
// writes them into the rootfs) before the workspace starts, its veth and rules before the workload
// runs, and nothing left after it stops.
import fs from 'node:fs';
import { listOf, type Config } from '../../config/config';
import { DomainError } from '../../errors';
import { NodeNetwork } from '../../network';
import type { RootfsFiles, WorkspaceNetwork } from '../ports';
import type { WorkspaceSpec } from '../types';

/** NONE gets loopback only; ISOLATED gets the node network. `net` is undefined when the node has none. */
export function workspaceNetwork(net: NodeNetwork | undefined): WorkspaceNetwork {
  const needNetwork = (spec: WorkspaceSpec): NodeNetwork => {
    if (!net) throw new DomainError('FAILED_PRECONDITION', 'network: ISOLATED is not available on this node (network is off)');
    return net;
  };
  return {
    async prepare(spec): Promise<RootfsFiles> {
      if (spec.network !== 'ISOLATED') return { 'etc/hosts': `127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t${spec.id}\n` };
      const address = await needNetwork(spec).prepare(spec.id, spec.id, spec.ports);
      return { 'etc/resolv.conf': address.resolvConf, 'etc/hosts': address.hosts };
    },
    async attach(spec, pid) {
      if (spec.network !== 'ISOLATED') return ''; // lo is up already: spawn brings it up
      return (await needNetwork(spec).attach(spec.id, pid, spec.ports)).ip;
    },
    async detach(id) {
      await net?.detach(id);
    },
    async reconcile(liveIds) {
      await net?.reconcile(liveIds);
    },
    async setPorts(id, ports) {
      if (!net) throw new DomainError('FAILED_PRECONDITION', 'network: this node has no workspace network');
      await net.setPorts(id, ports);
    },
  };
}

/** The resolvers workspaces use: configured, else the host's own unless they are loopback-only. */
function dnsServers(config: Config): string[] {
  const configured = listOf(config.dnsServers);
  if (configured.length > 0) return configured;
  const host = fs.existsSync('/etc/resolv.conf') ? fs.readFileSync('/etc/resolv.conf', 'utf8') : '';
  const found = [...host.matchAll(/^nameserver\s+(\S+)/gm)].map((m) => m[1]).filter((ip) => !ip.startsWith('127.') && ip !== '::1');
  if (found.length > 0) return found;
  // The bridge's own address: reachable (and allowed) from every workspace; the operator can run a resolver there.
  const [base] = config.networkSubnet.split('/');
  const octets = base.split('.').map(Number);
  octets[3] += 1;
  return [octets.join('.')];
}

/** The node network, or undefined when the operator turned it off. */
export async function openNodeNetwork(config: Config): Promise<NodeNetwork | undefined> {
  if (config.network === 'off') return undefined;
  return NodeNetwork.open({
    stateDir: config.stateDir,
    bridge: config.networkBridge,
    subnet: config.networkSubnet,
    ...(config.networkSubnet6 ? { subnet6: config.networkSubnet6 } : {}),
    ...(config.networkUplink ? { uplink: config.networkUplink } : {}),
    deniedRanges: listOf(config.networkDenied),
    dnsServers: dnsServers(config),
    tableName: config.networkTable,
  });
}
