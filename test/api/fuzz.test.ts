// Every RPC of WorkspaceService and NodeService fed malformed input over the real daemon's mutual-TLS
// port: at least 1,000 cases per RPC from a seeded generator (adversarial values in well-typed fields,
// wrong wire types, unknown and duplicated fields, nested garbage, truncated and random bytes), then
// raw HTTP/2 frames no gRPC client would send. The daemon must answer every case with a status from
// the RPC's documented set, within its deadline, stay alive and healthy, and create nothing.
//
// Replay a run with TETRIX_FUZZ_SEED=<seed> (printed as a comment); TETRIX_FUZZ_CASES sets the count.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { service as healthService } from 'grpc-health-check';
import { createClientCredentials } from '../../src/api/tls';
import { loadProto } from '../../src/api/server';
import { startDaemon, uniqueName, type Daemon } from '../helpers/daemon';

const S = grpc.status;
const CASES = Number(process.env.TETRIX_FUZZ_CASES ?? 1000);
const SEED = Number(process.env.TETRIX_FUZZ_SEED ?? crypto.randomInt(2 ** 31));
const CONCURRENCY = 16;
const DEADLINE_MS = 15_000;
const STREAM_OPEN_MS = 150; // a Watch with a valid filter stays open by design; we hang up after this
const ENV_SECRET = `tetrix-fuzz-secret-${crypto.randomBytes(6).toString('hex')}`; // must never come back

// ---------------------------------------------------------------------------------------------------------
// A small seeded PRNG (mulberry32) and the pickers built on it

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const rand = mulberry32(SEED);
const int = (n: number): number => Math.floor(rand() * n);
const chance = (p: number): boolean => rand() < p;
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));
const ascii = (n: number, alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789-_.:@/ '): string =>
  Array.from({ length: n }, () => alphabet[int(alphabet.length)]).join('');

// ---------------------------------------------------------------------------------------------------------
// Adversarial values

const strings: Array<() => string> = [
  () => '',
  () => ascii(1 + int(40)),
  () => `fz-${ascii(1 + int(20), 'abcdefghijklmnopqrstuvwxyz0123456789')}`, // a well-formed id nobody has
  () => ascii(64 + int(200), 'abcdefghijklmnopqrstuvwxyz0123456789-'),  // too long for an id
  () => `${ascii(3)}\0${ascii(3)}`,
  () => '\0',
  () => 'UPPER-case',
  () => '-leading-dash',
  () => '../../../../etc/passwd',
  () => '/proc/self/root',
  () => 'builtin:../../x',
  () => 'builtin:nope',
  () => '$(reboot) `id` ; rm -rf /',
  () => '%s%s%n%x',
  () => '\n{"level":60,"msg":"forged log line"}\n',
  () => '\u202e\u0000\ud800\udfff\ud83d\ude00 é 中文 \u200b',
  () => '\ud800', // a lone surrogate: encodes as U+FFFD
  () => 'a'.repeat(1024 + int(8192)),
  () => 'x'.repeat(64 * 1024 + int(200 * 1024)),
  () => String(pick([-1, 0, 1, 2 ** 31, 2 ** 53, -(2 ** 63)])),
  () => pick(['NaN', 'Infinity', '-0', '1e309', '0x10', '9223372036854775808']),
  () => '{"__proto__":{"polluted":true}}',
  () => '__proto__',
  () => 'constructor',
  () => Buffer.from(bytes(1 + int(64))).toString('latin1'),
];
const str = (): string => pick(strings)();

// Enum, uint32, int64 and bool values, as raw 64-bit varints (negative numbers as two's complement).
const enumValues = [0n, 1n, 2n, 3n, 99n, 2n ** 31n - 1n, -1n, 2n ** 32n + 1n, 2n ** 64n - 1n];
const uint32Values = [0n, 1n, 22n, 80n, 8080n, 65535n, 65536n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 63n, -1n];
const int64Values = [0n, 1n, 7n, 8n << 20n, 10n, 1000n, 2n ** 62n, 2n ** 63n - 1n, -1n, -(2n ** 63n), 2n ** 64n - 1n];
const numberFrom = (pool: bigint[]): bigint => (chance(0.8) ? pick(pool) : BigInt(int(2 ** 31)) * (chance(0.5) ? 1n : BigInt(int(2 ** 31))));

// ---------------------------------------------------------------------------------------------------------
// Protobuf wire encoding, by hand, so the cases can break the rules a generated encoder would keep

function varint(value: bigint, overlong = false): Buffer {
  let v = BigInt.asUintN(64, value);
  const out: number[] = [];
  do {
    const byte = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v > 0n || (overlong && out.length < 10) ? byte | 0x80 : byte);
  } while (v > 0n || (overlong && out.length < 10));
  if (overlong) out.push(0);
  return Buffer.from(out);
}
const key = (field: number, wire: number): Buffer => varint(BigInt(field) * 8n + BigInt(wire));
const lengthDelimited = (field: number, payload: Buffer): Buffer => Buffer.concat([key(field, 2), varint(BigInt(payload.length)), payload]);
const varintField = (field: number, v: bigint): Buffer => Buffer.concat([key(field, 0), varint(v, chance(0.02))]);

type Kind = 'string' | 'enum' | 'uint32' | 'int64' | 'bool' | 'strings' | 'uint32s' | 'map' | { message: Schema; repeated?: boolean };
type Schema = Record<number, Kind>;

const Resources: Schema = { 1: 'int64', 2: 'int64', 3: 'int64' };
const Task: Schema = { 1: 'string', 2: 'strings', 3: 'string', 4: 'map' };
const Source: Schema = { 1: 'string', 2: 'string' };
const StartRequest: Schema = {
  1: 'string', 2: 'string', 3: 'string', 4: 'enum', 5: 'string', 6: 'strings', 7: 'map', 8: { message: Resources }, 9: 'enum',
  10: 'uint32s', 11: 'string', 12: 'string', 13: { message: Task, repeated: true }, 14: { message: Source }, 15: 'string',
};

/** A value of the right wire type for a field of this kind, adversarial inside. */
function encodeField(field: number, kind: Kind): Buffer {
  if (typeof kind === 'object') {
    const count = kind.repeated ? int(4) : 1;
    return Buffer.concat(Array.from({ length: count }, () => lengthDelimited(field, chance(0.1) ? bytes(int(32)) : encodeMessage(kind.message))));
  }
  switch (kind) {
    case 'string':
      return lengthDelimited(field, Buffer.from(str()));
    case 'strings': {
      const count = chance(0.02) ? 4097 + int(100) : int(6);
      return Buffer.concat(Array.from({ length: count }, () => lengthDelimited(field, Buffer.from(count > 100 ? 'a' : str()))));
    }
    case 'enum':
      return varintField(field, numberFrom(enumValues));
    case 'uint32':
      return varintField(field, numberFrom(uint32Values));
    case 'int64':
      return varintField(field, numberFrom(int64Values));
    case 'bool':
      return varintField(field, pick([0n, 1n, 2n, 255n, 2n ** 64n - 1n]));
    case 'uint32s': {
      const values = Array.from({ length: chance(0.05) ? 65 + int(100) : int(5) }, () => numberFrom(uint32Values));
      if (chance(0.5)) return lengthDelimited(field, Buffer.concat(values.map((v) => varint(v)))); // packed
      return Buffer.concat(values.map((v) => varintField(field, v)));
    }
    case 'map': {
      const count = chance(0.02) ? 2000 + int(2000) : int(4);
      const entry = (): Buffer => {
        const k = pick([() => str(), () => 'PATH', () => '__proto__', () => 'A'.repeat(300), () => 'GOOD_NAME']);
        return lengthDelimited(field, Buffer.concat([lengthDelimited(1, Buffer.from(k())), lengthDelimited(2, Buffer.from(chance(0.5) ? ENV_SECRET : str()))]));
      };
      return Buffer.concat(Array.from({ length: count }, entry));
    }
  }
}

/** The same field with a wire type its kind does not have. */
function wrongWireType(field: number, kind: Kind): Buffer {
  const lengthDelimitedKind = kind === 'string' || kind === 'strings' || kind === 'map' || typeof kind === 'object';
  if (lengthDelimitedKind) return pick([varintField(field, numberFrom(int64Values)), Buffer.concat([key(field, 5), bytes(4)]), Buffer.concat([key(field, 1), bytes(8)])]);
  return pick([lengthDelimited(field, Buffer.from(str())), Buffer.concat([key(field, 5), bytes(4)]), Buffer.concat([key(field, 3), key(field, 4)])]);
}

function unknownField(): Buffer {
  const field = pick([16, 99, 1000, 2 ** 29 - 1, 1 + int(5000)]);
  return pick([
    () => varintField(field, numberFrom(int64Values)),
    () => lengthDelimited(field, bytes(int(64))),
    () => Buffer.concat([key(field, 5), bytes(4)]),
    () => Buffer.concat([key(field, 1), bytes(8)]),
    () => Buffer.concat([key(field, 3), varintField(1, 1n), key(field, 4)]), // a group
  ])();
}

function encodeMessage(schema: Schema): Buffer {
  const parts: Buffer[] = [];
  for (const [f, kind] of Object.entries(schema)) {
    const field = Number(f);
    if (!chance(0.6)) continue;
    parts.push(chance(0.05) ? wrongWireType(field, kind) : encodeField(field, kind));
    if (chance(0.05)) parts.push(encodeField(field, kind)); // a singular field twice: the last one wins
  }
  while (chance(0.1)) parts.push(unknownField());
  // Field order on the wire is not guaranteed; shuffle now and then.
  if (chance(0.2)) parts.sort(() => rand() - 0.5);
  return Buffer.concat(parts);
}

/** Byte-level damage: truncation, flipped bytes, inserted garbage, or bytes that were never a message. */
function damage(message: Buffer): Buffer {
  return pick([
    () => message.subarray(0, int(message.length + 1)),
    () => {
      const copy = Buffer.from(message);
      for (let i = 0; i < 1 + int(4) && copy.length > 0; i++) copy[int(copy.length)] = int(256);
      return copy;
    },
    () => Buffer.concat([message.subarray(0, int(message.length + 1)), bytes(1 + int(16)), message.subarray(int(message.length + 1))]),
    () => bytes(int(512)),
    () => Buffer.concat([key(1, 2), varint(2n ** 40n)]), // a length far past the end
    () => Buffer.concat([Buffer.alloc(20_000, 0x1b), Buffer.alloc(20_000, 0x1c)]), // 20,000 nested groups
    () => Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), // an 11-byte varint
  ])();
}

// ---------------------------------------------------------------------------------------------------------
// The RPCs, what their requests look like, and which statuses each may answer with

interface Rpc {
  service: 'WorkspaceService' | 'NodeService';
  name: string;
  streaming: boolean;
  schema: Schema;
  /** A request that gets past the first checks, for the generator to damage a little. */
  nearlyValid?: () => Buffer;
  /** Statuses a well-formed request may get (besides those every call may get; see `always`). */
  allowed: grpc.status[];
  /** A Watch with an acceptable filter stays open: hanging up on it is the expected end. */
  staysOpen?: boolean;
  /** The share of cases sent as the operator (default 0.75; the rest split between a user and garbage). */
  operatorShare?: number;
}

function oneMoreStartField(): Buffer {
  const field = pick([3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
  return encodeField(field, StartRequest[field]!);
}

const fzId = (): string => `fz-${ascii(1 + int(12), 'abcdefghijklmnopqrstuvwxyz0123456789')}`;
const idField = (): Buffer => lengthDelimited(1, Buffer.from(chance(0.5) ? fzId() : str()));

// Every call may be refused for who it is (UNAUTHENTICATED) or for its size (RESOURCE_EXHAUSTED: over
// 4 MiB, refused by grpc-js before any handler runs).
const always = [S.UNAUTHENTICATED, S.RESOURCE_EXHAUSTED];
// Unknown workspaces: NOT_FOUND for operators, PERMISSION_DENIED for users (which never tells).
const byId = [S.INVALID_ARGUMENT, S.NOT_FOUND, S.PERMISSION_DENIED];

const rpcs: Rpc[] = [
  {
    service: 'WorkspaceService', name: 'StartWorkspace', streaming: false, schema: StartRequest,
    // Never a known image: 'builtin:busybox' is not generated, and the node has no local images. So no
    // case can create a workspace; OK would mean one did, which the test counts and removes.
    nearlyValid: () => Buffer.concat([
      lengthDelimited(1, Buffer.from(fzId())),
      lengthDelimited(2, Buffer.from(chance(0.7) ? 'fuzzer' : str())),
      lengthDelimited(5, Buffer.from(pick(['fuzz-image', 'builtin:nope', 'ubuntu-22.04', str()]))),
      lengthDelimited(6, Buffer.from('/bin/true')),
      ...(chance(0.5) ? [oneMoreStartField()] : []),
    ]),
    // INVALID_ARGUMENT from validation, NOT_FOUND for the unknown image, PERMISSION_DENIED for a user
    // creating someone else's workspace, FAILED_PRECONDITION (e.g. ISOLATED on a node without network).
    allowed: [S.INVALID_ARGUMENT, S.NOT_FOUND, S.PERMISSION_DENIED, S.FAILED_PRECONDITION, S.ALREADY_EXISTS, S.OK],
  },
  { service: 'WorkspaceService', name: 'StopWorkspace', streaming: false, schema: { 1: 'string', 2: 'uint32' }, nearlyValid: () => Buffer.concat([idField(), varintField(2, numberFrom(uint32Values))]), allowed: byId },
  // Teardown is idempotent: an unknown but well-formed id is OK with existed=false (operators).
  { service: 'WorkspaceService', name: 'TeardownWorkspace', streaming: false, schema: { 1: 'string', 2: 'bool' }, nearlyValid: idField, allowed: [...byId, S.FAILED_PRECONDITION, S.OK] },
  { service: 'WorkspaceService', name: 'GetWorkspace', streaming: false, schema: { 1: 'string' }, nearlyValid: idField, allowed: byId },
  // ListWorkspaces filters and never refuses a filter: OK, and always empty here.
  { service: 'WorkspaceService', name: 'ListWorkspaces', streaming: false, schema: { 1: 'string' }, allowed: [S.OK] },
  { service: 'WorkspaceService', name: 'WatchWorkspaces', streaming: true, schema: { 1: 'string' }, nearlyValid: idField, allowed: [S.INVALID_ARGUMENT], staysOpen: true },
  // BackupWorkspace is not enabled on this node yet.
  { service: 'WorkspaceService', name: 'BackupWorkspace', streaming: true, schema: { 1: 'string', 2: 'bool' }, nearlyValid: idField, allowed: [...byId, S.FAILED_PRECONDITION] },
  { service: 'WorkspaceService', name: 'UpdatePorts', streaming: false, schema: { 1: 'string', 2: 'uint32s' }, nearlyValid: () => Buffer.concat([idField(), encodeField(2, 'uint32s')]), allowed: [...byId, S.FAILED_PRECONDITION] },
  { service: 'WorkspaceService', name: 'StreamLogs', streaming: true, schema: { 1: 'string', 2: 'bool' }, nearlyValid: () => Buffer.concat([idField(), varintField(2, 1n)]), allowed: byId },
  // GetNodeInfo takes nothing: whatever decodes is OK.
  { service: 'NodeService', name: 'GetNodeInfo', streaming: false, schema: {}, allowed: [S.OK] },
  // Operators only. Every operator case that decodes is a real rotation (OK, counted below), so few
  // cases come as the operator: a user gets PERMISSION_DENIED, garbage UNAUTHENTICATED. Random bytes can
  // decode as retire_key_ids (field 2): not a key id is INVALID_ARGUMENT, a key the node lacks NOT_FOUND.
  { service: 'NodeService', name: 'RotateKey', streaming: false, schema: { 1: 'bool' }, allowed: [S.OK, S.PERMISSION_DENIED, S.FAILED_PRECONDITION, S.INVALID_ARGUMENT, S.NOT_FOUND], operatorShare: 0.05 },
];

// ---------------------------------------------------------------------------------------------------------
// Who calls: mostly the operator (so cases reach the handlers), sometimes a user, sometimes garbage

const controlPlane = crypto.generateKeyPairSync('ed25519');
let nodeId = '';
function userToken(sub: string): string {
  const seg = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${seg({ alg: 'EdDSA', typ: 'JWT' })}.${seg({ sub, teams: ['fuzz-team'], aud: nodeId, iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${input}.${crypto.sign(null, Buffer.from(input), controlPlane.privateKey).toString('base64url')}`;
}

/** A real token with one payload character changed: the signature no longer matches. */
function forged(): string {
  const [h, p, sig] = userToken('fuzzer').split('.') as [string, string, string];
  const i = int(p.length);
  return `${h}.${p.slice(0, i)}${p[i] === 'A' ? 'B' : 'A'}${p.slice(i + 1)}.${sig}`;
}

type Caller = 'operator' | 'user' | 'garbage';
function callerMetadata(operatorShare = 0.75): { caller: Caller; metadata: grpc.Metadata } {
  const metadata = new grpc.Metadata();
  const roll = rand();
  if (roll < operatorShare) return { caller: 'operator', metadata };
  if (roll < operatorShare + (1 - operatorShare) * 0.6) {
    metadata.set('authorization', `Bearer ${userToken('fuzzer')}`);
    return { caller: 'user', metadata };
  }
  const printable = ' !#$%&()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~';
  const value = pick([
    () => `Bearer ${ascii(1 + int(200), printable.replace(' ', ''))}`,
    () => `Bearer ${'A'.repeat(9000)}`,
    () => `Basic ${Buffer.from('admin:admin').toString('base64')}`,
    () => 'Bearer',
    () => `Bearer ${forged()}`,
    () => `Bearer a.b.c`,
    () => ascii(int(100), printable),
    () => ` Bearer ${userToken('fuzzer')} `,
  ])();
  // Not two authorization values: grpc-js 1.14's client fails such a call locally and then drops its
  // own connection (load-balancing-call.js does not return after the error); no server is involved.
  metadata.set('authorization', value);
  // A value with leading or trailing whitespace is not a valid HTTP/2 field value (RFC 9113 8.2.1):
  // Node's HTTP/2 layer drops the field before grpc-js sees it, so the call arrives without a token
  // and is judged on the certificate alone (here the operator's).
  return { caller: value.trim() === value ? 'garbage' : 'operator', metadata };
}

// ---------------------------------------------------------------------------------------------------------
// One case, one outcome

interface Outcome {
  rpc: string;
  code: grpc.status;
  details: string;
  caller: Caller;
  decodes: boolean;   // whether the server's own decoder accepts the request bytes
  openByDesign?: boolean;
  bytes: number;
  response?: Buffer[];
}

const { definition } = loadProto();
type MethodDef = { requestDeserialize: (b: Buffer) => unknown };
const methodDef = (rpc: Rpc): MethodDef => (definition[`tetrix.agent.v1.${rpc.service}`] as unknown as Record<string, MethodDef>)[rpc.name]!;

function decodes(rpc: Rpc, message: Buffer): boolean {
  try {
    methodDef(rpc).requestDeserialize(message);
    return true;
  } catch {
    return false;
  }
}

function generate(rpc: Rpc): Buffer {
  const base = rpc.nearlyValid && chance(0.4) ? rpc.nearlyValid() : encodeMessage(rpc.schema);
  return chance(0.12) ? damage(base) : base;
}

const identity = (b: Buffer): Buffer => b;

function send(client: grpc.Client, rpc: Rpc, message: Buffer, caller: Caller, metadata: grpc.Metadata): Promise<Outcome> {
  const method = `/tetrix.agent.v1.${rpc.service}/${rpc.name}`;
  const base = { rpc: rpc.name, caller, decodes: decodes(rpc, message), bytes: message.length };
  const options = { deadline: Date.now() + DEADLINE_MS };
  return new Promise((resolve) => {
    if (!rpc.streaming) {
      client.makeUnaryRequest(method, identity, identity, message, metadata, options, (err, res) =>
        resolve({ ...base, code: err ? err.code : S.OK, details: err?.details ?? '', response: res ? [res] : [] }),
      );
      return;
    }
    const stream = client.makeServerStreamRequest(method, identity, identity, message, metadata, options);
    const response: Buffer[] = [];
    let hungUp = false;
    const timer = rpc.staysOpen ? setTimeout(() => ((hungUp = true), stream.cancel()), STREAM_OPEN_MS) : undefined;
    stream.on('data', (b: Buffer) => response.push(b));
    stream.on('error', () => undefined); // the status event carries it
    stream.on('status', (st: grpc.StatusObject) => {
      clearTimeout(timer);
      resolve({ ...base, code: st.code, details: st.details, response, ...(hungUp && st.code === S.CANCELLED ? { openByDesign: true } : {}) });
    });
  });
}

/** Runs tasks with at most `limit` in flight. */
async function pool<T>(count: number, limit: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(count);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, count) }, async () => {
    while (next < count) {
      const i = next++;
      out[i] = await task(i);
    }
  }));
  return out;
}

/** Why an outcome breaks the rules, or undefined if it keeps them. */
function violation(rpc: Rpc, o: Outcome, d: Daemon): string | undefined {
  if (o.openByDesign) return rpc.staysOpen && o.response?.length === 0 ? undefined : 'a stream stayed open that should not have';
  // Bytes the decoder rejects are the client's INVALID_ARGUMENT, never grpc-js's INTERNAL (server.ts).
  const allowed = new Set<grpc.status>(o.decodes ? [...always, ...rpc.allowed] : [...always, S.INVALID_ARGUMENT]);
  if (o.caller === 'garbage' && o.code !== S.UNAUTHENTICATED && o.code !== S.RESOURCE_EXHAUSTED) return `a garbage authorization header got ${S[o.code]}`;
  if (!allowed.has(o.code)) return `status ${S[o.code]} (${o.details}) is not in the allowed set`;
  if (o.details.includes(ENV_SECRET)) return 'the details echo an env value';
  if (/\n\s+at |\.ts:\d+|\.js:\d+/.test(o.details) || o.details.includes(d.stateDir)) return `the details leak internals: ${o.details.slice(0, 200)}`;
  if (rpc.name === 'ListWorkspaces' && o.code === S.OK && o.response?.[0]?.length) return 'ListWorkspaces returned workspaces';
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------

t.comment(`seed ${SEED} (replay with TETRIX_FUZZ_SEED=${SEED}), ${CASES} cases per RPC`);

t.test('every RPC, malformed input over mutual TLS', async (t) => {
  nodeId = uniqueName('tetrix-fuzz-node');
  const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-fuzz-'));
  t.teardown(() => fs.rmSync(keyDir, { recursive: true, force: true }));
  const keyFile = path.join(keyDir, 'control-plane.pub.pem');
  fs.writeFileSync(keyFile, controlPlane.publicKey.export({ type: 'spki', format: 'pem' }));
  // info, not debug: 11,000 calls of debug lines would only slow the daemon down.
  const d = await startDaemon(t, ['--control-plane-key-file', keyFile, '--node-id', nodeId, '--log-level', 'info']);
  const pki = path.join(d.stateDir, 'pki');
  const creds = await createClientCredentials({ caPath: path.join(pki, 'ca.crt'), certPath: path.join(pki, 'admin.crt'), keyPath: path.join(pki, 'admin.key') });
  const client = new grpc.Client(`127.0.0.1:${d.tcpPort}`, creds);
  t.teardown(() => client.close());

  const created: string[] = [];
  for (const rpc of rpcs) {
    await t.test(rpc.name, async (t) => {
      const outcomes = await pool(CASES, CONCURRENCY, async () => {
        const message = generate(rpc);
        const { caller, metadata } = callerMetadata(rpc.operatorShare);
        return send(client, rpc, message, caller, metadata);
      });
      const bad = outcomes.map((o) => [o, violation(rpc, o, d)] as const).filter(([, why]) => why !== undefined);
      const counts: Record<string, number> = {};
      for (const o of outcomes) {
        const label = o.openByDesign ? 'OPEN(hung up)' : S[o.code] ?? String(o.code);
        counts[label] = (counts[label] ?? 0) + 1;
      }
      t.comment(`${rpc.name}: ${JSON.stringify(counts)}`);
      t.equal(outcomes.length, CASES, `${CASES} cases answered`);
      t.same(bad.slice(0, 5).map(([o, why]) => `${o.caller} ${o.bytes}B decodes=${o.decodes}: ${why}`), [], 'every answer is in the allowed set, and tells nothing it should not');
      if (rpc.name === 'StartWorkspace') created.push(...outcomes.filter((o) => o.code === S.OK).map((o) => `${o.bytes}B`));
      if (rpc.name === 'RotateKey') {
        const rotations = outcomes.filter((o) => o.code === S.OK);
        t.ok(rotations.every((o) => o.caller === 'operator'), `only the operator rotated the key (${rotations.length} valid operator cases did)`);
      }
    });
  }

  await t.test('the daemon is alive, healthy, and nothing was created', async (t) => {
    t.equal(d.process.exitCode, null, 'tetrixd is still running');
    const Health = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
    type Check = (req: { service: string }, opts: grpc.CallOptions, cb: (err: Error | null, res: { status: string }) => void) => void;
    const health = new Health(`127.0.0.1:${d.tcpPort}`, creds) as unknown as grpc.Client & { check: Check };
    t.teardown(() => health.close());
    const status = await new Promise<string>((resolve, reject) =>
      health.check({ service: '' }, { deadline: Date.now() + 5000 }, (err, res) => (err ? reject(err) : resolve(res.status))),
    );
    t.equal(status, 'SERVING', 'the health check says SERVING');
    t.equal(created.length, 0, 'no StartWorkspace case succeeded');
    const left = await d.list();
    for (const w of left) await d.teardown(w.id);
    t.same(left.map((w) => w.id), [], 'ListWorkspaces is empty');
    t.same(d.output.filter((l) => l.includes('unexpected error')), [], 'no handler failed unexpectedly (no UNKNOWN)');
    t.notOk(d.output.some((l) => l.includes(ENV_SECRET)), 'no env value reached the daemon log');
  });

  await t.test('raw HTTP/2 frames', async (t) => {
    const session = http2.connect(`https://127.0.0.1:${d.tcpPort}`, {
      ca: fs.readFileSync(path.join(pki, 'ca.crt')),
      cert: fs.readFileSync(path.join(pki, 'admin.crt')),
      key: fs.readFileSync(path.join(pki, 'admin.key')),
      minVersion: 'TLSv1.3',
    });
    session.on('error', () => undefined);
    t.teardown(() => session.destroy());

    interface RawResult {
      http: number;
      grpc: number | undefined;
      message: string;
      reset?: number;
      open?: boolean; // a stream we hung up on after STREAM_OPEN_MS (WatchWorkspaces)
    }
    const raw = (pathName: string, body: Buffer[], headers: http2.OutgoingHttpHeaders = {}, hangUpAfterMs = DEADLINE_MS): Promise<RawResult> =>
      new Promise((resolve) => {
        const req = session.request({ ':method': 'POST', ':path': pathName, 'content-type': 'application/grpc', te: 'trailers', ...headers });
        let http = 0;
        let grpcStatus: number | undefined;
        let message = '';
        let open = false;
        const timer = setTimeout(() => {
          open = hangUpAfterMs < DEADLINE_MS;
          req.close(http2.constants.NGHTTP2_CANCEL);
        }, hangUpAfterMs);
        req.on('response', (h) => {
          http = Number(h[':status']);
          if (h['grpc-status'] !== undefined) grpcStatus = Number(h['grpc-status']);
          message = String(h['grpc-message'] ?? '');
        });
        req.on('trailers', (h) => {
          if (h['grpc-status'] !== undefined) grpcStatus = Number(h['grpc-status']);
          message = String(h['grpc-message'] ?? message);
        });
        req.on('data', () => undefined);
        req.on('error', () => undefined);
        req.on('close', () => {
          clearTimeout(timer);
          resolve({ http, grpc: grpcStatus, message: decodeURIComponent(message), ...(req.rstCode ? { reset: req.rstCode } : {}), ...(open && grpcStatus === undefined ? { open } : {}) });
        });
        for (const chunk of body) req.write(chunk);
        req.end();
      });
    const frame = (payload: Buffer, flag = 0, declared = payload.length): Buffer => {
      const head = Buffer.alloc(5);
      head.writeUInt8(flag, 0);
      head.writeUInt32BE(declared, 1);
      return Buffer.concat([head, payload]);
    };
    const get = '/tetrix.agent.v1.WorkspaceService/GetWorkspace';
    const validGet = lengthDelimited(1, Buffer.from('fz-raw'));
    const bomb = zlib.gzipSync(Buffer.alloc(6 << 20)); // 6 MiB of zeros in a few KiB

    // Each case: what it sends, and the gRPC statuses that may answer it (why in the name).
    const cases: Array<[string, () => Promise<RawResult>, number[]]> = [
      ['a well-formed request (control): NOT_FOUND', () => raw(get, [frame(validGet)]), [S.NOT_FOUND]],
      ['a length prefix cut after 3 bytes', () => raw(get, [Buffer.from([0, 0, 0])]), [S.INTERNAL, S.UNIMPLEMENTED, S.INVALID_ARGUMENT]],
      ['a message shorter than its declared length', () => raw(get, [frame(validGet, 0, 100)]), [S.INTERNAL, S.UNIMPLEMENTED, S.INVALID_ARGUMENT]],
      ['no message at all for a unary call', () => raw(get, []), [S.INTERNAL, S.UNIMPLEMENTED, S.INVALID_ARGUMENT]],
      ['two messages for a unary call', () => raw(get, [frame(validGet), frame(validGet)]), [S.INTERNAL, S.UNIMPLEMENTED, S.NOT_FOUND, S.INVALID_ARGUMENT]],
      ['declared length over 4 MiB, body not sent', () => raw(get, [frame(Buffer.alloc(16), 0, (4 << 20) + 1)]), [S.RESOURCE_EXHAUSTED]],
      ['a 5 MiB message', () => raw(get, [frame(Buffer.concat([lengthDelimited(1, Buffer.alloc(5 << 20, 0x61))]))]), [S.RESOURCE_EXHAUSTED]],
      ['compressed flag without grpc-encoding', () => raw(get, [frame(validGet, 1)]), [S.NOT_FOUND, S.INTERNAL]],
      ['compressed flag 7 (undefined)', () => raw(get, [frame(validGet, 7)]), [S.NOT_FOUND, S.INTERNAL]],
      ['gzip flag with bytes that are not gzip', () => raw(get, [frame(bytes(64), 1)], { 'grpc-encoding': 'gzip' }), [S.INTERNAL]],
      ['an unsupported encoding', () => raw(get, [frame(validGet, 1)], { 'grpc-encoding': 'snappy' }), [S.UNIMPLEMENTED, S.INTERNAL]],
      ['a gzip bomb (6 MiB when inflated)', () => raw(get, [frame(bomb, 1)], { 'grpc-encoding': 'gzip' }), [S.RESOURCE_EXHAUSTED]],
      ['a method that does not exist', () => raw('/tetrix.agent.v1.WorkspaceService/Nope', [frame(validGet)]), [S.UNIMPLEMENTED]],
      ['a garbage authorization header', () => raw(get, [frame(validGet)], { authorization: 'Bearer x.y.z' }), [S.UNAUTHENTICATED]],
      ['a grpc-timeout of 1 ns', () => raw(get, [frame(validGet)], { 'grpc-timeout': '1n' }), [S.DEADLINE_EXCEEDED, S.NOT_FOUND]],
      ['a malformed grpc-timeout', () => raw(get, [frame(validGet)], { 'grpc-timeout': 'forever' }), [S.INTERNAL, S.NOT_FOUND, S.INVALID_ARGUMENT, S.OUT_OF_RANGE]],
      ['a NodeService call with a random body', () => raw('/tetrix.agent.v1.NodeService/GetNodeInfo', [frame(bytes(200))]), [S.OK, S.INVALID_ARGUMENT]],
      // Field 1 (id) as length-delimited, then a length whose varint never ends.
      ['bytes that are not a GetWorkspaceRequest', () => raw(get, [frame(Buffer.from([0x0a, 0xff]))]), [S.INVALID_ARGUMENT]],
      ['a stream RPC with a truncated frame', () => raw('/tetrix.agent.v1.WorkspaceService/StreamLogs', [frame(validGet, 0, 50)]), [S.INTERNAL, S.UNIMPLEMENTED, S.INVALID_ARGUMENT]],
    ];
    for (const [name, attempt, allowed] of cases) {
      const r = await attempt();
      t.ok(r.grpc !== undefined && allowed.includes(r.grpc), `${name}: ${r.grpc === undefined ? `no gRPC status (HTTP ${r.http}, reset ${r.reset})` : S[r.grpc]}${r.message ? ` "${r.message.slice(0, 80)}"` : ''}`);
    }
    const undecodable = await raw(get, [frame(Buffer.from([0x0a, 0xff]))]);
    t.match(undecodable.message, /^request: not a valid GetWorkspace request \(.+\)$/, 'an undecodable request is named, with the decoder\'s reason');

    // Not gRPC at all: refused at the HTTP level (415) or with a gRPC status; never served.
    const notGrpc = await raw(get, [frame(validGet)], { 'content-type': 'text/plain' });
    t.ok(notGrpc.http === 415 || (notGrpc.grpc !== undefined && notGrpc.grpc !== S.OK), `a text/plain body is refused (HTTP ${notGrpc.http}, grpc ${notGrpc.grpc})`);

    // Random frames: random flag, declared length and bytes, split at random points, many at once. Each
    // may get its RPC's statuses, or what grpc-js answers bad framing with: INTERNAL (undecodable or
    // undecompressable), UNIMPLEMENTED (no message, or a second one, for a method taking exactly one).
    const outcomes = await pool(CASES, CONCURRENCY, async () => {
      const method = pick(rpcs);
      const payload = bytes(int(300));
      const body = frame(payload, chance(0.8) ? 0 : int(256), chance(0.7) ? payload.length : int(1 << 16));
      const cut = chance(0.5) ? int(body.length + 1) : body.length;
      const r = await raw(`/tetrix.agent.v1.${method.service}/${method.name}`, [body.subarray(0, cut), ...(chance(0.3) ? [bytes(int(20))] : [])], {}, method.staysOpen ? STREAM_OPEN_MS : DEADLINE_MS);
      return { method, r };
    });
    const counts: Record<string, number> = {};
    for (const { r } of outcomes) {
      const label = r.open ? 'OPEN(hung up)' : r.grpc === undefined ? 'none' : S[r.grpc] ?? String(r.grpc);
      counts[label] = (counts[label] ?? 0) + 1;
    }
    t.comment(`random frames: ${JSON.stringify(counts)}`);
    const outside = outcomes.filter(({ method, r }) => {
      if (r.open) return !method.staysOpen;
      // INTERNAL stays possible here: grpc-js answers a broken frame (not a broken message) with it.
      return r.grpc === undefined || ![...always, ...method.allowed, S.INVALID_ARGUMENT, S.INTERNAL, S.UNIMPLEMENTED].includes(r.grpc);
    });
    t.same(outside.slice(0, 5).map(({ method, r }) => `${method.name}: ${r.grpc === undefined ? `no status (HTTP ${r.http})` : S[r.grpc]} ${r.message}`), [], `every one of ${CASES} random frames gets a gRPC status its RPC allows`);
    const unknown = outcomes.filter(({ r }) => r.grpc === S.UNKNOWN);
    t.same(unknown.map(({ method }) => method.name), [], 'none ends in UNKNOWN (a handler that threw)');
  });

  await t.test('afterwards: still alive, still serving, still empty', async (t) => {
    t.equal(d.process.exitCode, null, 'tetrixd is still running');
    t.same((await d.list()).map((w) => w.id), [], 'no workspace exists');
    const again = await new Promise<grpc.status>((resolve) =>
      client.makeUnaryRequest('/tetrix.agent.v1.NodeService/GetNodeInfo', identity, identity, Buffer.alloc(0), new grpc.Metadata(), { deadline: Date.now() + 5000 }, (err) => resolve(err ? err.code : S.OK)),
    );
    t.equal(again, S.OK, 'a well-formed call still succeeds');
  });
});
