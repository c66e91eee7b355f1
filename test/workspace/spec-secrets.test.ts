// The store seals every field the spec declares secret, by one mechanism: here, a spec with a marker
// in every secret field goes through a real store (SQLite on disk) and back.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { KeyRing } from '../../src/crypto/keys';
import { openSecret, sealSecret } from '../../src/crypto/secrets';
import { SPEC_SECRETS, secretFieldPaths } from '../../src/workspace/spec-secrets';
import { WorkspaceStore } from '../../src/workspace/store';
import { newStatus, type WorkspaceSpec } from '../../src/workspace/types';

const spec = (): WorkspaceSpec => ({
  id: 'ws-1', ownerId: 'alice', teamId: 'team-a', kind: 'PREBUILD', image: 'builtin:busybox', command: [],
  env: { TOPNAME_M: 'topvalue-m' },
  resources: { memoryBytes: 0, cpuMillis: 0, pids: 0 }, network: 'NONE', ports: [], restoreFrom: '', seccompProfile: '',
  tasks: [
    { name: 'a', command: ['true'], workingDir: '/workspace', env: { TASKNAME_A: 'taskvalue-a' } },
    { name: 'b', command: ['true'], workingDir: '/workspace', env: { TASKNAME_B: 'taskvalue-b' } },
  ],
  source: { repositoryUrl: 'https://git.example.test/a.git', revision: 'abc' },
  workingDir: '/workspace',
  content: {
    kind: 'git', prebuildSnapshot: '', allowUnverified: false,
    git: { url: 'https://git.example.test/a.git', ref: 'main', commit: '', depth: 0, filter: '', submodules: false, token: 'gittoken-z' },
  },
});

t.test('the secret fields are declared once; the review tests cover each of them', async (t) => {
  // test/workspace/secrets.test.ts puts markers in the env fields, test/source/smart-http.test.ts in the
  // git token: a new secret field fails here until a test does the same for it.
  t.same(secretFieldPaths(SPEC_SECRETS), ['env', 'tasks[].env', 'content.git.token']);
});

t.test('a spec goes to disk with every secret field sealed and comes back whole', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-spec-secrets-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const keyring = KeyRing.open({ dir: path.join(dir, 'keys') });
  const sealer = { seal: (p: string, aad: string) => sealSecret(keyring, p, aad), open: (s: string, aad: string) => openSecret(keyring, s, aad).toString('utf8') };
  const store = new WorkspaceStore(dir, sealer);
  store.insert({ spec: spec(), status: newStatus(1) }, 'digest');
  const loaded = store.loadAll();
  store.close();
  t.same(loaded.map((r) => r.spec), [spec()], 'every field comes back');
  for (const file of fs.readdirSync(dir).filter((f) => f.startsWith('state.db'))) {
    const bytes = fs.readFileSync(path.join(dir, file));
    for (const needle of ['TOPNAME_M', 'topvalue-m', 'TASKNAME_A', 'taskvalue-a', 'TASKNAME_B', 'taskvalue-b', 'gittoken-z']) {
      t.notOk(bytes.includes(Buffer.from(needle)), `${file} does not hold ${needle}`);
    }
  }

  const unsealed = new WorkspaceStore(dir);
  t.same(unsealed.loadAll().map((r) => r.spec.tasks.map((x) => x.env)), [[{}, {}]], 'a store without a sealer opens no secret');
  t.same(unsealed.loadAll().map((r) => r.spec.content?.git.token), [''], 'nor the git token');
  unsealed.close();
});

t.test('without a sealer no secret is stored at all', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-spec-secrets-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new WorkspaceStore(dir);
  store.insert({ spec: spec(), status: newStatus(1) }, 'digest');
  const loaded = store.loadAll();
  store.close();
  t.same(loaded[0].spec.env, {});
  t.same(loaded[0].spec.tasks.map((x) => x.env), [{}, {}]);
  for (const file of fs.readdirSync(dir).filter((f) => f.startsWith('state.db'))) {
    t.notOk(fs.readFileSync(path.join(dir, file)).includes(Buffer.from('taskvalue-a')), `${file} holds no task value`);
  }
});

t.test('a record of the old form (task env in plaintext) is rewritten sealed, and its old bytes are gone', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-spec-secrets-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const keyring = KeyRing.open({ dir: path.join(dir, 'keys') });
  const sealer = { seal: (p: string, aad: string) => sealSecret(keyring, p, aad), open: (s: string, aad: string) => openSecret(keyring, s, aad).toString('utf8') };
  const old = new Database(path.join(dir, 'state.db'));
  old.pragma('journal_mode = WAL');
  old.exec('CREATE TABLE workspaces (id TEXT PRIMARY KEY, spec TEXT NOT NULL, env_sealed TEXT, spec_digest TEXT NOT NULL, status TEXT NOT NULL)');
  const { env, ...rest } = spec();
  old.prepare('INSERT INTO workspaces VALUES (?, ?, ?, ?, ?)').run('ws-1', JSON.stringify(rest), sealer.seal(JSON.stringify(env), 'workspace-env:ws-1'), 'digest', JSON.stringify(newStatus(1)));
  old.close();
  t.ok(fs.readFileSync(path.join(dir, 'state.db')).includes(Buffer.from('taskvalue-a')), 'the old form holds a task value in plaintext');

  const store = new WorkspaceStore(dir, sealer);
  t.same(store.loadAll().map((r) => r.spec), [spec()], 'read whole');
  store.close();
  for (const file of fs.readdirSync(dir).filter((f) => f.startsWith('state.db'))) {
    t.notOk(fs.readFileSync(path.join(dir, file)).includes(Buffer.from('taskvalue-a')), `${file} no longer holds it`);
  }
  const again = new WorkspaceStore(dir, sealer);
  t.same(again.loadAll().map((r) => r.spec), [spec()], 'and read whole from its new form');
  again.close();
});

t.test('a field added to the spec, or to a task, does not compile until it is classified', async (t) => {
  const ts = await import('typescript');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-spec-classify-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.resolve(__dirname, '../../src/workspace');
  const compile = (body: string): string[] => {
    const file = path.join(dir, `case-${crypto.randomUUID()}.ts`);
    fs.writeFileSync(file, [
      `import { SPEC_SECRETS, type Classification } from ${JSON.stringify(path.join(src, 'spec-secrets'))};`,
      `import type { TaskSpec, WorkspaceSpec } from ${JSON.stringify(path.join(src, 'types'))};`,
      body,
    ].join('\n'));
    const program = ts.createProgram([file], { strict: true, noEmit: true, skipLibCheck: true, types: [] });
    return ts.getPreEmitDiagnostics(program).filter((d) => d.file?.fileName === file).map((d) => ts.flattenDiagnosticMessageText(d.messageText, ' '));
  };
  t.same(compile('export const same: Classification<WorkspaceSpec> = SPEC_SECRETS;'), [], 'the declaration as it is compiles');
  const topLevel = compile('type Future = WorkspaceSpec & { gitCredentials: { username: string; token: string } };\nexport const c: Classification<Future> = { ...SPEC_SECRETS };');
  t.match(topLevel.join('\n'), /gitCredentials/, 'a new top-level field is refused until classified');
  const inTask = compile("type Future = Omit<WorkspaceSpec, 'tasks'> & { tasks: Array<TaskSpec & { registryToken: string }> };\nexport const c: Classification<Future> = { ...SPEC_SECRETS };");
  t.match(inTask.join('\n'), /registryToken/, 'so is a new field of a task');
});
