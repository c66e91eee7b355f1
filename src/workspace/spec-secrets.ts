// Which fields of a workspace spec are secrets, declared once. The declaration must classify every
// field of WorkspaceSpec and of the records inside it (tasks, source, resources): a new field does not
// compile until it says 'public' or 'secret', so a future credential cannot slip into the database in
// plaintext by being forgotten. The store (store.ts) seals whatever is 'secret' with one mechanism.
import type { WorkspaceSpec } from './types';

type Kind = 'public' | 'secret';

/** A map (env) or a scalar is classified whole; a record field by field; an array of records by its element. */
type FieldClass<V> = V extends readonly (infer U)[]
  ? U extends object ? readonly [Classification<U>] : Kind
  : V extends object
    ? string extends keyof V ? Kind : Classification<V>
    : Kind;

export type Classification<T> = { readonly [K in keyof T]-?: FieldClass<T[K]> };

export const SPEC_SECRETS: Classification<WorkspaceSpec> = {
  id: 'public',
  ownerId: 'public',
  teamId: 'public',
  kind: 'public',
  image: 'public',
  command: 'public',
  env: 'secret',
  resources: { memoryBytes: 'public', cpuMillis: 'public', pids: 'public', diskBytes: 'public', diskInodes: 'public' },
  network: 'public',
  ports: 'public',
  restoreFrom: 'public',
  seccompProfile: 'public',
  tasks: [{ name: 'public', command: 'public', workingDir: 'public', env: 'secret' }],
  source: { repositoryUrl: 'public', revision: 'public' },
  workingDir: 'public',
  user: 'public',
  // The git token (issue 17) is the one secret of a content source; the rest is shown by GetWorkspace.
  content: {
    kind: 'public',
    git: { url: 'public', ref: 'public', commit: 'public', depth: 'public', filter: 'public', submodules: 'public', token: 'secret' },
    prebuildSnapshot: 'public',
    allowUnverified: 'public',
  },
};

type Tree = Record<string, unknown>;
type AnyClass = Kind | readonly [AnyClass] | { readonly [key: string]: AnyClass };

/** The declared secret fields as paths ("env", "tasks[].env"). */
export function secretFieldPaths(cls: Classification<unknown> | AnyClass, prefix = ''): string[] {
  const c = cls as AnyClass;
  if (c === 'secret') return [prefix];
  if (c === 'public') return [];
  if (Array.isArray(c)) return secretFieldPaths(c[0] as AnyClass, `${prefix}[]`);
  return Object.entries(c).flatMap(([key, sub]) => secretFieldPaths(sub, prefix ? `${prefix}.${key}` : key));
}

/**
 * Splits a value into what may be stored as is and its secrets. Each secret field stays in the public
 * part emptied to its type ({}, [], '', 0, false), so a record read without its secrets is well formed.
 */
export function splitSecrets<T>(value: T, cls: Classification<T>): { open: T; secrets: Tree | undefined } {
  const { open, secrets } = split(value, cls as AnyClass);
  return { open: open as T, secrets: secrets as Tree | undefined };
}

/** The inverse of splitSecrets: secrets (when there are any) put back in their fields. */
export function joinSecrets<T>(open: T, secrets: Tree | undefined, cls: Classification<T>): T {
  return join(open, secrets, cls as AnyClass) as T;
}

function split(value: unknown, cls: AnyClass): { open: unknown; secrets: unknown } {
  if (cls === 'secret') return { open: emptied(value), secrets: value };
  if (cls === 'public' || value === null || typeof value !== 'object') return { open: value, secrets: undefined };
  if (Array.isArray(cls)) {
    const parts = (value as unknown[]).map((item) => split(item, cls[0] as AnyClass));
    const any = parts.some((p) => p.secrets !== undefined);
    return { open: parts.map((p) => p.open), secrets: any ? parts.map((p) => p.secrets ?? null) : undefined };
  }
  const open: Tree = {};
  const secrets: Tree = {};
  for (const [key, field] of Object.entries(value as Tree)) {
    // A field the declaration does not know (an old record, a cast) is a secret until declared otherwise.
    const sub = (cls as Record<string, AnyClass>)[key] ?? 'secret';
    const part = split(field, sub);
    open[key] = part.open;
    if (part.secrets !== undefined) secrets[key] = part.secrets;
  }
  return { open, secrets: Object.keys(secrets).length > 0 ? secrets : undefined };
}

function join(open: unknown, secrets: unknown, cls: AnyClass): unknown {
  if (secrets === undefined || secrets === null) return open;
  if (cls === 'secret') return secrets;
  if (cls === 'public' || open === null || typeof open !== 'object') return open;
  if (Array.isArray(cls)) {
    const list = Array.isArray(secrets) ? secrets : [];
    return (open as unknown[]).map((item, i) => join(item, list[i], cls[0] as AnyClass));
  }
  const out: Tree = { ...(open as Tree) };
  for (const [key, field] of Object.entries(secrets as Tree)) {
    out[key] = join(out[key], field, (cls as Record<string, AnyClass>)[key] ?? 'secret');
  }
  return out;
}

function emptied(value: unknown): unknown {
  if (Array.isArray(value)) return [];
  switch (typeof value) {
    case 'string': return '';
    case 'number': return 0;
    case 'boolean': return false;
    case 'object': return value === null ? null : {};
    default: return undefined;
  }
}
