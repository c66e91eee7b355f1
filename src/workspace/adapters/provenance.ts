// After a successful prebuild: its provenance, signed by the node, stored beside the snapshot. Before a
// workspace starts from a prebuild's snapshot: that provenance, verified with the node's key.
import type { ObjectStorage } from '../../content/storage';
import { storedObjectOf } from '../../content/repo/formats';
import type { BackupOutcome } from '../ports';
import type { WorkspaceRecord } from '../types';
import { publishPrebuildProvenance } from '../../prebuild/provenance';
import type { ProvenanceSigningKey } from '../../prebuild/signing-key';
import { verifyStoredSnapshotProvenance } from '../../prebuild/verify';

/** What a verified snapshot's provenance says about where it came from. */
export interface VerifiedSnapshot {
  invocationId: string;
  builderId: string;
  /** The repository's gitCommit in resolvedDependencies ('' when the prebuild fetched none). */
  commit: string;
  /** sha256 of the stored snapshot object the provenance verified against (what a cached tree must match). */
  objectSha256: string;
}

export interface ProvenancePublisher {
  publish(record: WorkspaceRecord, snapshot: BackupOutcome): Promise<string>;
  /** DATA_LOSS naming the failed check (unsigned, tampered, another key), NOT_FOUND without an envelope. */
  verify(snapshotId: string): Promise<VerifiedSnapshot>;
}

export function provenancePublisher(storage: ObjectStorage, key: ProvenanceSigningKey, node: { nodeId: string; version: string }): ProvenancePublisher {
  return {
    async publish({ spec, status }, snapshot) {
      const content = spec.content;
      const fetched = content && content.kind === 'git' && status.content?.commit
        ? { url: content.git.url, commit: status.content.commit, ref: content.git.ref }
        : undefined;
      const published = await publishPrebuildProvenance(
        storage,
        {
          snapshot: { name: storedObjectOf(snapshot.backupId), sha256: snapshot.sha256 },
          source: { repository: spec.source.repositoryUrl, revision: spec.source.revision },
          ...(fetched ? { fetchedSource: fetched } : {}),
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
    async verify(snapshotId) {
      let objectSha256 = '';
      const hashing = { get: storage.get.bind(storage), sha256: async (name: string) => (objectSha256 = await storage.sha256(name)) };
      const statement = await verifyStoredSnapshotProvenance({ storage: hashing, snapshotObject: storedObjectOf(snapshotId), publicKeyPem: key.publicKeyPem });
      const repo = statement.predicate.buildDefinition.resolvedDependencies?.find((d) => d.digest?.gitCommit);
      return {
        invocationId: statement.predicate.runDetails.metadata?.invocationId ?? '',
        builderId: statement.predicate.runDetails.builder.id,
        commit: repo?.digest?.gitCommit ?? '',
        objectSha256,
      };
    },
  };
}
