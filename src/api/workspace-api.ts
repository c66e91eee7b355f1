// WorkspaceService handlers: validate, call the lifecycle, convert. No lifecycle logic lives here.
import type { Logger } from 'pino';
import type { WorkspaceServiceHandlers } from '../generated/tetrix/agent/v1/WorkspaceService';
import type { WorkspaceEvent } from '../generated/tetrix/agent/v1/WorkspaceEvent';
import { DomainError } from '../errors';
import type { WorkspaceService } from '../workspace/service';
import type { WorkspaceRecord } from '../workspace/types';
import { workspaceMessage } from './convert';
import { serverStream, unary } from './handlers';
import { gracePeriod, startSpec, workspaceId, type Limits } from './validate';

export function workspaceHandlers(workspaces: WorkspaceService, limits: Limits, log: Logger): WorkspaceServiceHandlers {
  const notYet = (what: string) => async (): Promise<never> => {
    throw new DomainError('FAILED_PRECONDITION', `${what} is not enabled on this node`);
  };
  return {
    StartWorkspace: unary(log, 'StartWorkspace', async (req) => workspaceMessage(await workspaces.start(startSpec(req, limits)))),
    StopWorkspace: unary(log, 'StopWorkspace', async (req) =>
      workspaceMessage(await workspaces.stop(workspaceId('id', req.id), gracePeriod(req.gracePeriodMs))),
    ),
    TeardownWorkspace: unary(log, 'TeardownWorkspace', async (req) => {
      const { existed } = await workspaces.teardown(workspaceId('id', req.id));
      return { existed, backupId: '' };
    }),
    GetWorkspace: unary(log, 'GetWorkspace', async (req) => workspaceMessage(workspaces.get(workspaceId('id', req.id)))),
    ListWorkspaces: unary(log, 'ListWorkspaces', async (req) => ({
      workspaces: workspaces
        .list()
        .filter((r) => req.ownerId === '' || r.spec.ownerId === req.ownerId)
        .map(workspaceMessage),
    })),
    WatchWorkspaces: serverStream(log, 'WatchWorkspaces', async (req, ctx, send: (e: WorkspaceEvent) => Promise<void>) => {
      const filter = req.id === '' ? undefined : workspaceId('id', req.id);
      const wanted = (r: WorkspaceRecord): boolean => filter === undefined || r.spec.id === filter;
      // Subscribe before the snapshot so no change between the two is missed.
      const queue: WorkspaceRecord[] = [];
      let wake: (() => void) | undefined;
      const onChange = (r: WorkspaceRecord): void => {
        if (!wanted(r)) return;
        queue.push(r);
        wake?.();
      };
      workspaces.events.on('changed', onChange);
      try {
        for (const r of workspaces.list().filter(wanted)) await send({ workspace: workspaceMessage(r) });
        while (!ctx.signal.aborted) {
          const next = queue.shift();
          if (next) {
            await send({ workspace: workspaceMessage(next) });
            continue;
          }
          await new Promise<void>((resolve) => {
            wake = resolve;
            ctx.signal.addEventListener('abort', () => resolve(), { once: true });
          });
          wake = undefined;
        }
      } finally {
        workspaces.events.off('changed', onChange);
      }
    }),
    BackupWorkspace: serverStream(log, 'BackupWorkspace', notYet('BackupWorkspace')),
    UpdatePorts: unary(log, 'UpdatePorts', notYet('UpdatePorts')),
    StreamLogs: serverStream(log, 'StreamLogs', notYet('StreamLogs')),
  };
}
