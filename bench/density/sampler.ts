// The API as an operator's tool sees it: a process of its own, with its own connection, calling
// ListWorkspaces and GetWorkspace one at a time (5 ms apart) until told to stop, then reporting the
// latencies over IPC. Run by bench/density/run.ts; the benchmark's own process is busy with its burst of
// starts, and timing from there would measure its event loop as well as the daemon.
import * as grpc from '@grpc/grpc-js';
import { connect, unaryCall } from '../../src/cli/client';
import type { ListWorkspacesResponse__Output } from '../../src/generated/tetrix/agent/v1/ListWorkspacesResponse';

export interface Samples {
  list: number[];
  get: number[];
}

async function sample(socketPath: string, ready: () => void, stopped: () => boolean): Promise<Samples> {
  const clients = connect({ socketPath });
  const samples: Samples = { list: [], get: [] };
  let known: string[] = [];
  try {
    // Connected, with the client's own code warm, before the clock matters: a new process's first call
    // spends ~20 ms in the client, which is not the daemon's latency.
    await unaryCall((md, o, cb) => clients.workspaces.ListWorkspaces({}, md, o, cb));
    ready();
    for (let i = 0; !stopped(); i++) {
      const began = process.hrtime.bigint();
      if (i % 2 === 0 || known.length === 0) {
        const res = await unaryCall<ListWorkspacesResponse__Output>((md, o, cb) => clients.workspaces.ListWorkspaces({}, md, o, cb));
        samples.list.push(Number(process.hrtime.bigint() - began) / 1e6);
        known = res.workspaces.map((w) => w.id);
      } else {
        // While they are torn down, the workspace asked for may be gone: NOT_FOUND is an answer too.
        await unaryCall((md, o, cb) => clients.workspaces.GetWorkspace({ id: known[i % known.length] }, md, o, cb)).catch((err: { code?: number }) => {
          if (err.code !== grpc.status.NOT_FOUND) throw err;
        });
        samples.get.push(Number(process.hrtime.bigint() - began) / 1e6);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  } finally {
    clients.close();
  }
  return samples;
}

if (require.main === module) {
  let stop = false;
  process.on('message', () => (stop = true));
  sample(process.argv[2], () => process.send!('ready'), () => stop).then(
    (samples) => process.send!(samples, () => process.exit(0)),
    (err: unknown) => {
      console.error(`sampler: ${(err as Error).message}`);
      process.exit(1);
    },
  );
}
