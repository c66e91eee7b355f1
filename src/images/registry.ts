// A small client of the OCI distribution protocol (distribution-spec v1.1: GET /v2/<name>/manifests/<ref>,
// GET /v2/<name>/blobs/<digest>), on node:https. Why not a library: the maintained ones are CLIs or Go
// (containerd, skopeo), and the npm packages found either pull in a whole Docker SDK or are unmaintained;
// what Tetrix needs is two GETs, a token dance and streaming, which node:https does with a custom CA and
// backpressure and no new dependency (docs/images.md).
//
// TLS is verified against the system roots plus --registry-ca-file; plain HTTP only for hosts in
// --insecure-registry. Auth: the WWW-Authenticate challenge (Bearer: token from the realm; Basic), with
// credentials from a 0600 Docker config.json. Credentials and tokens are never logged or put in errors.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { Readable } from 'node:stream';
import { DomainError } from '../errors';
import { formatReference, type ImageReference } from './reference';

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
} as const;

const MANIFEST_ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');
const MAX_MANIFEST_BYTES = 4 << 20;
const MAX_REDIRECTS = 5;
const IDLE_TIMEOUT_MS = 60_000;

export interface RegistryOptions {
  /** registry -> mirrors tried first, in order (containerd's hosts.toml): pulls only, the registry last. */
  mirrors?: ReadonlyMap<string, readonly string[]>;
  caFile?: string;         // PEM, trusted beside the system roots
  insecureHosts?: readonly string[]; // host:port spoken to over plain HTTP
  authFile?: string;       // Docker config.json, must be 0600
}

export interface FetchedManifest {
  digest: string;      // sha256 of the bytes, as the registry names the manifest
  mediaType: string;
  body: Buffer;
}

interface Credentials {
  username: string;
  password: string;
}

type Challenge = { scheme: 'bearer'; realm: string; service: string; scope: string } | { scheme: 'basic' };

export class RegistryClient {
  private readonly ca: string[] | undefined;
  private readonly insecure: Set<string>;
  private readonly tokens = new Map<string, { header: string; until: number }>();

  constructor(private readonly opts: RegistryOptions = {}) {
    this.ca = opts.caFile ? [...tls.rootCertificates, fs.readFileSync(opts.caFile, 'utf8')] : undefined;
    this.insecure = new Set(opts.insecureHosts ?? []);
  }

  /** The manifest (or index) bytes, verified against ref.digest or the digest asked for. */
  async manifest(ref: ImageReference, reference = ref.digest || ref.tag): Promise<FetchedManifest> {
    const res = await this.get(ref, `manifests/${reference}`, { accept: MANIFEST_ACCEPT });
    const body = await readAll(res, MAX_MANIFEST_BYTES, `manifest ${formatReference(ref)}`);
    const digest = `sha256:${crypto.createHash('sha256').update(body).digest('hex')}`;
    if (reference.startsWith('sha256:') && digest !== reference) {
      throw new DomainError('DATA_LOSS', `image: manifest ${reference} of ${ref.registry}/${ref.repository} has digest ${digest}`);
    }
    const mediaType = String(res.headers['content-type'] ?? '').split(';')[0].trim();
    return { digest, mediaType, body };
  }

  /** The blob's bytes as the registry sends them; the caller verifies them (images/verify.ts). Refused
   *  before a byte is read when the registry's length disagrees with the manifest's size. */
  async blob(ref: ImageReference, digest: string, size: number): Promise<http.IncomingMessage> {
    const res = await this.get(ref, `blobs/${digest}`, {});
    const length = res.headers['content-length'];
    if (length !== undefined && Number(length) !== size) {
      res.destroy();
      throw new DomainError('DATA_LOSS', `image: blob ${digest} is ${length} bytes at the registry, the manifest says ${size}`);
    }
    return res;
  }

  private base(registry: string): string {
    const host = registry === 'docker.io' ? 'registry-1.docker.io' : registry;
    return `${this.insecure.has(registry) ? 'http' : 'https'}://${host}`;
  }

  /** The mirrors first; one that is down or lacks the object hands over to the next, the registry last.
   *  Digests are verified whoever served them; a tag is taken from the first host that has it. */
  private async get(ref: ImageReference, tail: string, headers: Record<string, string>): Promise<http.IncomingMessage> {
    const hosts = [...(this.opts.mirrors?.get(ref.registry) ?? []), ref.registry];
    for (const [i, host] of hosts.entries()) {
      try {
        return await this.getFrom(host, ref, tail, headers);
      } catch (err) {
        const passOn = err instanceof DomainError && (err.code === 'UNAVAILABLE' || err.code === 'NOT_FOUND');
        if (i === hosts.length - 1 || !passOn) throw err;
      }
    }
    throw new DomainError('INTERNAL', 'image: no registry host to ask');
  }

  private async getFrom(host: string, ref: ImageReference, tail: string, headers: Record<string, string>): Promise<http.IncomingMessage> {
    const url = `${this.base(host)}/v2/${ref.repository}/${tail}`;
    const what = `${host}/${ref.repository} ${tail.split('/')[0].replace(/s$/, '')}`;
    const cached = this.tokens.get(`${host}|${ref.repository}`);
    const auth = cached && cached.until > Date.now() ? cached.header : undefined;
    let res = await this.request(url, { ...headers, ...(auth ? { authorization: auth } : {}) }, host);
    if (res.statusCode === 401) {
      const challenge = parseChallenge(res.headers['www-authenticate']);
      res.resume();
      const header = await this.authorize(host, ref, challenge);
      res = await this.request(url, { ...headers, authorization: header }, host);
    }
    if (res.statusCode !== 200) {
      res.resume();
      throw statusError(res.statusCode ?? 0, what);
    }
    return res;
  }

  /** The Authorization header the challenge asks for, from the auth file's credentials for this registry. */
  private async authorize(host: string, ref: ImageReference, challenge: Challenge | undefined): Promise<string> {
    const creds = this.credentials(host);
    if (!challenge) throw new DomainError('UNAUTHENTICATED', `image: ${host} refused access and sent no usable challenge`);
    let header: string;
    let lifetime = 50_000;
    if (challenge.scheme === 'basic') {
      if (!creds) throw new DomainError('UNAUTHENTICATED', `image: ${host} needs credentials; none in the registry auth file`);
      header = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
    } else {
      const token = await this.bearerToken(host, ref, challenge, creds);
      header = `Bearer ${token.token}`;
      lifetime = Math.max(10, Math.min(token.expiresIn, 3600) - 10) * 1000;
    }
    this.tokens.set(`${host}|${ref.repository}`, { header, until: Date.now() + lifetime });
    return header;
  }

  private async bearerToken(host: string, ref: ImageReference, c: Challenge & { scheme: 'bearer' }, creds: Credentials | undefined): Promise<{ token: string; expiresIn: number }> {
    let realm: URL;
    try {
      realm = new URL(c.realm);
    } catch {
      throw new DomainError('UNAUTHENTICATED', `image: ${host} names a token realm that is not a URL`);
    }
    // Credentials never travel in clear text: an http realm only for a host listed as insecure.
    if (realm.protocol !== 'https:' && !(realm.protocol === 'http:' && this.insecure.has(realm.host))) {
      throw new DomainError('UNAUTHENTICATED', `image: ${host}'s token realm ${realm.origin} is not https`);
    }
    if (c.service) realm.searchParams.set('service', c.service);
    realm.searchParams.set('scope', c.scope || `repository:${ref.repository}:pull`);
    const headers: Record<string, string> = creds ? { authorization: `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}` } : {};
    const res = await this.request(realm.toString(), headers, realm.host);
    if (res.statusCode !== 200) {
      res.resume();
      throw new DomainError('UNAUTHENTICATED', `image: the token service of ${host} answered ${res.statusCode}${creds ? '' : ' (no credentials for it in the registry auth file)'}`);
    }
    const body = await readAll(res, 1 << 20, 'token');
    let parsed: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      parsed = JSON.parse(body.toString('utf8')) as typeof parsed;
    } catch {
      throw new DomainError('UNAUTHENTICATED', `image: the token service of ${host} sent no JSON`);
    }
    const token = typeof parsed.token === 'string' ? parsed.token : typeof parsed.access_token === 'string' ? parsed.access_token : '';
    if (!/^[\x21-\x7e]{1,8192}$/.test(token)) throw new DomainError('UNAUTHENTICATED', `image: the token service of ${host} sent no token`);
    return { token, expiresIn: typeof parsed.expires_in === 'number' ? parsed.expires_in : 60 };
  }

  /** Docker's config.json `auths` entry for the registry; the file must be 0600 (it holds passwords). */
  private credentials(registry: string): Credentials | undefined {
    const file = this.opts.authFile;
    if (!file) return undefined;
    const st = fs.statSync(file);
    if ((st.mode & 0o077) !== 0) throw new DomainError('FAILED_PRECONDITION', `registry auth file ${file} must be mode 0600 (it is ${(st.mode & 0o777).toString(8)})`);
    let config: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
    try {
      config = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof config;
    } catch {
      throw new DomainError('FAILED_PRECONDITION', `registry auth file ${file} is not JSON`);
    }
    const auths = config.auths ?? {};
    const entry = auths[registry] ?? auths[`https://${registry}`] ?? (registry === 'docker.io' ? auths['https://index.docker.io/v1/'] : undefined);
    if (!entry) return undefined;
    if (entry.username && entry.password) return { username: entry.username, password: entry.password };
    if (!entry.auth) return undefined;
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw new DomainError('FAILED_PRECONDITION', `registry auth file ${file}: the auth of ${registry} is not base64 user:password`);
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }

  /** One GET, following redirects (a blob often lives behind one, on storage that gets no credentials). */
  private request(url: string, headers: Record<string, string>, registryHost: string, hops = 0): Promise<http.IncomingMessage> {
    const u = new URL(url);
    if (u.protocol === 'http:' && !this.insecure.has(u.host)) {
      return Promise.reject(new DomainError('FAILED_PRECONDITION', `image: ${u.host} is not an insecure registry; plain HTTP refused`));
    }
    const mod = u.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.get(u, { headers: { 'user-agent': 'tetrixd', ...headers }, ...(this.ca && u.protocol === 'https:' ? { ca: this.ca } : {}) }, (res) => {
        const location = res.headers.location;
        if (res.statusCode && [301, 302, 303, 307, 308].includes(res.statusCode) && location) {
          res.resume();
          if (hops >= MAX_REDIRECTS) return reject(new DomainError('UNAVAILABLE', `image: too many redirects from ${registryHost}`));
          const next = new URL(location, u);
          // The registry's credentials stay with the registry.
          const keep = next.host === u.host ? headers : Object.fromEntries(Object.entries(headers).filter(([k]) => k !== 'authorization'));
          return resolve(this.request(next.toString(), keep, registryHost, hops + 1));
        }
        resolve(res);
      });
      req.setTimeout(IDLE_TIMEOUT_MS, () => req.destroy(new DomainError('UNAVAILABLE', `image: ${u.host} did not answer for ${IDLE_TIMEOUT_MS / 1000} s`)));
      req.on('error', (err) => reject(err instanceof DomainError ? err : new DomainError('UNAVAILABLE', `image: ${u.host}: ${(err as Error).message}`)));
    });
  }
}

function statusError(code: number, what: string): DomainError {
  if (code === 404) return new DomainError('NOT_FOUND', `image: ${what} not found`);
  if (code === 401) return new DomainError('UNAUTHENTICATED', `image: ${what}: the registry refused the credentials`);
  if (code === 403) return new DomainError('PERMISSION_DENIED', `image: ${what}: access denied by the registry`);
  if (code === 429) return new DomainError('UNAVAILABLE', `image: ${what}: the registry is rate limiting`);
  return new DomainError('UNAVAILABLE', `image: ${what}: the registry answered ${code}`);
}

/** RFC 7235 challenge: `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`. */
export function parseChallenge(header: string | string[] | undefined): Challenge | undefined {
  const text = Array.isArray(header) ? header[0] : header;
  if (!text) return undefined;
  const m = /^(\w+)\s*(.*)$/.exec(text.trim());
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const p of m[2].matchAll(/(\w+)="([^"]*)"/g)) params[p[1].toLowerCase()] = p[2];
  const scheme = m[1].toLowerCase();
  if (scheme === 'basic') return { scheme: 'basic' };
  if (scheme === 'bearer' && params.realm) return { scheme: 'bearer', realm: params.realm, service: params.service ?? '', scope: params.scope ?? '' };
  return undefined;
}

async function readAll(stream: Readable, max: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Buffer).length;
    if (size > max) {
      stream.destroy();
      throw new DomainError('RESOURCE_EXHAUSTED', `image: ${what} is larger than ${max} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
