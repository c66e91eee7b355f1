// The node's PKI: a CA, the certificates it issues and revokes, and the node's own set in <stateDir>/pki,
// generated at first start as k3s does. The API server and the endpoint proxy use it (src/api/tls.ts,
// src/network/endpoints.ts); tetrixd's faces are described in docs/security-transport.md.
import 'reflect-metadata'; // @peculiar/x509 2.x resolves its parts through tsyringe, which needs Reflect metadata
import * as x509 from '@peculiar/x509';
import crypto, { webcrypto } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { DomainError } from '../errors';

// Every TLS face of the node refuses anything older. OpenSSL enforces it during the handshake.
export const TLS_MIN_VERSION = 'TLSv1.3' as const;
export const ADMIN_IDENTITY = 'tetrix-admin';

const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const EC_SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY_MS = 24 * 3600 * 1000;
const LEAF_LIFETIME_MS = 365 * DAY_MS;
const CA_LIFETIME_MS = 10 * 365 * DAY_MS;
const RENEW_BEFORE_MS = 30 * DAY_MS;
const BACKDATE_MS = 5 * 60 * 1000; // tolerate peers whose clock is a little behind

/**
 * A name a client certificate must carry to act as a node operator: one SAN type and its value, written
 * `dns:NAME` or `uri:URI` in the config. Typed, because a CA that issues a CN, an email address or a
 * URI that happens to spell `tetrix-admin` for someone else must not make them an operator.
 */
export interface OperatorIdentity {
  readonly type: 'dns' | 'uri';
  readonly value: string;
}

// ---------------------------------------------------------------------------------------------------------
// Certificates

export interface CertificateAuthority {
  readonly certPem: string;
  readonly keyPem: string;
}

export interface IssuedCertificate {
  readonly certPem: string;
  readonly keyPem: string;
  readonly serialNumber: string; // hex, as in a CRL
}

export interface CertificateRequest {
  readonly commonName: string;
  readonly usage: 'server' | 'client';
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly uris?: readonly string[];
  readonly emails?: readonly string[];
  readonly notBefore?: Date;
  readonly notAfter?: Date;
}

async function generateKeyPair(): Promise<webcrypto.CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
}

async function privateKeyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

async function importSigningKey(keyPem: string): Promise<webcrypto.CryptoKey> {
  const der = x509.PemConverter.decodeFirst(keyPem);
  return webcrypto.subtle.importKey('pkcs8', der, EC_KEY, false, ['sign']);
}

/** A self-signed ECDSA P-256 CA that may sign leaf certificates only (pathLen 0). */
export async function createCertificateAuthority(
  commonName: string,
  validity: { notBefore?: Date; notAfter?: Date } = {},
): Promise<CertificateAuthority> {
  const keys = await generateKeyPair();
  const notBefore = validity.notBefore ?? new Date(Date.now() - BACKDATE_MS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: [{ CN: [commonName] }, { O: ['tetrix'] }],
    keys,
    notBefore,
    notAfter: validity.notAfter ?? new Date(notBefore.getTime() + CA_LIFETIME_MS),
    signingAlgorithm: EC_SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await privateKeyPem(keys.privateKey) };
}

function subjectAltNames(req: CertificateRequest): x509.JsonGeneralName[] {
  return [
    ...(req.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(req.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(req.uris ?? []).map((value) => ({ type: 'url' as const, value })),
    ...(req.emails ?? []).map((value) => ({ type: 'email' as const, value })),
  ];
}

/** An ECDSA P-256 leaf certificate signed by `ca`, for TLS serving or for a TLS client. */
export async function issueCertificate(ca: CertificateAuthority, req: CertificateRequest): Promise<IssuedCertificate> {
  const keys = await generateKeyPair();
  const caCert = new x509.X509Certificate(ca.certPem);
  const notBefore = req.notBefore ?? new Date(Date.now() - BACKDATE_MS);
  const eku = req.usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth;
  const cert = await x509.X509CertificateGenerator.create({
    subject: [{ CN: [req.commonName] }, { O: ['tetrix'] }],
    issuer: caCert.subjectName.toString(),
    publicKey: keys.publicKey,
    signingKey: await importSigningKey(ca.keyPem),
    notBefore,
    notAfter: req.notAfter ?? new Date(notBefore.getTime() + LEAF_LIFETIME_MS),
    signingAlgorithm: EC_SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([eku]),
      new x509.SubjectAlternativeNameExtension(subjectAltNames(req)),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await privateKeyPem(keys.privateKey), serialNumber: cert.serialNumber };
}

/** A CRL signed by `ca` that revokes the given serial numbers (hex). */
export async function createRevocationList(
  ca: CertificateAuthority,
  serialNumbers: readonly string[],
  nextUpdate: Date = new Date(Date.now() + 7 * DAY_MS),
): Promise<string> {
  const caCert = new x509.X509Certificate(ca.certPem);
  const crl = await x509.X509CrlGenerator.create({
    issuer: caCert.subjectName.toString(),
    thisUpdate: new Date(Date.now() - BACKDATE_MS),
    nextUpdate,
    signingAlgorithm: EC_SIGN,
    signingKey: await importSigningKey(ca.keyPem),
    entries: serialNumbers.map((serialNumber) => ({ serialNumber, revocationDate: new Date() })),
    extensions: [await x509.AuthorityKeyIdentifierExtension.create(caCert)],
  });
  return x509.PemConverter.encode(crl.rawData, 'X509 CRL'); // RFC 7468 label; OpenSSL rejects 'CRL'
}

// ---------------------------------------------------------------------------------------------------------
// The node PKI in <stateDir>/pki (first start generates it; later starts reuse it)

export interface NodePkiOptions {
  readonly stateDir: string;
  readonly hostname: string;
  readonly addresses?: readonly string[]; // extra IPs or DNS names the API is reached at
  readonly nodeDomain?: string;           // endpoints are served as *.<nodeDomain>
  readonly adminIdentity?: OperatorIdentity; // the SAN of the admin certificate; default dns:tetrix-admin
}

export interface NodePki {
  readonly dir: string;
  readonly caCertPath: string;
  readonly caKeyPath: string;
  readonly serverCertPath: string;
  readonly serverKeyPath: string;
  readonly adminCertPath: string;
  readonly adminKeyPath: string;
  readonly endpointCertPath?: string; // only with nodeDomain
  readonly endpointKeyPath?: string;
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(() => true, () => false);
}

// Write-then-rename, so a reader (or a crash) never sees half a key.
async function writeFileAtomic(file: string, data: string, mode: number): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  await fs.writeFile(tmp, data, { mode, flag: 'wx' });
  await fs.rename(tmp, file);
}

async function ensurePrivateDir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
}

async function loadOrCreateCa(certPath: string, keyPath: string): Promise<CertificateAuthority> {
  const [haveCert, haveKey] = await Promise.all([exists(certPath), exists(keyPath)]);
  if (haveCert !== haveKey) {
    // Never replace half a CA: every certificate it signed would silently stop working.
    throw new DomainError('FAILED_PRECONDITION', `pki: ${haveCert ? keyPath : certPath} is missing`);
  }
  if (haveCert) {
    return { certPem: await fs.readFile(certPath, 'utf8'), keyPem: await fs.readFile(keyPath, 'utf8') };
  }
  const ca = await createCertificateAuthority(`tetrix-node-ca@${crypto.randomBytes(4).toString('hex')}`);
  await writeFileAtomic(keyPath, ca.keyPem, 0o600);
  await writeFileAtomic(certPath, ca.certPem, 0o644);
  return ca;
}

// Reissue when the names differ either way: a cert missing a name fails clients, one with stale names
// vouches for an address the node no longer has.
function namesMatch(cert: crypto.X509Certificate, req: CertificateRequest): boolean {
  const sans = parseSubjectAltName(cert.subjectAltName ?? '');
  const dns = sans.filter((s) => s.type === 'DNS').map((s) => s.value).sort();
  const ipCount = sans.filter((s) => s.type === 'IP Address').length;
  const wantDns = [...(req.dnsNames ?? [])].sort();
  const uris = sans.filter((s) => s.type === 'URI').map((s) => s.value).sort();
  const wantUris = [...(req.uris ?? [])].sort();
  const wantIps = req.ipAddresses ?? [];
  return (
    JSON.stringify(dns) === JSON.stringify(wantDns) &&
    JSON.stringify(uris) === JSON.stringify(wantUris) &&
    ipCount === wantIps.length &&
    wantIps.every((ip) => cert.checkIP(ip) !== undefined)
  );
}

function leafNeedsIssuing(pem: string | undefined, ca: CertificateAuthority, req: CertificateRequest): boolean {
  if (pem === undefined) return true;
  try {
    const cert = new crypto.X509Certificate(pem);
    const caCert = new crypto.X509Certificate(ca.certPem);
    if (!cert.checkIssued(caCert) || !cert.verify(caCert.publicKey)) return true;
    if (new Date(cert.validTo).getTime() - Date.now() < RENEW_BEFORE_MS) return true;
    return !namesMatch(cert, req);
  } catch {
    return true;
  }
}

async function ensureLeaf(
  ca: CertificateAuthority,
  certPath: string,
  keyPath: string,
  req: CertificateRequest,
): Promise<void> {
  const pem = (await exists(keyPath)) ? await fs.readFile(certPath, 'utf8').catch(() => undefined) : undefined;
  if (!leafNeedsIssuing(pem, ca, req)) return;
  const leaf = await issueCertificate(ca, req);
  await writeFileAtomic(keyPath, leaf.keyPem, 0o600);
  await writeFileAtomic(certPath, leaf.certPem, 0o644);
}

function splitAddresses(names: readonly string[]): { dnsNames: string[]; ipAddresses: string[] } {
  const unique = [...new Set(names.filter((n) => n.length > 0))];
  return { dnsNames: unique.filter((n) => net.isIP(n) === 0), ipAddresses: unique.filter((n) => net.isIP(n) !== 0) };
}

/**
 * Creates the node CA, the API server certificate (hostname, localhost, 127.0.0.1, ::1 and `addresses`),
 * the `tetrix-admin` client certificate (its SAN: `adminIdentity`) and, with `nodeDomain`, the `*.<nodeDomain>` endpoint certificate.
 * Existing files are kept; a leaf is reissued when it is missing, not from this CA, within 30 days of
 * expiry, or its names changed. Directory 0700, keys 0600.
 */
export async function ensureNodePki(opts: NodePkiOptions): Promise<NodePki> {
  const dir = path.join(opts.stateDir, 'pki');
  await ensurePrivateDir(dir);
  const at = (name: string): string => path.join(dir, name);
  const pki: NodePki = {
    dir,
    caCertPath: at('ca.crt'),
    caKeyPath: at('ca.key'),
    serverCertPath: at('server.crt'),
    serverKeyPath: at('server.key'),
    adminCertPath: at('admin.crt'),
    adminKeyPath: at('admin.key'),
    ...(opts.nodeDomain ? { endpointCertPath: at('endpoints.crt'), endpointKeyPath: at('endpoints.key') } : {}),
  };
  const ca = await loadOrCreateCa(pki.caCertPath, pki.caKeyPath);
  const names = splitAddresses([opts.hostname, 'localhost', '127.0.0.1', '::1', ...(opts.addresses ?? [])]);
  await ensureLeaf(ca, pki.serverCertPath, pki.serverKeyPath, { commonName: opts.hostname, usage: 'server', ...names });
  // The admin certificate carries the operator identity as the SAN type it is configured with.
  const admin: OperatorIdentity = opts.adminIdentity ?? { type: 'dns', value: ADMIN_IDENTITY };
  await ensureLeaf(ca, pki.adminCertPath, pki.adminKeyPath, {
    commonName: ADMIN_IDENTITY,
    usage: 'client',
    ...(admin.type === 'dns' ? { dnsNames: [admin.value] } : { uris: [admin.value] }),
  });
  if (opts.nodeDomain && pki.endpointCertPath && pki.endpointKeyPath) {
    await ensureLeaf(ca, pki.endpointCertPath, pki.endpointKeyPath, {
      commonName: `*.${opts.nodeDomain}`,
      usage: 'server',
      dnsNames: [`*.${opts.nodeDomain}`, opts.nodeDomain],
    });
  }
  // An operator may have loosened a mode by hand; the keys are only ever the daemon's.
  for (const key of [pki.caKeyPath, pki.serverKeyPath, pki.adminKeyPath, pki.endpointKeyPath]) {
    if (key) await fs.chmod(key, 0o600);
  }
  return pki;
}


/** Node's `subjectaltname` text (`DNS:a, URI:b, DNS:"quoted, value"`) split into entries. */
export function parseSubjectAltName(text: string): { type: string; value: string }[] {
  const out: { type: string; value: string }[] = [];
  const entry = /(DNS|URI|email|IP Address|DirName|othername|Registered ID):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/g;
  for (const m of text.matchAll(entry)) {
    const raw = m[2] ?? '';
    out.push({ type: m[1] ?? '', value: raw.startsWith('"') ? (JSON.parse(raw) as string) : raw });
  }
  return out;
}
