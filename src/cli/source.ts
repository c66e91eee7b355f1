// tetrixctl's view of a workspace's source (issue 17): what was fetched, and what a verified statement names.
import fs from 'node:fs';
import type { ContentSource } from '../generated/tetrix/agent/v1/ContentSource';
import type { Workspace__Output } from '../generated/tetrix/agent/v1/Workspace';
import { integer, UsageError } from './args';
import type { SlsaProvenanceStatement } from '../prebuild/provenance';

/** `source.commit: <id>` and the content's progress, for `get` of one workspace; '' when it fetched nothing. */
export function contentLines(w: Workspace__Output): string {
  const c = w.content;
  if (!c || c.phase === '') return '';
  const lines = [`source: ${w.source?.repositoryUrl ?? ''} ${w.source?.revision ?? ''}`.trimEnd()];
  if (w.source?.commit) lines.push(`source.commit: ${w.source.commit}`);
  lines.push(`content: ${c.phase}, objects ${c.objectsReceived}/${c.objectsTotal}, attempts ${c.attempts}${c.failedStep ? `, failed at ${c.failedStep}` : ''}`);
  if (c.prebuildSnapshotId) lines.push(`prebuild: ${c.prebuildId || '(unknown)'} snapshot ${c.prebuildSnapshotId} ${c.prebuildVerified ? 'verified' : 'NOT verified'}${c.prebuildTree ? `, tree ${c.prebuildTree}` : ''}`);
  return lines.map((l) => l + '\n').join('');
}

/** What `verify` prints above the statement: what was asked, and what the node resolved it to. */
export function provenanceSummary(statement: SlsaProvenanceStatement): string {
  const d = statement.predicate.buildDefinition;
  const lines = [`asked: ${JSON.stringify(d.externalParameters.source ?? {})} image ${JSON.stringify(d.externalParameters.image ?? '')}`];
  for (const dep of d.resolvedDependencies ?? []) lines.push(`resolved: ${dep.uri ?? dep.name ?? ''} ${Object.entries(dep.digest ?? {}).map(([k, v]) => `${k}:${v}`).join(' ')}`);
  return lines.map((l) => l + '\n').join('');
}

/** StartWorkspace.content from --git, --ref, --commit, --depth, --submodules, --git-token-file, --from-prebuild. */
export function contentRequest(flag: (name: string) => string | boolean | undefined): ContentSource | undefined {
  const url = flag('git') as string | undefined;
  const only = ['ref', 'commit', 'depth', 'submodules', 'git-token-file', 'from-prebuild'].filter((f) => flag(f) !== undefined);
  if (url === undefined) {
    if (only.length > 0) throw new UsageError(`--${only[0]} needs --git URL`);
    return undefined;
  }
  const tokenFile = flag('git-token-file') as string | undefined;
  const git = {
    url,
    ref: (flag('ref') as string | undefined) ?? '',
    commit: (flag('commit') as string | undefined) ?? '',
    depth: flag('depth') === undefined ? 0 : integer('--depth', flag('depth') as string, 1),
    filter: '',
    submodules: flag('submodules') === true,
    token: tokenFile ? fs.readFileSync(tokenFile, 'utf8').trim() : '',
  };
  const snapshot = flag('from-prebuild') as string | undefined;
  return snapshot ? { prebuild: { snapshotId: snapshot, git, allowUnverified: false } } : { git };
}
