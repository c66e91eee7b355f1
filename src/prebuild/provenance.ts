// SLSA Provenance v1 for a prebuild, as an in-toto Statement v1, signed in a DSSE envelope and stored
// beside the snapshot it describes. Layout and field meanings: docs/provenance.md.
// Specs: https://github.com/in-toto/attestation/tree/main/spec/v1 (statement.md, resource_descriptor.md,
// digest_set.md, field_types.md) and https://slsa.dev/spec/v1.0/provenance.
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import type { ObjectStorage } from '../content/storage';
import { DomainError, invalidArgument } from '../errors';
import { DsseEnvelope, IN_TOTO_PAYLOAD_TYPE, parseEnvelope, signEnvelope, DsseSigner } from './dsse';

export const IN_TOTO_STATEMENT_V1 = 'https://in-toto.io/Statement/v1';
export const SLSA_PROVENANCE_V1 = 'https://slsa.dev/provenance/v1';
/** Tetrix's buildType: "run these tasks in order in a fresh workspace from this image, snapshot /workspace". */
export const TETRIX_PREBUILD_BUILD_TYPE = 'https://tetrix.dev/prebuild/v1';
const BUILDER_ID_PREFIX = 'https://tetrix.dev/builder/node/';

// ---- types (field names exactly as the specs spell them) ----

export interface ResourceDescriptor {
  name?: string;
  uri?: string;
  digest?: Record<string, string>;
  content?: string;
  downloadLocation?: string;
  mediaType?: string;
  annotations?: Record<string, unknown>;
}

export interface SlsaProvenanceV1 {
  buildDefinition: {
    buildType: string;
    externalParameters: Record<string, unknown>;
    internalParameters?: Record<string, unknown>;
    resolvedDependencies?: ResourceDescriptor[];
  };
  runDetails: {
    builder: { id: string; version?: Record<string, string>; builderDependencies?: ResourceDescriptor[] };
    metadata?: { invocationId?: string; startedOn?: string; finishedOn?: string };
    byproducts?: ResourceDescriptor[];
  };
}

export interface InTotoStatementV1<P> {
  _type: typeof IN_TOTO_STATEMENT_V1;
  subject: ResourceDescriptor[];
  predicateType: string;
  predicate: P;
}

export type SlsaProvenanceStatement = InTotoStatementV1<SlsaProvenanceV1>;

// ---- building the statement ----

export interface PrebuildTaskInput {
  name: string;
  command: readonly string[];
  workingDir: string;
  /** Only the names are recorded: values can be secrets. */
  env?: Readonly<Record<string, string>>;
}

export interface PrebuildProvenanceInput {
  /** The snapshot object: its object name in storage, and the sha256 of its stored bytes (ObjectStorage.put's PutResult.sha256). */
  snapshot: { name: string; sha256: string };
  /** What was asked (externalParameters). */
  source: { repository: string; revision: string };
  /** What the node fetched itself (issue 17): the repository and the commit it resolved the revision to. Absent
   *  when the prebuild fetched nothing; then no repository is listed among resolvedDependencies. */
  fetchedSource?: { url: string; ref: string; commit: string };
  tasks: readonly PrebuildTaskInput[];
  /** The image the workspace ran: its ref as given in StartWorkspace and the sha256 the node resolved it to. */
  image: { ref: string; sha256: string };
  nodeId: string;
  tetrixVersion: string;
  /** Globally unique id of this run (e.g. the prebuild workspace id). */
  invocationId: string;
  startedOn: Date | number;
  finishedOn: Date | number;
  /** Further node facts for internalParameters (string values; never secrets). */
  nodeFacts?: Readonly<Record<string, string>>;
}

/** The builder.id of one node: each node signs with its own key, so each node is its own trust root. */
export function nodeBuilderId(nodeId: string): string {
  if (nodeId === '') throw invalidArgument('nodeId', 'must not be empty');
  return BUILDER_ID_PREFIX + encodeURIComponent(nodeId);
}

/** A ResourceURI for an image ref: OCI references become oci://REF; refs that are URIs already
 *  ("builtin:busybox") stay; paths become file URLs. */
export function imageResourceUri(ref: string): string {
  // An OCI reference (registry[:port]/repo...) before the scheme rule: "localhost:5000/app" is no URI.
  if (/^[A-Za-z0-9.-]+(:\d+)?\/[^/]/.test(ref)) return `oci://${ref}`;
  if (/^[a-z][a-z0-9+.-]*:/.test(ref)) return ref;
  if (ref.startsWith('/')) return pathToFileURL(ref).href;
  if (ref === '') throw invalidArgument('image.ref', 'must not be empty');
  return `pkg:generic/${encodeURIComponent(ref)}`;
}

/** Builds the statement. Env values never enter it; timestamps are RFC 3339 UTC. */
export function buildPrebuildStatement(input: PrebuildProvenanceInput): SlsaProvenanceStatement {
  checkInput(input);
  return {
    _type: IN_TOTO_STATEMENT_V1,
    subject: [{ name: input.snapshot.name, digest: { sha256: input.snapshot.sha256 } }],
    predicateType: SLSA_PROVENANCE_V1,
    predicate: {
      buildDefinition: {
        buildType: TETRIX_PREBUILD_BUILD_TYPE,
        externalParameters: {
          source: { repository: input.source.repository, revision: input.source.revision },
          tasks: input.tasks.map((t) => ({
            name: t.name,
            command: [...t.command],
            workingDir: t.workingDir,
            envNames: Object.keys(t.env ?? {}).sort(),
          })),
          image: input.image.ref,
        },
        internalParameters: { nodeId: input.nodeId, ...input.nodeFacts },
        resolvedDependencies: [
          ...(input.fetchedSource ? [repositoryDescriptor(input.fetchedSource)] : []),
          { uri: imageResourceUri(input.image.ref), digest: { sha256: input.image.sha256 } },
        ],
      },
      runDetails: {
        builder: { id: nodeBuilderId(input.nodeId), version: { tetrix: input.tetrixVersion } },
        metadata: {
          invocationId: input.invocationId,
          startedOn: rfc3339(input.startedOn),
          finishedOn: rfc3339(input.finishedOn),
        },
      },
    },
  };
}

/** SLSA's convention for a git dependency: uri git+<url>[@<ref>], digest gitCommit (digest_set.md). */
export function repositoryDescriptor(f: { url: string; ref: string; commit: string }): ResourceDescriptor {
  const base = f.url.startsWith('git:') ? f.url : `git+${f.url}`;
  return { uri: f.ref ? `${base}@${f.ref}` : base, digest: { gitCommit: f.commit }, name: 'source' };
}

function checkInput(input: PrebuildProvenanceInput): void {
  if (input.snapshot.name === '') throw invalidArgument('snapshot.name', 'must not be empty');
  if (!SHA256_HEX.test(input.snapshot.sha256)) throw invalidArgument('snapshot.sha256', 'must be 64 lowercase hex digits');
  if (!SHA256_HEX.test(input.image.sha256)) throw invalidArgument('image.sha256', 'must be 64 lowercase hex digits');
  if (input.source.repository === '') throw invalidArgument('source.repository', 'must not be empty');
  if (input.source.revision === '') throw invalidArgument('source.revision', 'must not be empty');
  if (input.fetchedSource && !/^([0-9a-f]{40}|[0-9a-f]{64})$/.test(input.fetchedSource.commit)) throw invalidArgument('fetchedSource.commit', 'must be a full commit id');
  if (input.tasks.length === 0) throw invalidArgument('tasks', 'a prebuild has at least one task');
  input.tasks.forEach((t, i) => {
    if (t.name === '') throw invalidArgument(`tasks[${i}].name`, 'must not be empty');
    if (t.command.length === 0) throw invalidArgument(`tasks[${i}].command`, 'must not be empty');
  });
  if (input.invocationId === '') throw invalidArgument('invocationId', 'must not be empty');
  if (input.tetrixVersion === '') throw invalidArgument('tetrixVersion', 'must not be empty');
  if (toMs(input.finishedOn) < toMs(input.startedOn)) throw invalidArgument('finishedOn', 'is before startedOn');
}

function toMs(t: Date | number): number {
  const ms = typeof t === 'number' ? t : t.getTime();
  if (!Number.isFinite(ms)) throw invalidArgument('timestamp', 'not a valid time');
  return ms;
}

function rfc3339(t: Date | number): string {
  return new Date(toMs(t)).toISOString();
}

// ---- signing and storage ----

/**
 * What provenance needs of the snapshot storage: src/content's ObjectStorage (fs or s3) fits as is. The
 * envelope lives in the same store as the snapshot, under the snapshot's object name plus a suffix.
 */
export type ProvenanceObjectStore = Pick<ObjectStorage, 'put' | 'get'>;

const PROVENANCE_SUFFIX = '.provenance.dsse.json';
// An envelope is a few KiB; refuse to buffer a huge object someone put under the name.
const MAX_ENVELOPE_BYTES = 1024 * 1024;

/** The envelope's object name: the snapshot's object name plus a fixed suffix, so one names the other. */
export function provenanceObjectName(snapshotObject: string): string {
  if (snapshotObject === '') throw invalidArgument('snapshotObject', 'must not be empty');
  return snapshotObject + PROVENANCE_SUFFIX;
}

export interface PublishedProvenance {
  objectName: string;
  statement: SlsaProvenanceStatement;
  envelope: DsseEnvelope;
}

/**
 * Builds, self-checks (strictly), signs and stores the provenance of one successful prebuild, beside the
 * snapshot object input.snapshot.name.
 */
export async function publishPrebuildProvenance(
  store: ProvenanceObjectStore,
  input: PrebuildProvenanceInput,
  signer: DsseSigner,
): Promise<PublishedProvenance> {
  const objectName = provenanceObjectName(input.snapshot.name);
  const statement = buildPrebuildStatement(input);
  checkSlsaV1Statement(statement, { strict: true });
  const envelope = signEnvelope(IN_TOTO_PAYLOAD_TYPE, Buffer.from(JSON.stringify(statement)), signer);
  await store.put(objectName, Readable.from([Buffer.from(JSON.stringify(envelope, null, 2) + '\n')]));
  return { objectName, statement, envelope };
}

/** Reads the envelope stored beside a snapshot object (shape-checked, not yet verified: see verify.ts). */
export async function readProvenanceEnvelope(store: Pick<ObjectStorage, 'get'>, snapshotObject: string): Promise<DsseEnvelope> {
  const objectName = provenanceObjectName(snapshotObject);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of await store.get(objectName)) {
    size += chunk.length;
    if (size > MAX_ENVELOPE_BYTES) throw new DomainError('DATA_LOSS', `dsse malformed: ${objectName} is larger than ${MAX_ENVELOPE_BYTES} bytes`);
    chunks.push(Buffer.from(chunk));
  }
  return parseEnvelope(Buffer.concat(chunks));
}

// ---- validation against the in-toto Statement v1 and SLSA Provenance v1 schemas ----

export interface CheckOptions {
  /**
   * Also reject unknown field names. The in-toto parsing rules tell consumers to ignore unknown fields,
   * so verification is lenient; producers check strictly to catch a misspelt field. Extension fields
   * (SLSA: "<vendor>_<field>", with an underscore) are allowed either way.
   */
  strict?: boolean;
}

/** Every way obj departs from an SLSA v1 provenance Statement; empty when it conforms. */
export function slsaV1StatementProblems(obj: unknown, options: CheckOptions = {}): string[] {
  const c = new Checker(options.strict === true);
  c.statement(obj);
  return c.problems;
}

/** Returns obj typed when it conforms; otherwise DomainError DATA_LOSS "provenance malformed: ...". */
export function checkSlsaV1Statement(obj: unknown, options: CheckOptions = {}): SlsaProvenanceStatement {
  const problems = slsaV1StatementProblems(obj, options);
  if (problems.length > 0) throw new DomainError('DATA_LOSS', `provenance malformed: ${problems.join('; ')}`);
  return obj as SlsaProvenanceStatement;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;
// digest_set.md: the named standard algorithms are lowercase hex of a fixed length.
const HEX_DIGEST_LENGTHS: Record<string, number[]> = {
  sha256: [64], sha224: [56], sha384: [96], sha512: [128], sha512_224: [56], sha512_256: [64],
  sha3_224: [56], sha3_256: [64], sha3_384: [96], sha3_512: [128], sha1: [40], md5: [32],
  gitCommit: [40, 64], gitTree: [40, 64], gitBlob: [40, 64], gitTag: [40, 64],
};
// field_types.md Timestamp: RFC 3339, UTC ("Z").
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

type Obj = Record<string, unknown>;

class Checker {
  readonly problems: string[] = [];
  constructor(private readonly strict: boolean) {}

  statement(v: unknown): void {
    if (!this.object('statement', v, true)) return;
    this.fields('statement', v, ['_type', 'subject', 'predicateType', 'predicate']);
    if (v._type !== IN_TOTO_STATEMENT_V1) this.fail('_type', `must be "${IN_TOTO_STATEMENT_V1}"`);
    if (!Array.isArray(v.subject) || v.subject.length === 0) {
      this.fail('subject', 'must be a non-empty array');
    } else {
      v.subject.forEach((s, i) => {
        this.resourceDescriptor(`subject[${i}]`, s);
        if (isObject(s) && isUnset(s.digest)) this.fail(`subject[${i}].digest`, 'is required');
      });
    }
    if (v.predicateType !== SLSA_PROVENANCE_V1) this.fail('predicateType', `must be "${SLSA_PROVENANCE_V1}"`);
    this.provenance('predicate', v.predicate);
  }

  private provenance(at: string, v: unknown): void {
    if (!this.object(at, v, true)) return;
    this.fields(at, v, ['buildDefinition', 'runDetails']);
    const bd = `${at}.buildDefinition`;
    if (this.object(bd, v.buildDefinition, true)) {
      const d = v.buildDefinition;
      this.fields(bd, d, ['buildType', 'externalParameters', 'internalParameters', 'resolvedDependencies']);
      this.typeUri(`${bd}.buildType`, d.buildType, true);
      this.object(`${bd}.externalParameters`, d.externalParameters, true);
      this.object(`${bd}.internalParameters`, d.internalParameters, false);
      this.descriptors(`${bd}.resolvedDependencies`, d.resolvedDependencies);
    }
    const rd = `${at}.runDetails`;
    if (this.object(rd, v.runDetails, true)) {
      const r = v.runDetails;
      this.fields(rd, r, ['builder', 'metadata', 'byproducts']);
      this.builder(`${rd}.builder`, r.builder);
      this.metadata(`${rd}.metadata`, r.metadata);
      this.descriptors(`${rd}.byproducts`, r.byproducts);
    }
  }

  private builder(at: string, v: unknown): void {
    if (!this.object(at, v, true)) return;
    this.fields(at, v, ['id', 'version', 'builderDependencies']);
    this.typeUri(`${at}.id`, v.id, true);
    if (this.object(`${at}.version`, v.version, false)) {
      for (const [k, val] of Object.entries(v.version)) {
        if (typeof val !== 'string') this.fail(`${at}.version.${k}`, 'must be a string');
      }
    }
    this.descriptors(`${at}.builderDependencies`, v.builderDependencies);
  }

  private metadata(at: string, v: unknown): void {
    if (!this.object(at, v, false)) return;
    this.fields(at, v, ['invocationId', 'startedOn', 'finishedOn']);
    this.string(`${at}.invocationId`, v.invocationId, false);
    this.timestamp(`${at}.startedOn`, v.startedOn);
    this.timestamp(`${at}.finishedOn`, v.finishedOn);
  }

  private descriptors(at: string, v: unknown): void {
    if (isUnset(v)) return;
    if (!Array.isArray(v)) return this.fail(at, 'must be an array of ResourceDescriptor');
    v.forEach((d, i) => this.resourceDescriptor(`${at}[${i}]`, d));
  }

  private resourceDescriptor(at: string, v: unknown): void {
    if (!this.object(at, v, true)) return;
    this.fields(at, v, ['name', 'uri', 'digest', 'content', 'downloadLocation', 'mediaType', 'annotations']);
    if (isUnset(v.uri) && isUnset(v.digest) && isUnset(v.content)) this.fail(at, 'needs one of uri, digest, content');
    this.string(`${at}.name`, v.name, false);
    this.resourceUri(`${at}.uri`, v.uri);
    this.digestSet(`${at}.digest`, v.digest);
    if (this.string(`${at}.content`, v.content, false) && !BASE64.test(v.content as string)) this.fail(`${at}.content`, 'must be base64');
    this.resourceUri(`${at}.downloadLocation`, v.downloadLocation);
    this.string(`${at}.mediaType`, v.mediaType, false);
    this.object(`${at}.annotations`, v.annotations, false);
  }

  private digestSet(at: string, v: unknown): void {
    if (!this.object(at, v, false)) return;
    const entries = Object.entries(v);
    if (entries.length === 0) this.fail(at, 'must hold at least one digest');
    for (const [alg, value] of entries) {
      if (typeof value !== 'string') {
        this.fail(`${at}.${alg}`, 'must be a string');
        continue;
      }
      const lengths = HEX_DIGEST_LENGTHS[alg];
      if (lengths && !(/^[0-9a-f]+$/.test(value) && lengths.includes(value.length))) {
        this.fail(`${at}.${alg}`, `must be ${lengths.join(' or ')} lowercase hex digits`);
      }
    }
  }

  private timestamp(at: string, v: unknown): void {
    if (!this.string(at, v, false)) return;
    if (!TIMESTAMP.test(v as string) || Number.isNaN(Date.parse(v as string))) this.fail(at, 'must be an RFC 3339 UTC timestamp');
  }

  // field_types.md: TypeURI and ResourceURI are RFC 3986 URIs, case-normalized (lowercase scheme, authority).
  private typeUri(at: string, v: unknown, required: boolean): void {
    if (!this.string(at, v, required)) return;
    if (!isNormalizedUri(v as string)) this.fail(at, 'must be a case-normalized URI');
  }

  private resourceUri(at: string, v: unknown): void {
    this.typeUri(at, v, false);
  }

  /** True when v is a present string; a problem when it is present and not one, or required and unset. */
  private string(at: string, v: unknown, required: boolean): boolean {
    if (isUnset(v)) {
      if (required) this.fail(at, 'is required');
      return false;
    }
    if (typeof v !== 'string') {
      this.fail(at, 'must be a string');
      return false;
    }
    if (required && v === '') this.fail(at, 'must not be empty');
    return true;
  }

  /** True when v is a present object (narrowed); records a problem as for string(). */
  private object(at: string, v: unknown, required: boolean): v is Obj {
    if (isUnset(v)) {
      if (required) this.fail(at, 'is required');
      return false;
    }
    if (!isObject(v)) {
      this.fail(at, 'must be an object');
      return false;
    }
    return true;
  }

  private fields(at: string, v: Obj, known: string[]): void {
    if (!this.strict) return;
    for (const k of Object.keys(v)) {
      if (!known.includes(k) && !k.includes('_', 1)) this.fail(`${at}.${k}`, 'unknown field');
    }
  }

  private fail(at: string, why: string): void {
    this.problems.push(`${at}: ${why}`);
  }
}

// The specs: "Unset, null, and empty field values MUST be interpreted equivalently."
function isUnset(v: unknown): boolean {
  return v === undefined || v === null;
}

function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNormalizedUri(s: string): boolean {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):(\/\/([^/?#]*))?[^\s]*$/.exec(s);
  if (!m) return false;
  const scheme = m[1];
  const authority = m[3] ?? '';
  return scheme === scheme.toLowerCase() && authority === authority.toLowerCase();
}
