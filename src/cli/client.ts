// Clients of tetrixd's API, for tetrixctl and the tests: the same generated types the server uses.
import * as grpc from '@grpc/grpc-js';
import { loadProto } from '../api/server';
import type { WorkspaceServiceClient } from '../generated/tetrix/agent/v1/WorkspaceService';
import type { NodeServiceClient } from '../generated/tetrix/agent/v1/NodeService';

export interface Clients {
  workspaces: WorkspaceServiceClient;
  node: NodeServiceClient;
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
  return {
    workspaces,
    node,
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
