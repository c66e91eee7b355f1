// After a successful prebuild: its provenance, signed by the node, stored beside the snapshot.
import type { ObjectStorage } from '../../content/storage';
import { storedObjectOf } from '../../content/repo/formats';
import type { BackupOutcome } from '../ports';
import type { WorkspaceRecord } from '../types';
import { publishPrebuildProvenance } from '../../prebuild/provenance';
import type { ProvenanceSigningKey } from '../../prebuild/signing-key';

export interface ProvenancePublisher {
  publish(record: WorkspaceRecord, snapshot: BackupOutcome): Promise<string>;
}

export function provenancePublisher(storage: ObjectStorage, key: ProvenanceSigningKey, node: { nodeId: string; version: string }): ProvenancePublisher {
  return {
    async publish({ spec, status }, snapshot) {
      const published = await publishPrebuildProvenance(
        storage,
        {
          snapshot: { name: storedObjectOf(snapshot.backupId), sha256: snapshot.sha256 },
          source: { repository: spec.source.repositoryUrl, revision: spec.source.revision },
          tasks: spec.tasks.map((t) => ({ name: t.name, command: t.command, workingDir: t.workingDir, env: t.env })),
          image: { ref: spec.image, sha256: status.imageDigest.replace(/^sha256:/, '') },
          nodeId: node.nodeId,
          tetrixVersion: node.version,
          invocationId: `${spec.id}-${status.createdMs}`,
          startedOn: status.startedMs,
          finishedOn: status.finishedMs || Date.now(),
          nodeFacts: { keyId: snapshot.keyId },
        },
        key,
      );
      return published.objectName;
    },
  };
}
