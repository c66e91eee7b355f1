// What a workspace's /workspace is made from (issue 17), as the node keeps it, and the checks of a git
// source that need no network: the URL's form and scheme, the revision's form, depth and filter.
// Layout and reasons: docs/source.md.
import { invalidArgument } from '../errors';

export interface GitSourceSpec {
  url: string;          // https://, http:// or git:// (never file:// or a local path: docs/source.md)
  ref: string;          // a branch or tag; '' with commit '' = the remote's HEAD
  commit: string;       // a full commit id (40 or 64 hex digits); '' = whatever ref names
  depth: number;        // 0 = full history
  filter: string;       // '' or a partial-clone filter (blob:none, tree:0, blob:limit=<n>[kmg])
  submodules: boolean;
  token: string;        // secret (spec-secrets.ts): sent as an HTTP header only, never written to the clone
}

/** none: an empty /workspace (or restore_from). prebuild: the snapshot is restoreFrom, then git brings it up to date. */
export type ContentKind = 'none' | 'git' | 'prebuild';

export interface ContentSpec {
  kind: ContentKind;
  git: GitSourceSpec;
  prebuildSnapshot: string;   // kind prebuild: the snapshot (a backup id) to start from
  allowUnverified: boolean;   // kind prebuild: restore even when its provenance does not verify
}

export const NO_GIT: GitSourceSpec = { url: '', ref: '', commit: '', depth: 0, filter: '', submodules: false, token: '' };
export const NO_CONTENT: ContentSpec = { kind: 'none', git: NO_GIT, prebuildSnapshot: '', allowUnverified: false };

const SCHEMES = ['https:', 'http:', 'git:'];
const COMMIT = /^([0-9a-f]{40}|[0-9a-f]{64})$/;
// git-check-ref-format(1), a conservative subset: no '..', '@{', control characters, leading '-' or '/'.
const REF = /^(?!-)(?!\/)(?!.*\.\.)(?!.*@\{)(?!.*\/\/)(?!.*\.lock$)(?!.*\/$)[A-Za-z0-9._\/+-]{1,255}$/;
const FILTER = /^(blob:none|tree:0|blob:limit=\d{1,10}[kmg]?)$/;
const MAX_DEPTH = 1_000_000;

/** The git source of a request, checked field by field (`content.git.url: ...`). */
export function checkGitSource(field: string, g: GitSourceSpec): GitSourceSpec {
  checkUrl(`${field}.url`, g.url);
  if (g.ref !== '' && !REF.test(g.ref)) throw invalidArgument(`${field}.ref`, 'is not a branch or tag name (git-check-ref-format, at most 255)');
  if (g.commit !== '' && !COMMIT.test(g.commit)) throw invalidArgument(`${field}.commit`, 'must be a full commit id: 40 or 64 lowercase hex digits');
  if (g.ref !== '' && g.commit !== '') throw invalidArgument(`${field}.commit`, 'give a ref or a commit, not both');
  if (!Number.isInteger(g.depth) || g.depth < 0 || g.depth > MAX_DEPTH) throw invalidArgument(`${field}.depth`, `must be 0 (full history) to ${MAX_DEPTH}`);
  if (g.filter !== '' && !FILTER.test(g.filter)) throw invalidArgument(`${field}.filter`, 'must be blob:none, tree:0 or blob:limit=<n>[kmg]');
  if (g.token !== '') {
    if (!/^[\x21-\x7e]{1,4096}$/.test(g.token)) throw invalidArgument(`${field}.token`, 'must be printable ASCII without spaces, at most 4096 characters');
    if (!g.url.startsWith('https:')) throw invalidArgument(`${field}.token`, 'is sent only to an https:// remote');
  }
  return { ...g };
}

function checkUrl(field: string, url: string): void {
  if (url === '') throw invalidArgument(field, 'is required');
  if (url.length > 2048 || !/^[\x21-\x7e]+$/.test(url)) throw invalidArgument(field, 'must be printable ASCII without spaces, at most 2048 characters');
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw invalidArgument(field, 'is not a URL (scp-style and local paths are not accepted)');
  }
  if (parsed.protocol === 'file:') throw invalidArgument(field, 'file:// remotes are refused: the fetch sees no host path (docs/source.md)');
  if (!SCHEMES.includes(parsed.protocol)) throw invalidArgument(field, `scheme ${parsed.protocol} is not one of https, http, git`);
  if (parsed.username !== '' || parsed.password !== '') throw invalidArgument(field, 'must not carry credentials: give the token in content.git.token');
  if (parsed.hostname === '') throw invalidArgument(field, 'names no host');
  if (parsed.search !== '' || parsed.hash !== '') throw invalidArgument(field, 'must not have a query or fragment');
}

/** host and port a URL connects to, as the fetch proxy sees them. */
export function remoteEndpoint(url: string): { host: string; port: number } {
  const u = new URL(url);
  const port = u.port !== '' ? Number(u.port) : u.protocol === 'https:' ? 443 : u.protocol === 'http:' ? 80 : 9418;
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port };
}

/** What was asked, for provenance and GetWorkspace: the revision as given (ref, commit, or HEAD). */
export function askedRevision(g: GitSourceSpec): string {
  return g.commit || g.ref || 'HEAD';
}
