// The API's two doors: the operators' unix socket (0600, root) and TCP with mutual TLS for the control
// plane. Each door has its own auth interceptor, which turns the caller into a Principal before any
// handler runs (see auth.ts); nothing is reachable over TCP without a verified client certificate.
import fs from 'node:fs';
import os from 'node:os';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { listOf, type Config } from '../config/config';
import { DomainError } from '../errors';
import type { AuditLog } from './audit';
import { createAuthInterceptor, TokenVerifier } from './auth';
import { bindUnixSocket } from './server';
import { EndpointServer, type TerminalEndpoint } from '../network/endpoints';
import { createEndpointGuard, type Principal } from './auth';
import { ensureNodePki, type NodePki } from '../crypto/pki';
import { MtlsServerCredentials, parseOperatorIdentity, secureContextOptions, TlsFileWatcher } from './tls';

export interface Transport {
  tcpPort: number | undefined;
  pki: NodePki | undefined;
  close(): void;
}

/** The control plane's token keys; without them every user token is refused (operators still work). */
export function loadTokenVerifier(config: Config): Pick<TokenVerifier, 'verify'> {
  if (config.controlPlaneKeyFile === '') {
    return {
      verify: () => {
        throw new DomainError('UNAUTHENTICATED', 'token: this node has no control-plane key configured');
      },
    };
  }
  const pem = fs.readFileSync(config.controlPlaneKeyFile, 'utf8');
  const keys = pem.match(/-----BEGIN PUBLIC KEY-----[\s\S]+?-----END PUBLIC KEY-----/g) ?? [];
  return new TokenVerifier({ publicKeys: keys, audience: config.nodeId, maxLifetimeSeconds: config.tokenMaxLifetimeSeconds });
}

export async function bindTransports(server: grpc.Server, config: Config, audit: AuditLog, log: Logger, peerPidOf: (socketPath: string) => number): Promise<Transport> {
  const tokens = loadTokenVerifier(config);
  const local = grpc.experimental.createServerCredentialsWithInterceptors(grpc.ServerCredentials.createInsecure(), [
    createAuthInterceptor({ transport: 'unix-socket', tokens, audit }),
  ]);
  await bindUnixSocket(server, config.socketPath, local, peerPidOf);
  if (config.apiListen === '') return { tcpPort: undefined, pki: undefined, close: () => undefined };

  // Operator-provided certificates, or a node PKI generated on first start (as k3s does), whose admin
  // certificate carries the first operator identity.
  const operatorIdentities = listOf(config.operatorIdentities);
  const adminIdentity = operatorIdentities.length > 0 ? parseOperatorIdentity(operatorIdentities[0] as string) : undefined;
  const pki = config.tlsCertFile === ''
    ? await ensureNodePki({ stateDir: config.stateDir, hostname: os.hostname(), addresses: listOf(config.apiAddresses), nodeDomain: config.nodeDomain || undefined, adminIdentity })
    : undefined;
  const files = pki
    ? { certPath: pki.serverCertPath, keyPath: pki.serverKeyPath, caPath: pki.caCertPath }
    : { certPath: config.tlsCertFile, keyPath: config.tlsKeyFile, caPath: config.tlsCaFile };
  const mtls = await MtlsServerCredentials.load({
    files: {
      ...files,
      ...(config.tlsCrlFile ? { crlPath: config.tlsCrlFile } : {}),
      ...(config.tlsDenyListFile ? { denyListPath: config.tlsDenyListFile } : {}),
    },
    intervalMs: config.tlsReloadMs,
    log,
    ...(config.tlsAllow ? { allow: listOf(config.tlsAllow) } : {}),
  });
  const guarded = grpc.experimental.createServerCredentialsWithInterceptors(mtls, [
    createAuthInterceptor({
      transport: 'mtls',
      tokens,
      audit,
      checkPeer: (cert) => mtls.checkPeer(cert),
      operatorIdentities,
    }),
  ]);
  const tcpPort = await new Promise<number>((resolve, reject) =>
    server.bindAsync(config.apiListen, guarded, (err, port) => (err ? reject(err) : resolve(port))),
  );
  return { tcpPort, pki, close: () => mtls.close() };
}

export interface EndpointRoutes {
  /** The workspace's address, owner and exposed ports as the lifecycle knows them. */
  route(workspaceId: string): { ip: string; ownerId: string; ports: number[]; running: boolean } | undefined;
}

/**
 * The workspaces' own endpoints: HTTPS and WebSocket on one TLS port, routed by host name
 * (<port>-<id>.<nodeDomain>) to the workspace's address, the owner's token checked on every new
 * connection. Off unless endpointListen is set.
 */
export async function startEndpoints(config: Config, pki: NodePki | undefined, routes: EndpointRoutes, audit: AuditLog, log: Logger, terminal?: TerminalEndpoint<Principal>): Promise<{ port: number; close(): Promise<void> } | undefined> {
  if (config.endpointListen === '') return undefined;
  const certPath = pki?.endpointCertPath ?? config.tlsCertFile;
  const keyPath = pki?.endpointKeyPath ?? config.tlsKeyFile;
  if (!certPath || !keyPath) throw new DomainError('FAILED_PRECONDITION', 'endpoints: no certificate for *.nodeDomain (set nodeDomain, or tlsCertFile with that name)');
  const watcher = await TlsFileWatcher.open({ certPath, keyPath }, { intervalMs: config.tlsReloadMs, log });
  const server = new EndpointServer({
    nodeDomain: config.nodeDomain,
    tls: secureContextOptions(watcher.current),
    guard: createEndpointGuard(loadTokenVerifier(config), audit),
    ...(terminal ? { terminal } : {}),
    log,
    resolve: async (workspaceId, port) => {
      const r = routes.route(workspaceId);
      if (!r || !r.ports.includes(port) || r.ip === '') return undefined;
      return { host: r.ip, port, ownerId: r.ownerId, running: r.running };
    },
  });
  watcher.onChange((m) => server.setSecureContext(secureContextOptions(m)));
  const at = config.endpointListen.lastIndexOf(':');
  const address = await server.listen(Number(config.endpointListen.slice(at + 1)), config.endpointListen.slice(0, at).replace(/^\[|\]$/g, ''));
  return {
    port: address.port,
    close: async () => {
      watcher.close();
      await server.close();
    },
  };
}
