import t, { Test } from 'tap';
import { promises as fs, createReadStream } from 'node:fs';
import path from 'node:path';
import { publishPrebuildProvenance, readProvenanceEnvelope, buildPrebuildStatement } from '../../src/prebuild/provenance';
import { signEnvelope, IN_TOTO_PAYLOAD_TYPE, DsseEnvelope } from '../../src/prebuild/dsse';
import { snapshotSha256, verifySnapshotProvenance, verifyStoredSnapshotProvenance } from '../../src/prebuild/verify';
import { fsObjectStore, nodeKey, putBytes, sampleInput, snapshotBytes } from './fixtures';

/** A published prebuild: the snapshot and its envelope in one store, as the node leaves them. */
async function published(t: Test) {
  const store = await fsObjectStore(t);
  const key = await nodeKey(t);
  const sha = await putBytes(store, 'snap-1', snapshotBytes);
  t.equal(sha, sampleInput().snapshot.sha256, 'the digest put() reports is the one the statement names');
  await publishPrebuildProvenance(store, sampleInput(), key);
  return { store, key };
}

/** What `tetrixctl verify snap-1` does: read both objects, hash the snapshot, verify. */
async function verifyStored(store: { dir: string }, publicKeyPem: string) {
  const envelope = await fs.readFile(path.join(store.dir, 'snap-1.provenance.dsse.json'));
  const digest = await snapshotSha256(createReadStream(path.join(store.dir, 'snap-1')));
  return verifySnapshotProvenance({ envelope, publicKeyPem, snapshotSha256: digest });
}

async function rewriteEnvelope(store: { dir: string }, change: (env: DsseEnvelope) => void): Promise<void> {
  const file = path.join(store.dir, 'snap-1.provenance.dsse.json');
  const env = JSON.parse(await fs.readFile(file, 'utf8')) as DsseEnvelope;
  change(env);
  await fs.writeFile(file, JSON.stringify(env));
}

t.test('an untouched snapshot and its provenance verify, and the statement comes back', async (t) => {
  const { store, key } = await published(t);
  const statement = await verifyStored(store, key.publicKeyPem);
  t.equal(statement.predicate.runDetails.builder.id, 'https://tetrix.dev/builder/node/node-a');
  t.equal(statement.subject[0].name, 'snap-1');
  t.ok(await readProvenanceEnvelope(store, 'snap-1'));
  const viaStorage = await verifyStoredSnapshotProvenance({ storage: store, snapshotObject: 'snap-1', publicKeyPem: key.publicKeyPem });
  t.same(viaStorage, statement, 'the storage-level call agrees');
});

t.test('a snapshot without provenance is NOT_FOUND', async (t) => {
  const { store, key } = await published(t);
  await putBytes(store, 'snap-2', snapshotBytes);
  await t.rejects(verifyStoredSnapshotProvenance({ storage: store, snapshotObject: 'snap-2', publicKeyPem: key.publicKeyPem }), { code: 'NOT_FOUND' });
});

t.test('a tampered payload fails on the signature', async (t) => {
  const { store, key } = await published(t);
  await rewriteEnvelope(store, (env) => {
    const s = JSON.parse(Buffer.from(env.payload, 'base64').toString());
    s.predicate.buildDefinition.externalParameters.source.revision = 'f'.repeat(40);
    env.payload = Buffer.from(JSON.stringify(s)).toString('base64');
  });
  await t.rejects(verifyStored(store, key.publicKeyPem), { code: 'DATA_LOSS', message: /^dsse signature: / });
});

t.test('a tampered payloadType fails on the signature', async (t) => {
  const { store, key } = await published(t);
  await rewriteEnvelope(store, (env) => { env.payloadType = 'application/vnd.in-toto.provenance+json'; });
  await t.rejects(verifyStored(store, key.publicKeyPem), { code: 'DATA_LOSS', message: /^dsse signature: / });
});

t.test('a tampered signature fails', async (t) => {
  const { store, key } = await published(t);
  await rewriteEnvelope(store, (env) => {
    const sig = Buffer.from(env.signatures[0].sig, 'base64');
    sig[0] ^= 0x80;
    env.signatures[0].sig = sig.toString('base64');
  });
  await t.rejects(verifyStored(store, key.publicKeyPem), { code: 'DATA_LOSS', message: /^dsse signature: / });
});

t.test('changed snapshot bytes fail on the subject digest', async (t) => {
  const { store, key } = await published(t);
  const file = path.join(store.dir, 'snap-1');
  const bytes = await fs.readFile(file);
  bytes[3] ^= 0x01;
  await fs.writeFile(file, bytes);
  await t.rejects(verifyStored(store, key.publicKeyPem), { code: 'DATA_LOSS', message: /^provenance subject: / });
});

t.test("another node's key fails", async (t) => {
  const { store } = await published(t);
  const other = await nodeKey(t);
  await t.rejects(verifyStored(store, other.publicKeyPem), { code: 'DATA_LOSS', message: /^dsse signature: / });
});

t.test('a signed statement of another predicate type is named as such', async (t) => {
  const key = await nodeKey(t);
  const s: any = buildPrebuildStatement(sampleInput());
  s.predicateType = 'https://slsa.dev/provenance/v0.2';
  const envelope = signEnvelope(IN_TOTO_PAYLOAD_TYPE, Buffer.from(JSON.stringify(s)), key);
  t.throws(() => verifySnapshotProvenance({ envelope, publicKeyPem: key.publicKeyPem, snapshotSha256: s.subject[0].digest.sha256 }),
    { code: 'DATA_LOSS', message: /^provenance predicateType: / });
});

t.test('signed but malformed statements are named as malformed', async (t) => {
  const key = await nodeKey(t);
  const digest = sampleInput().snapshot.sha256;
  const notJson = signEnvelope(IN_TOTO_PAYLOAD_TYPE, Buffer.from('not json'), key);
  t.throws(() => verifySnapshotProvenance({ envelope: notJson, publicKeyPem: key.publicKeyPem, snapshotSha256: digest }),
    { code: 'DATA_LOSS', message: /^provenance malformed: payload is not JSON/ });
  const s: any = buildPrebuildStatement(sampleInput());
  delete s.predicate.runDetails;
  const incomplete = signEnvelope(IN_TOTO_PAYLOAD_TYPE, Buffer.from(JSON.stringify(s)), key);
  t.throws(() => verifySnapshotProvenance({ envelope: incomplete, publicKeyPem: key.publicKeyPem, snapshotSha256: digest }),
    { code: 'DATA_LOSS', message: /^provenance malformed: .*runDetails: is required/ });
  t.throws(() => verifySnapshotProvenance({ envelope: '{"payload":1}', publicKeyPem: key.publicKeyPem, snapshotSha256: digest }),
    { code: 'DATA_LOSS', message: /^dsse malformed: / });
  t.throws(() => verifySnapshotProvenance({ envelope: notJson, publicKeyPem: key.publicKeyPem, snapshotSha256: 'nope' }),
    { code: 'INVALID_ARGUMENT' });
});
