import t from 'tap';
import { promises as fs } from 'node:fs';
import {
  buildPrebuildStatement, checkSlsaV1Statement, slsaV1StatementProblems, publishPrebuildProvenance, readProvenanceEnvelope,
  provenanceObjectName, imageResourceUri, SLSA_PROVENANCE_V1,
} from '../../src/prebuild/provenance';
import { IN_TOTO_PAYLOAD_TYPE, verifyEnvelope } from '../../src/prebuild/dsse';
import { fsObjectStore, nodeKey, putBytes, sampleInput, SECRET, snapshotBytes } from './fixtures';

t.test('a prebuild statement is an in-toto Statement v1 with an SLSA v1 predicate', async (t) => {
  const s = buildPrebuildStatement(sampleInput());
  t.same(slsaV1StatementProblems(s, { strict: true }), [], 'conforms, strictly');
  t.equal(s._type, 'https://in-toto.io/Statement/v1');
  t.equal(s.predicateType, 'https://slsa.dev/provenance/v1');
  t.same(s.subject, [{ name: 'snap-1', digest: { sha256: sampleInput().snapshot.sha256 } }]);
  const bd = s.predicate.buildDefinition;
  t.equal(bd.buildType, 'https://tetrix.dev/prebuild/v1');
  t.same(bd.externalParameters, {
    source: { repository: 'https://git.example.test/team/app.git', revision: '0123456789abcdef0123456789abcdef01234567' },
    tasks: [
      { name: 'deps', command: ['sh', '-c', 'npm ci'], workingDir: '/workspace', envNames: ['CI', 'NPM_TOKEN'] },
      { name: 'build', command: ['make'], workingDir: '/workspace/app', envNames: [] },
    ],
    image: 'builtin:busybox',
  });
  t.same(bd.internalParameters, { nodeId: 'node-a', kernel: '6.18.0', arch: 'x64' });
  t.same(bd.resolvedDependencies, [{ uri: 'builtin:busybox', digest: { sha256: 'ab'.repeat(32) } }]);
  t.same(s.predicate.runDetails, {
    builder: { id: 'https://tetrix.dev/builder/node/node-a', version: { tetrix: '0.1.0' } },
    metadata: { invocationId: 'pb-1234', startedOn: '2025-01-02T03:04:05.000Z', finishedOn: '2025-01-02T03:09:05.250Z' },
  });
});

t.test('env values never reach the statement, only their names', async (t) => {
  const json = JSON.stringify(buildPrebuildStatement(sampleInput()));
  t.notOk(json.includes(SECRET));
  t.ok(json.includes('NPM_TOKEN'));
});

t.test('bad input is refused before anything is signed', async (t) => {
  t.throws(() => buildPrebuildStatement(sampleInput({ snapshot: { name: 'x', sha256: 'ABC' } })), { code: 'INVALID_ARGUMENT', message: /snapshot.sha256/ });
  t.throws(() => buildPrebuildStatement(sampleInput({ tasks: [] })), { code: 'INVALID_ARGUMENT' });
  t.throws(() => buildPrebuildStatement(sampleInput({ finishedOn: 0 })), { code: 'INVALID_ARGUMENT', message: /finishedOn/ });
});

t.test('image refs become resource URIs', async (t) => {
  t.equal(imageResourceUri('builtin:busybox'), 'builtin:busybox');
  t.equal(imageResourceUri('/var/lib/tetrix/images/my img'), 'file:///var/lib/tetrix/images/my%20img');
  t.equal(imageResourceUri('node20'), 'pkg:generic/node20');
  t.equal(imageResourceUri('localhost:5000/team/app:1'), 'oci://localhost:5000/team/app:1', 'an OCI reference with a port is no URI scheme');
  t.equal(imageResourceUri('registry.example/app@sha256:' + 'a'.repeat(64)), `oci://registry.example/app@sha256:${'a'.repeat(64)}`);
});

t.test('the validator names each departure from the SLSA v1 and in-toto v1 field names and types', async (t) => {
  const good = (): any => JSON.parse(JSON.stringify(buildPrebuildStatement(sampleInput())));
  const cases: Array<[string, (s: any) => void, RegExp]> = [
    ['wrong _type', (s) => { s._type = 'https://in-toto.io/Statement/v0.1'; }, /^_type: /],
    ['no subject', (s) => { s.subject = []; }, /^subject: must be a non-empty array/],
    ['subject without digest', (s) => { delete s.subject[0].digest; }, /subject\[0\]\.digest: is required/],
    ['uppercase hex digest', (s) => { s.subject[0].digest.sha256 = 'AB'.repeat(32); }, /subject\[0\]\.digest\.sha256: must be 64 lowercase hex/],
    ['digest value not a string', (s) => { s.subject[0].digest.sha256 = 1; }, /digest\.sha256: must be a string/],
    ['wrong predicateType', (s) => { s.predicateType = 'https://slsa.dev/provenance/v0.2'; }, /^predicateType: /],
    ['no buildDefinition', (s) => { delete s.predicate.buildDefinition; }, /predicate\.buildDefinition: is required/],
    ['buildType not a URI', (s) => { s.predicate.buildDefinition.buildType = 'tetrix prebuild'; }, /buildType: must be a case-normalized URI/],
    ['buildType with uppercase scheme', (s) => { s.predicate.buildDefinition.buildType = 'HTTPS://tetrix.dev/prebuild/v1'; }, /buildType: must be a case-normalized URI/],
    ['externalParameters an array', (s) => { s.predicate.buildDefinition.externalParameters = []; }, /externalParameters: must be an object/],
    ['resolvedDependencies an object', (s) => { s.predicate.buildDefinition.resolvedDependencies = {}; }, /resolvedDependencies: must be an array/],
    ['empty resource descriptor', (s) => { s.predicate.buildDefinition.resolvedDependencies = [{ name: 'x' }]; }, /resolvedDependencies\[0\]: needs one of uri, digest, content/],
    ['no builder.id', (s) => { delete s.predicate.runDetails.builder.id; }, /builder\.id: is required/],
    ['builder.version not a string map', (s) => { s.predicate.runDetails.builder.version = { tetrix: 1 }; }, /builder\.version\.tetrix: must be a string/],
    ['timestamp not UTC', (s) => { s.predicate.runDetails.metadata.startedOn = '2025-01-02T03:04:05+01:00'; }, /startedOn: must be an RFC 3339 UTC timestamp/],
    ['timestamp as a number', (s) => { s.predicate.runDetails.metadata.finishedOn = 1735787045000; }, /finishedOn: must be a string/],
    ['invocationId a number', (s) => { s.predicate.runDetails.metadata.invocationId = 7; }, /invocationId: must be a string/],
  ];
  for (const [what, mutate, expected] of cases) {
    const s = good();
    mutate(s);
    const problems = slsaV1StatementProblems(s);
    t.ok(problems.some((p) => expected.test(p)), `${what}: ${problems.join(' | ')}`);
    t.throws(() => checkSlsaV1Statement(s), { code: 'DATA_LOSS', message: /^provenance malformed: / });
  }
});

t.test('unknown fields: rejected when strict (a misspelling), ignored when lenient (in-toto parsing rules)', async (t) => {
  const s: any = buildPrebuildStatement(sampleInput());
  s.predicate.runDetails.metdata = s.predicate.runDetails.metadata;
  t.same(slsaV1StatementProblems(s), []);
  t.same(slsaV1StatementProblems(s, { strict: true }), ['predicate.runDetails.metdata: unknown field']);
  delete s.predicate.runDetails.metdata;
  s.predicate.runDetails.tetrix_cgroupMode = 'hybrid'; // an extension field, <vendor>_<name>
  t.same(slsaV1StatementProblems(s, { strict: true }), []);
});

t.test('unset and null optional fields are equivalent', async (t) => {
  const s: any = buildPrebuildStatement(sampleInput());
  s.predicate.buildDefinition.internalParameters = null;
  s.predicate.runDetails.byproducts = null;
  delete s.predicate.runDetails.metadata;
  t.same(slsaV1StatementProblems(s, { strict: true }), []);
});

t.test('published provenance sits beside the snapshot under a name tied to it, signed by the node key', async (t) => {
  const store = await fsObjectStore(t);
  const key = await nodeKey(t);
  await putBytes(store, 'snap-1', snapshotBytes);

  const published = await publishPrebuildProvenance(store, sampleInput(), key);
  t.equal(published.objectName, 'snap-1.provenance.dsse.json');
  t.equal(provenanceObjectName('snap-1'), published.objectName);
  t.same((await store.list()).map((o) => o.name), ['snap-1', 'snap-1.provenance.dsse.json']);

  const envelope = await readProvenanceEnvelope(store, 'snap-1');
  t.equal(envelope.payloadType, IN_TOTO_PAYLOAD_TYPE);
  t.equal(envelope.signatures[0].keyid, key.keyId);
  const { payload } = verifyEnvelope(envelope, key.publicKeyPem);
  const statement = JSON.parse(payload.toString());
  t.equal(statement.predicateType, SLSA_PROVENANCE_V1);
  t.same(statement, published.statement);
  t.notOk((await fs.readFile(`${store.dir}/${published.objectName}`, 'utf8')).includes(SECRET));
  t.throws(() => provenanceObjectName(''), { code: 'INVALID_ARGUMENT' });
});
