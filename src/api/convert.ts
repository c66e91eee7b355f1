// Domain records to wire messages. The spec's env never leaves the node.
import type { Workspace } from '../generated/tetrix/agent/v1/Workspace';
import { noContentStatus, type WorkspaceRecord } from '../workspace/types';

export function workspaceMessage({ spec, status }: WorkspaceRecord): Workspace {
  return {
    id: spec.id,
    ownerId: spec.ownerId,
    teamId: spec.teamId,
    kind: `WORKSPACE_KIND_${spec.kind}`,
    image: spec.image,
    command: spec.command,
    resources: {
      memoryBytes: spec.resources.memoryBytes, cpuMillis: spec.resources.cpuMillis, pids: spec.resources.pids,
      diskBytes: spec.resources.diskBytes ?? 0, diskInodes: spec.resources.diskInodes ?? 0,
    },
    network: `NETWORK_MODE_${spec.network}`,
    state: `WORKSPACE_STATE_${status.state}`,
    reason: `STOP_REASON_${status.reason}`,
    exitCode: status.exitCode,
    signal: status.signal,
    message: status.message,
    pid: status.pid,
    hostUidBase: status.uidBase,
    createdUnixMs: status.createdMs,
    startedUnixMs: status.startedMs,
    finishedUnixMs: status.finishedMs,
    ipAddress: status.ipAddress,
    ports: status.ports ?? spec.ports,
    tasks: status.tasks.map((t) => ({
      name: t.name,
      state: `WORKSPACE_STATE_${t.state}`,
      exitCode: t.exitCode,
      startedUnixMs: t.startedMs,
      finishedUnixMs: t.finishedMs,
    })),
    snapshotId: status.snapshotId,
    failedTask: status.failedTask,
    seccompProfile: spec.seccompProfile,
    restoredFrom: status.restoredFrom,
    imageDigest: status.imageDigest,
    diskUsedBytes: status.disk?.usedBytes ?? 0,
    diskLimitBytes: status.disk?.limitBytes ?? 0,
    diskUsedInodes: status.disk?.usedInodes ?? 0,
    diskLimitInodes: status.disk?.limitInodes ?? 0,
    diskEncrypted: status.disk?.encrypted ?? false,
    source: { ...spec.source, commit: status.content?.commit ?? '' },
    content: contentMessage(status.content ?? noContentStatus()),
  };
}

function contentMessage(c: NonNullable<WorkspaceRecord['status']['content']>): NonNullable<Workspace['content']> {
  return {
    phase: c.phase, objectsReceived: c.objectsReceived, objectsTotal: c.objectsTotal, attempts: c.attempts, failedStep: c.failedStep,
    prebuildId: c.prebuildId, prebuildSnapshotId: c.prebuildSnapshotId, prebuildVerified: c.prebuildVerified,
    prebuildTree: c.prebuildTree ?? '', // absent in records from before the tree cache
  };
}
