// The API's use of the node PKI (src/crypto/pki.ts): mutual-TLS credentials for the gRPC API that reload
// from disk without a restart, client identity policy (allow and deny lists, CRLs) and the client
// credentials tetrixctl uses. See docs/security-transport.md.
import * as grpc from '@grpc/grpc-js';
import fs from 'node:fs/promises';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { ADMIN_IDENTITY, parseSubjectAltName, TLS_MIN_VERSION, type OperatorIdentity } from '../crypto/pki';
import { DomainError } from '../errors';

export type TlsLog = Pick<Logger, 'info' | 'warn'>;

// ---------------------------------------------------------------------------------------------------------
// Client identities

export interface PeerIdentity {
  readonly name: string;            // the primary name: first URI SAN, else first DNS SAN, else CN
  readonly names: readonly string[]; // every URI, DNS and email SAN and every CN
  readonly uris: readonly string[];  // the URI SANs alone
  readonly dnsNames: readonly string[]; // the DNS SANs alone
  readonly fingerprint256: string;   // lowercase hex, no colons
}

/** The identity a verified client certificate asserts (its CA vouched for every one of these names). */
export function peerIdentityOf(cert: tls.PeerCertificate): PeerIdentity {
  const sans = parseSubjectAltName(cert.subjectaltname ?? '');
  const byType = (t: string): string[] => sans.filter((s) => s.type === t).map((s) => s.value);
  const cn = cert.subject?.CN;
  const cns = cn === undefined ? [] : Array.isArray(cn) ? cn : [cn];
  const uris = byType('URI');
  const dnsNames = byType('DNS');
  const names = [...uris, ...dnsNames, ...byType('email'), ...cns];
  return { name: names[0] ?? '', names, uris, dnsNames, fingerprint256: normaliseFingerprint(cert.fingerprint256 ?? '') };
}


/** What operatorIdentities holds unless configured: the SAN the generated admin certificate carries. */
export const DEFAULT_OPERATOR_IDENTITY = `dns:${ADMIN_IDENTITY}`;

/** `dns:NAME` or `uri:URI`; throws DomainError INVALID_ARGUMENT naming operatorIdentities otherwise. */
export function parseOperatorIdentity(text: string): OperatorIdentity {
  const m = /^(dns|uri):(\S+)$/.exec(text.trim());
  if (!m) {
    throw new DomainError('INVALID_ARGUMENT', `operatorIdentities: "${text}" needs a name type and a name: dns:NAME or uri:URI`);
  }
  return { type: m[1] as OperatorIdentity['type'], value: m[2] as string };
}

/** The operator name a verified certificate carries, if any: a DNS SAN equal to a configured dns: name
 *  (case-insensitive, as DNS is: RFC 4343), or a URI SAN equal to a configured uri: byte for byte. */
export function operatorNameOf(identity: PeerIdentity, operators: readonly OperatorIdentity[]): string | undefined {
  for (const op of operators) {
    const found = op.type === 'dns'
      ? identity.dnsNames.find((n) => n.toLowerCase() === op.value.toLowerCase())
      : identity.uris.find((u) => u === op.value);
    if (found !== undefined) return found;
  }
  return undefined;
}

function normaliseFingerprint(fp: string): string {
  return fp.replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
}

export interface ClientIdentityPolicy {
  /** If set, only certificates naming one of these identities may call (case-insensitive). */
  readonly allow?: readonly string[];
  /** Identities, or `sha256:<fingerprint>` of certificates, that may not call even with a valid chain. */
  readonly deny?: readonly string[];
}

export type PeerVerdict = { ok: true; identity: PeerIdentity } | { ok: false; reason: string };

/** The allow/deny decision for one verified client certificate. */
export function checkClientIdentity(cert: tls.PeerCertificate | undefined, policy: ClientIdentityPolicy): PeerVerdict {
  if (!cert || !cert.raw) return { ok: false, reason: 'no verified client certificate' };
  const identity = peerIdentityOf(cert);
  const names = new Set(identity.names.map((n) => n.toLowerCase()));
  for (const entry of policy.deny ?? []) {
    const e = entry.trim().toLowerCase();
    if (e.startsWith('sha256:') ? normaliseFingerprint(e) === identity.fingerprint256 : names.has(e)) {
      return { ok: false, reason: `client identity ${identity.name || '(unnamed)'} is denied` };
    }
  }
  if (policy.allow && !policy.allow.some((a) => names.has(a.toLowerCase()))) {
    return { ok: false, reason: `client identity ${identity.name || '(unnamed)'} is not in the allow-list` };
  }
  return { ok: true, identity };
}

// ---------------------------------------------------------------------------------------------------------
// Files on disk, reloaded when they change

export interface TlsFiles {
  readonly certPath: string;
  readonly keyPath: string;
  readonly caPath?: string;       // the CA that client certificates must chain to
  readonly crlPath?: string;      // PEM CRL(s) from that CA; enforced by OpenSSL during the handshake
  readonly denyListPath?: string; // one identity or sha256:<fingerprint> per line, '#' comments
}

export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca?: Buffer;
  readonly crl?: Buffer;
  readonly deny: readonly string[];
}

function parseDenyList(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter((l) => l.length > 0);
}

async function readOptional(file: string | undefined): Promise<Buffer | undefined> {
  return file === undefined ? undefined : fs.readFile(file);
}

export async function readTlsMaterial(files: TlsFiles): Promise<TlsMaterial> {
  const [cert, key, ca, crl, deny] = await Promise.all([
    fs.readFile(files.certPath),
    fs.readFile(files.keyPath),
    readOptional(files.caPath),
    readOptional(files.crlPath),
    readOptional(files.denyListPath),
  ]);
  return { cert, key, ca, crl, deny: deny ? parseDenyList(deny.toString('utf8')) : [] };
}

/** The context options every TLS server of the node uses: the material plus TLS 1.3 as the floor. */
export function secureContextOptions(m: TlsMaterial): tls.SecureContextOptions {
  return {
    cert: m.cert,
    key: m.key,
    ...(m.ca ? { ca: m.ca } : {}),
    ...(m.crl ? { crl: m.crl } : {}),
    minVersion: TLS_MIN_VERSION,
  };
}

function sameMaterial(a: TlsMaterial, b: TlsMaterial): boolean {
  const eq = (x?: Buffer, y?: Buffer): boolean => (x === undefined ? y === undefined : y !== undefined && x.equals(y));
  return eq(a.cert, b.cert) && eq(a.key, b.key) && eq(a.ca, b.ca) && eq(a.crl, b.crl) && a.deny.join('\n') === b.deny.join('\n');
}

export interface TlsFileWatcherOptions {
  readonly intervalMs?: number; // how often the files are re-read; default 10 s
  readonly log?: TlsLog;
}

/**
 * Re-reads a set of TLS files every interval and hands out the new material when it changed and is
 * usable. Polling (not inotify) because operators and secret managers replace files by rename or by
 * swapping a symlink, both of which a watch on the old inode misses. A half-replaced set (new cert, old
 * key) or a missing file keeps the previous material, so new connections never see a broken server.
 */
export class TlsFileWatcher {
  private material: TlsMaterial;
  private readonly listeners = new Set<(m: TlsMaterial) => void>();
  private readonly timer: NodeJS.Timeout;
  private reading = false;
  private lastProblem = '';

  private constructor(private readonly files: TlsFiles, initial: TlsMaterial, private readonly opts: TlsFileWatcherOptions) {
    this.material = initial;
    this.timer = setInterval(() => void this.poll(), opts.intervalMs ?? 10_000);
    this.timer.unref();
  }

  /** Reads and validates the files once; throws DomainError FAILED_PRECONDITION if they are unusable. */
  static async open(files: TlsFiles, opts: TlsFileWatcherOptions = {}): Promise<TlsFileWatcher> {
    let material: TlsMaterial;
    try {
      material = await readTlsMaterial(files);
      tls.createSecureContext(secureContextOptions(material));
    } catch (err) {
      throw new DomainError('FAILED_PRECONDITION', `tls: cannot use ${files.certPath}: ${(err as Error).message}`, { cause: err });
    }
    return new TlsFileWatcher(files, material, opts);
  }

  get current(): TlsMaterial {
    return this.material;
  }

  onChange(listener: (m: TlsMaterial) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    clearInterval(this.timer);
    this.listeners.clear();
  }

  /** Re-reads now (the timer calls this too); resolves when done. */
  async poll(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      const next = await readTlsMaterial(this.files);
      if (sameMaterial(next, this.material)) return;
      tls.createSecureContext(secureContextOptions(next)); // throws on a key that does not match its cert
      this.material = next;
      this.lastProblem = '';
      this.opts.log?.info({ cert: this.files.certPath }, 'tls: reloaded certificates');
      for (const listener of this.listeners) listener(next);
    } catch (err) {
      const problem = (err as Error).message;
      if (problem !== this.lastProblem) {
        this.opts.log?.warn({ cert: this.files.certPath, err: problem }, 'tls: keeping previous certificates');
        this.lastProblem = problem;
      }
    } finally {
      this.reading = false;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// gRPC server credentials

export interface MtlsServerOptions extends TlsFileWatcherOptions, ClientIdentityPolicy {
  readonly files: TlsFiles & { readonly caPath: string };
}

/**
 * Server credentials for the gRPC API: client certificates required and verified against `caPath`,
 * TLS 1.3 minimum, reloaded from the files without a restart. Established connections (and their open
 * streams) keep the context they were made with; new connections get the new one.
 *
 * Why not grpc-js's own createCertificateProviderServerCredentials + FileWatcherCertificateProvider:
 * grpc-js reloads with `setSecureContext({ca, cert, key})`, and Node's setSecureContext resets every
 * option it is not given, so the reloaded server would accept TLS 1.2 again; the provider also reports
 * a file that is briefly missing as `null`, which makes grpc-js drop every new connection until the next
 * poll, and delivers CA and identity separately. Subclassing ServerCredentials keeps minVersion (and the
 * CRL) in every context grpc-js installs.
 */
export class MtlsServerCredentials extends grpc.ServerCredentials {
  private constructor(private readonly watcher: TlsFileWatcher, private readonly policy: ClientIdentityPolicy) {
    super(
      { requestCert: true, rejectUnauthorized: true, minVersion: TLS_MIN_VERSION },
      secureContextOptions(watcher.current),
    );
    watcher.onChange((m) => this.updateSecureContextOptions(secureContextOptions(m)));
  }

  static async load(opts: MtlsServerOptions): Promise<MtlsServerCredentials> {
    if (!opts.files.caPath) throw new DomainError('INVALID_ARGUMENT', 'tls: a client CA is required for mutual TLS');
    const watcher = await TlsFileWatcher.open(opts.files, opts);
    return new MtlsServerCredentials(watcher, { allow: opts.allow, deny: opts.deny });
  }

  /** Allow/deny for a verified peer certificate, with the deny list as last read from disk. */
  checkPeer(cert: tls.PeerCertificate | undefined): PeerVerdict {
    const deny = [...(this.policy.deny ?? []), ...this.watcher.current.deny];
    return checkClientIdentity(cert, { allow: this.policy.allow, deny });
  }

  /** Re-reads the files now instead of waiting for the next interval. */
  reload(): Promise<void> {
    return this.watcher.poll();
  }

  /** Stops watching the files. */
  close(): void {
    this.watcher.close();
  }

  override _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Client side (tetrixctl)

export interface ClientTlsFiles {
  readonly caPath: string;
  readonly certPath: string;
  readonly keyPath: string;
}

/** Channel credentials for tetrixctl: the admin certificate, the node CA, TLS 1.3. */
export async function createClientCredentials(files: ClientTlsFiles): Promise<grpc.ChannelCredentials> {
  const [ca, cert, key] = await Promise.all([
    fs.readFile(files.caPath),
    fs.readFile(files.certPath),
    fs.readFile(files.keyPath),
  ]);
  return grpc.credentials.createFromSecureContext(tls.createSecureContext({ ca, cert, key, minVersion: TLS_MIN_VERSION }));
}
