// WorkspaceService handlers: validate, call the lifecycle, convert. No lifecycle logic lives here.
import type { Logger } from 'pino';
import type { WorkspaceServiceHandlers } from '../generated/tetrix/agent/v1/WorkspaceService';
import type { WorkspaceEvent } from '../generated/tetrix/agent/v1/WorkspaceEvent';
import type { LogChunk } from '../generated/tetrix/agent/v1/LogChunk';
import type { BackupProgress } from '../generated/tetrix/agent/v1/BackupProgress';
import type { WorkspaceOutput } from '../workspace/adapters/output';
import { DomainError } from '../errors';
import type { WorkspaceService } from '../workspace/service';
import type { WorkspaceRecord } from '../workspace/types';
import { workspaceMessage } from './convert';
import type { AuditLog } from './audit';
import { authorizeRestore, authorizeWorkspaceAccess, type Principal, type WorkspaceAction } from './auth';
import { serverStream, unary, type CallContext } from './handlers';
import { gracePeriod, portList, startSpec, workspaceId, type Limits } from './validate';
import { turnGate } from '../promises';

// A control plane may send hundreds of starts or teardowns at once; grpc-js hands over all the calls of
// one socket read in one turn of the event loop, so each such call waits for a turn of its own first.
const LIFECYCLE_CALLS_PER_TURN = 8;

export function workspaceHandlers(workspaces: WorkspaceService, output: WorkspaceOutput, limits: Limits, audit: AuditLog, log: Logger, checkImage: (principal: Principal | undefined, image: string) => void = () => undefined): WorkspaceServiceHandlers {
  /** Validates the id and applies the access rule; returns the id. */
  const allowed = (ctx: CallContext, rawId: string, action: WorkspaceAction): string => {
    const id = workspaceId('id', rawId);
    authorizeWorkspaceAccess(ctx.principal, { id, record: workspaces.find(id)?.spec }, action, audit);
    return id;
  };
  /** Users see their own workspaces; operators see all. */
  const visible = (ctx: CallContext) => (r: WorkspaceRecord): boolean =>
    ctx.principal?.kind === 'operator' || (ctx.principal?.kind === 'user' && r.spec.ownerId === ctx.principal.userId);
  const lifecycleTurn = turnGate(LIFECYCLE_CALLS_PER_TURN);
  return {
    StartWorkspace: unary(log, 'StartWorkspace', async (req, ctx) => {
      await lifecycleTurn();
      const spec = startSpec(req, limits);
      // A user may create only workspaces they own, and learns nothing about someone else's id.
      authorizeWorkspaceAccess(ctx.principal, { id: spec.id, record: spec }, 'manage', audit);
      checkImage(ctx.principal, spec.image); // --user-registries (src/api/image-api.ts)
      const existing = workspaces.find(spec.id);
      if (existing) authorizeWorkspaceAccess(ctx.principal, { id: spec.id, record: existing.spec }, 'manage', audit);
      // A torn-down workspace's log outlives it, and a start under its id begins a fresh history (wiping
      // it): only the log's owner may reuse the id.
      const retained = existing ? undefined : await output.meta(spec.id);
      if (retained) authorizeWorkspaceAccess(ctx.principal, { id: spec.id, record: { ownerId: retained.ownerId, teamId: retained.teamId, kind: 'REGULAR' } }, 'manage', audit);
      // restore_from: decided by the same rule on the workspace the backup records (docs/backup-format.md).
      const authorize = (binding: Parameters<typeof authorizeRestore>[1]['binding']): void =>
        authorizeRestore(ctx.principal, { id: spec.restoreFrom, binding }, audit, spec);
      return workspaceMessage(await workspaces.start(spec, { authorizeRestore: authorize }));
    }),
    StopWorkspace: unary(log, 'StopWorkspace', async (req, ctx) => {
      await lifecycleTurn();
      return workspaceMessage(await workspaces.stop(allowed(ctx, req.id, 'manage'), gracePeriod(req.gracePeriodMs)));
    }),
    TeardownWorkspace: unary(log, 'TeardownWorkspace', async (req, ctx) => {
      await lifecycleTurn();
      return workspaces.teardown(allowed(ctx, req.id, 'manage'), { backupFirst: req.backupFirst });
    }),
    GetWorkspace: unary(log, 'GetWorkspace', async (req, ctx) => workspaceMessage(workspaces.get(allowed(ctx, req.id, 'manage')))),
    ListWorkspaces: unary(log, 'ListWorkspaces', async (req, ctx) => ({
      workspaces: workspaces
        .list()
        .filter(visible(ctx))
        .filter((r) => req.ownerId === '' || r.spec.ownerId === req.ownerId)
        .map(workspaceMessage),
    })),
    WatchWorkspaces: serverStream(log, 'WatchWorkspaces', async (req, ctx, send: (e: WorkspaceEvent) => Promise<void>) => {
      const filter = req.id === '' ? undefined : workspaceId('id', req.id);
      const canSee = visible(ctx);
      const wanted = (r: WorkspaceRecord): boolean => canSee(r) && (filter === undefined || r.spec.id === filter);
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
          // One listener per wait, removed again: a watch lives as long as the control plane does.
          await new Promise<void>((resolve) => {
            const onAbort = (): void => resolve();
            wake = () => {
              ctx.signal.removeEventListener('abort', onAbort);
              resolve();
            };
            ctx.signal.addEventListener('abort', onAbort, { once: true });
          });
          wake = undefined;
        }
      } finally {
        workspaces.events.off('changed', onChange);
      }
    }),
    BackupWorkspace: serverStream(log, 'BackupWorkspace', async (req, ctx, send: (p: BackupProgress) => Promise<void>) => {
      const id = allowed(ctx, req.id, 'manage');
      let last: Promise<void> = Promise.resolve();
      const result = await workspaces.backup(id, {
        includeUpper: req.includeUpper,
        signal: ctx.signal,
        // Progress is advisory: a slow client gets the latest, not a backlog.
        onProgress: (p) => {
          last = last.then(() => send({ progress: { bytesDone: p.bytesDone, filesDone: p.filesDone, bytesTotal: p.bytesTotal, filesTotal: p.filesTotal } }));
        },
      });
      await last;
      await send({ result });
    }),
    UpdatePorts: unary(log, 'UpdatePorts', async (req, ctx) =>
      workspaceMessage(await workspaces.updatePorts(allowed(ctx, req.id, 'manage'), portList(req.ports))),
    ),
    StreamLogs: serverStream(log, 'StreamLogs', async (req, ctx, send: (c: LogChunk) => Promise<void>) => {
      const id = workspaceId('id', req.id);
      // A torn-down workspace's log is judged by the facts it was opened with.
      const meta = workspaces.find(id)?.spec ?? (await output.meta(id));
      const record = meta && { ownerId: meta.ownerId, teamId: meta.teamId, kind: meta.kind === 'PREBUILD' ? ('PREBUILD' as const) : ('REGULAR' as const) };
      authorizeWorkspaceAccess(ctx.principal, { id, record }, 'logs', audit);
      if (!meta) throw new DomainError('NOT_FOUND', `no log for workspace "${id}"`);
      for await (const chunk of output.read(id, { follow: req.follow, signal: ctx.signal })) {
        await send({ timeUnixMs: chunk.timeMs, stream: chunk.stream, task: chunk.task, data: chunk.data });
      }
    }),
  };
}
