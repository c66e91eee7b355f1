// tetrixctl's view of a workspace's source (issue 17): what was fetched, and what a verified statement names.
import type { Workspace__Output } from '../generated/tetrix/agent/v1/Workspace';
import type { SlsaProvenanceStatement } from '../prebuild/provenance';

/** `source.commit: <id>` and the content's progress, for `get` of one workspace; '' when it fetched nothing. */
export function contentLines(w: Workspace__Output): string {
  const c = w.content;
  if (!c || c.phase === '') return '';
  const lines = [`source: ${w.source?.repositoryUrl ?? ''} ${w.source?.revision ?? ''}`.trimEnd()];
  if (w.source?.commit) lines.push(`source.commit: ${w.source.commit}`);
  lines.push(`content: ${c.phase}, objects ${c.objectsReceived}/${c.objectsTotal}, attempts ${c.attempts}${c.failedStep ? `, failed at ${c.failedStep}` : ''}`);
  if (c.prebuildSnapshotId) lines.push(`prebuild: ${c.prebuildId || '(unknown)'} snapshot ${c.prebuildSnapshotId} ${c.prebuildVerified ? 'verified' : 'NOT verified'}`);
  return lines.map((l) => l + '\n').join('');
}

/** What `verify` prints above the statement: what was asked, and what the node resolved it to. */
export function provenanceSummary(statement: SlsaProvenanceStatement): string {
  const d = statement.predicate.buildDefinition;
  const lines = [`asked: ${JSON.stringify(d.externalParameters.source ?? {})} image ${JSON.stringify(d.externalParameters.image ?? '')}`];
  for (const dep of d.resolvedDependencies ?? []) lines.push(`resolved: ${dep.uri ?? dep.name ?? ''} ${Object.entries(dep.digest ?? {}).map(([k, v]) => `${k}:${v}`).join(' ')}`);
  return lines.map((l) => l + '\n').join('');
}
