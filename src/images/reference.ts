// OCI image references: `registry[:port]/repository[:tag][@sha256:<hex>]`, with the grammar of the
// distribution project's reference package (docker/distribution reference/regexp.go), read by hand.
// A name whose first component is no host (no '.', no ':', not "localhost") is a short name and resolves
// through the node's default registry; without one it is refused, naming the field.
import { invalidArgument } from '../errors';

export interface ImageReference {
  registry: string;   // host[:port]
  repository: string; // e.g. "library/node"
  tag: string;        // '' when only a digest was given
  digest: string;     // "sha256:<hex>" or ''
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::\d{1,5})?$|^\[[0-9a-fA-F:]+\](?::\d{1,5})?$/;
const MAX_NAME = 255;

/** Whether `image` is meant as a registry reference (and not builtin:busybox or an operator directory). */
export function looksLikeReference(image: string): boolean {
  return !image.startsWith('builtin:') && (image.includes('/') || image.includes(':') || image.includes('@'));
}

export function parseReference(text: string, opts: { field?: string; defaultRegistry?: string } = {}): ImageReference {
  const field = opts.field ?? 'image';
  const bad = (why: string) => invalidArgument(field, `"${printable(text)}" is not an image reference: ${why}`);
  if (text === '' || text.length > 512) throw bad('empty or longer than 512 characters');
  let rest = text;
  let digest = '';
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad('the digest must be sha256:<64 lowercase hex>');
  }
  let tag = '';
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`tag "${printable(tag)}" is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
  }
  const parts = rest.split('/');
  let registry = '';
  if (parts.length > 1 && (parts[0].includes('.') || parts[0].includes(':') || parts[0] === 'localhost')) {
    registry = parts.shift()!;
    if (!HOST.test(registry)) throw bad(`"${printable(registry)}" is not a host[:port]`);
  }
  for (const p of parts) if (!COMPONENT.test(p)) throw bad(`path component "${printable(p)}" must be lowercase letters and digits with . _ __ - between`);
  if (registry === '') {
    if (!opts.defaultRegistry) throw invalidArgument(field, `"${printable(text)}" names no registry and this node has no --default-registry`);
    registry = opts.defaultRegistry;
    // Docker Hub keeps official images under library/.
    if (parts.length === 1 && registry === 'docker.io') parts.unshift('library');
  }
  const repository = parts.join('/');
  if (repository.length > MAX_NAME) throw bad(`the repository is longer than ${MAX_NAME}`);
  if (tag === '' && digest === '') tag = 'latest';
  return { registry, repository, tag, digest };
}

/** The full spelling: registry/repository[:tag][@digest]. */
export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

function printable(s: string): string {
  return s.slice(0, 80).replace(/[^\x20-\x7e]/g, '?');
}
