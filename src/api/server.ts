// The gRPC server: WorkspaceService and NodeService from proto/, plus the standard health and
// reflection services so grpc_health_probe, Kubernetes probes and grpcurl work unchanged.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { packageRoot } from '../config/config';
import type { ProtoGrpcType as AgentProto } from '../generated/agent';
import type { ProtoGrpcType as ExecProto } from '../generated/exec';
import type { ExecServiceHandlers } from '../generated/tetrix/agent/v1/ExecService';
import type { WorkspaceServiceHandlers } from '../generated/tetrix/agent/v1/WorkspaceService';
import type { NodeServiceHandlers } from '../generated/tetrix/agent/v1/NodeService';
import type { ImageServiceHandlers } from '../generated/tetrix/agent/v1/ImageService';
import type { ProtoGrpcType as ImagesProtoGrpcType } from '../generated/images';
import type { ProtoGrpcType as BackupsProto } from '../generated/backups';
import type { BackupServiceHandlers } from '../generated/tetrix/agent/v1/BackupService';
import { DomainError } from '../errors';
import { UndecodableRequest } from './handlers';

export const protoRoot = path.join(packageRoot, 'proto');
export const protoFile = path.join(protoRoot, 'tetrix', 'agent', 'v1', 'agent.proto');
export const execProtoFile = path.join(protoRoot, 'tetrix', 'agent', 'v1', 'exec.proto');
export const backupsProtoFile = path.join(protoRoot, 'tetrix', 'agent', 'v1', 'backups.proto');
export const imagesProtoFile = path.join(protoRoot, 'tetrix', 'agent', 'v1', 'images.proto');

export const loaderOptions: protoLoader.Options = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true };

type ProtoGrpcType = AgentProto & { tetrix: { agent: { v1: ExecProto['tetrix']['agent']['v1'] & ImagesProtoGrpcType['tetrix']['agent']['v1'] & BackupsProto['tetrix']['agent']['v1'] } } };

export function loadProto(): { definition: protoLoader.PackageDefinition; proto: ProtoGrpcType } {
  const definition = protoLoader.loadSync([protoFile, execProtoFile, imagesProtoFile, backupsProtoFile], loaderOptions);
  return { definition, proto: grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType };
}

/** What grpc.health.v1 answers for: the whole server ('') and each of Tetrix's services by its full name. */
export const HEALTH_SERVICES = ['', ...['WorkspaceService', 'NodeService', 'ExecService', 'ImageService', 'BackupService'].map((s) => `tetrix.agent.v1.${s}`)];

export interface ApiServer {
  server: grpc.Server;
  health: HealthImplementation;
  /** Every service this server was given (and '') answers SERVING from now on. */
  serving(): void;
  close(): Promise<void>;
}

export function createApiServer(handlers: { workspaces: WorkspaceServiceHandlers; node: NodeServiceHandlers; exec?: ExecServiceHandlers; images?: ImageServiceHandlers; backups?: BackupServiceHandlers }): ApiServer {
  const { definition, proto } = loadProto();
  const server = new grpc.Server({
    'grpc.max_receive_message_length': 4 << 20,
    'grpc.keepalive_permit_without_calls': 1,
    // Nothing serves channelz here, and its per-call bookkeeping was ~6% of a burst of 200 calls.
    'grpc.enable_channelz': 0,
  });
  server.addService(undecodableAsRequests(proto.tetrix.agent.v1.WorkspaceService.service), handlers.workspaces);
  server.addService(undecodableAsRequests(proto.tetrix.agent.v1.NodeService.service), handlers.node);
  if (handlers.exec) server.addService(undecodableAsRequests(proto.tetrix.agent.v1.ExecService.service), handlers.exec);
  if (handlers.images) server.addService(undecodableAsRequests(proto.tetrix.agent.v1.ImageService.service), handlers.images);
  if (handlers.backups) server.addService(undecodableAsRequests(proto.tetrix.agent.v1.BackupService.service), handlers.backups);
  // Health names only what this server serves: a probe of a service left out must not read SERVING.
  const given: Record<string, unknown> = { WorkspaceService: true, NodeService: true, ExecService: handlers.exec, ImageService: handlers.images, BackupService: handlers.backups };
  const served = HEALTH_SERVICES.filter((name) => name === '' || given[name.slice('tetrix.agent.v1.'.length)] !== undefined);
  const health = new HealthImplementation(Object.fromEntries(served.map((name) => [name, 'NOT_SERVING'])));
  health.addToServer(server);
  new ReflectionService(definition).addToServer(server);
  const close = (): Promise<void> =>
    new Promise((resolve) => {
      for (const name of served) health.setStatus(name, 'NOT_SERVING');
      server.tryShutdown(() => resolve());
      // Streams such as WatchWorkspaces never end by themselves.
      setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, 2000).unref();
    });
  const serving = (): void => {
    for (const name of served) health.setStatus(name, 'SERVING');
  };
  return { server, health, serving, close };
}

/** The service with each decoder's failure handed to the handler adapter as an UndecodableRequest. */
function undecodableAsRequests(service: grpc.ServiceDefinition): grpc.ServiceDefinition {
  return Object.fromEntries(
    Object.entries(service).map(([name, method]) => [
      name,
      {
        ...method,
        requestDeserialize: (bytes: Buffer): unknown => {
          try {
            return method.requestDeserialize(bytes);
          } catch (err) {
            return new UndecodableRequest((err as Error).message);
          }
        },
      },
    ]),
  );
}

/** Throws when a live process answers on socketPath, naming its pid. */
export function refuseServedSocket(socketPath: string, peerPidOf: (path: string) => number): void {
  const holder = peerPidOf(socketPath);
  if (holder !== 0) {
    throw new DomainError('FAILED_PRECONDITION', `socket ${socketPath} is served by another process (pid ${holder}); stop it or give this daemon another --socket`);
  }
}

/**
 * Binds the operators' unix socket: its directory is 0700 and the socket 0600, both root's. A socket
 * another process still serves is never taken over (it would leave that daemon running but unreachable);
 * only a file nothing answers on, left by a dead daemon, is replaced.
 */
export async function bindUnixSocket(server: grpc.Server, socketPath: string, credentials: grpc.ServerCredentials, peerPidOf: (path: string) => number): Promise<void> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  refuseServedSocket(socketPath, peerPidOf);
  fs.rmSync(socketPath, { force: true });
  const oldMask = process.umask(0o177);
  try {
    await new Promise<number>((resolve, reject) =>
      server.bindAsync(`unix:${socketPath}`, credentials, (err, port) => (err ? reject(err) : resolve(port))),
    );
  } finally {
    process.umask(oldMask);
  }
  fs.chmodSync(socketPath, 0o600);
}
