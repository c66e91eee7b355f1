// Clients of tetrixd's API, for tetrixctl and the tests: the same generated types the server uses.
import * as grpc from '@grpc/grpc-js';
import fs from 'node:fs';
import path from 'node:path';
import { createClientCredentials } from '../api/tls';
import { loadProto } from '../api/server';
import type { WorkspaceServiceClient } from '../generated/tetrix/agent/v1/WorkspaceService';
import type { NodeServiceClient } from '../generated/tetrix/agent/v1/NodeService';
import type { BackupServiceClient } from '../generated/tetrix/agent/v1/BackupService';
import type { ExecServiceClient } from '../generated/tetrix/agent/v1/ExecService';
import type { ImageServiceClient } from '../generated/tetrix/agent/v1/ImageService';

export interface Clients {
  workspaces: WorkspaceServiceClient;
  node: NodeServiceClient;
  backups: BackupServiceClient;
  exec: ExecServiceClient;
  images: ImageServiceClient;
  close(): void;
}

export interface ConnectOptions {
  socketPath?: string;                 // unix socket (operators)
  address?: string;                    // host:port (mutual TLS)
  credentials?: grpc.ChannelCredentials;
}

export function connect(opts: ConnectOptions): Clients {
  const { proto } = loadProto();
  const target = opts.address ?? `unix:${opts.socketPath}`;
  const creds = opts.credentials ?? grpc.credentials.createInsecure();
  const v1 = proto.tetrix.agent.v1;
  const workspaces = new v1.WorkspaceService(target, creds);
  const node = new v1.NodeService(target, creds, { channelOverride: workspaces.getChannel() } as grpc.ClientOptions);
  const backups = new v1.BackupService(target, creds, { channelOverride: workspaces.getChannel() } as grpc.ClientOptions);
  const exec = new v1.ExecService(target, creds, { channelOverride: workspaces.getChannel() } as grpc.ClientOptions);
  const images = new v1.ImageService(target, creds, { channelOverride: workspaces.getChannel() } as grpc.ClientOptions);
  return {
    workspaces,
    node,
    backups,
    exec,
    images,
    close: () => {
      workspaces.close();
    },
  };
}

/** Promise form of a unary call: `await unaryCall<Res>((md, o, cb) => client.Method(req, md, o, cb))`. */
export function unaryCall<Res>(
  invoke: (md: grpc.Metadata, opts: grpc.CallOptions, cb: grpc.requestCallback<Res>) => unknown,
  opts: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + (opts.deadlineMs ?? 120_000);
    invoke(opts.metadata ?? new grpc.Metadata(), { deadline }, (err, res) => (err ? reject(err) : resolve(res as Res)));
  });
}

/** A failure tetrixctl explains in one sentence (exit 1), rather than as a gRPC status. */
export class CliError extends Error {
  override name = 'CliError';
}

/**
 * The client credentials for --address: the node CA and the admin certificate tetrixd wrote to its PKI dir.
 * A missing or unreadable file is named, with where the files are expected to come from.
 */
export async function adminCredentials(pkiDir: string): Promise<grpc.ChannelCredentials> {
  const files = { caPath: path.join(pkiDir, 'ca.crt'), certPath: path.join(pkiDir, 'admin.crt'), keyPath: path.join(pkiDir, 'admin.key') };
  for (const file of Object.values(files)) {
    try {
      fs.accessSync(file, fs.constants.R_OK);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read (${(err as NodeJS.ErrnoException).code})`;
      throw new CliError(`--address needs the admin certificate, but ${file} ${why}; point --pki-dir at the pki directory in tetrixd's state dir (tetrixd writes it on first start)`);
    }
  }
  try {
    return await createClientCredentials(files);
  } catch (err) {
    throw new CliError(`the admin certificate in ${pkiDir} is not usable: ${(err as Error).message}`);
  }
}
