// Workspace records in SQLite, WAL with synchronous=NORMAL: a committed change survives the daemon being
// killed at any point (what restarts need); only an OS crash may lose the last ones, and after that no
// workspace survives anyway. FULL would add an fsync to every transition (measured: 3-4 per start).
// Secrets never reach the database in plaintext: every field spec-secrets.ts declares secret (env,
// tasks[].env, any future credential) is taken out of the spec and stored sealed as one blob, or not at
// all. secure_delete zeroes what an update frees, so a rewritten record leaves no old bytes in a page.
import Database from 'better-sqlite3';
import path from 'node:path';
import { joinSecrets, SPEC_SECRETS, splitSecrets } from './spec-secrets';
import type { WorkspaceRecord, WorkspaceSpec, WorkspaceStatus } from './types';

/** Seals secrets for storage (AES-256-GCM under the node key, see src/crypto). */
export interface SecretSealer {
  seal(plaintext: string, aad: string): string;
  open(sealed: string, aad: string): string;
  /** Re-seals under the current key (the input when it already is): key rotation. */
  reseal?(sealed: string, aad: string): string;
  /** Key ids of every sealed value in a text: the census of what depends on which key. */
  keyIdsIn?(text: string): string[];
  /** Binary secrets (volume keys): sealed from and opened to a Buffer, never a string. */
  sealBytes?(plaintext: Buffer, aad: string): string;
  openBytes?(sealed: string, aad: string): Buffer;
}

/** Every secret field of a spec, sealed together under this aad (src/workspace/spec-secrets.ts). */
const secretsAad = (id: string): string => `workspace-secrets:${id}`;

/**
 * Every sealed column and the aad it is sealed with. The re-seal walk of a key rotation goes through this
 * list: a new sealed field is added here. One left out is still found by keyUsage() (it scans every column
 * by format), so retiring its key is refused rather than the secret lost.
 */
const SEALED_COLUMNS = [
  { column: 'secrets_sealed', aad: (id: string): string => secretsAad(id) },
  // Records from before every secret field was sealed together: read once, then rewritten.
  { column: 'env_sealed', aad: (id: string): string => `workspace-env:${id}` },
  // The key of the workspace's encrypted volume (src/storage): never stored in the clear.
  { column: 'disk_key_sealed', aad: (id: string): string => diskKeyAad(id) },
] as const;

const diskKeyAad = (id: string): string => `workspace-disk-key:${id}`;

interface Row {
  id: string;
  spec: string;
  env_sealed: string | null;      // before secrets_sealed: the top-level env alone (read, then rewritten)
  secrets_sealed: string | null;
  spec_digest: string;
  status: string;
}

export class WorkspaceStore {
  private readonly db: Database.Database;
  // Compiled once: a start writes its record four times.
  private readonly statements: Record<'insert' | 'updateStatus' | 'rewriteSpec' | 'delete' | 'digestOf' | 'setDiskKey' | 'diskKey', Database.Statement>;

  constructor(stateDir: string, private readonly sealer?: SecretSealer) {
    this.db = new Database(path.join(stateDir, 'state.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('secure_delete = ON');
    this.db.exec(`CREATE TABLE IF NOT EXISTS workspaces (
      id TEXT PRIMARY KEY,
      spec TEXT NOT NULL,
      env_sealed TEXT,
      spec_digest TEXT NOT NULL,
      status TEXT NOT NULL
    )`);
    const columns = this.db.prepare('PRAGMA table_info(workspaces)').all() as Array<{ name: string }>;
    if (!columns.some((c) => c.name === 'secrets_sealed')) this.db.exec('ALTER TABLE workspaces ADD COLUMN secrets_sealed TEXT');
    if (!columns.some((c) => c.name === 'disk_key_sealed')) this.db.exec('ALTER TABLE workspaces ADD COLUMN disk_key_sealed TEXT');
    this.statements = {
      insert: this.db.prepare('INSERT INTO workspaces (id, spec, secrets_sealed, spec_digest, status) VALUES (?, ?, ?, ?, ?)'),
      rewriteSpec: this.db.prepare('UPDATE workspaces SET spec = ?, secrets_sealed = ?, env_sealed = NULL WHERE id = ?'),
      updateStatus: this.db.prepare('UPDATE workspaces SET status = ? WHERE id = ?'),
      delete: this.db.prepare('DELETE FROM workspaces WHERE id = ?'),
      digestOf: this.db.prepare('SELECT spec_digest FROM workspaces WHERE id = ?'),
      setDiskKey: this.db.prepare('UPDATE workspaces SET disk_key_sealed = ? WHERE id = ?'),
      diskKey: this.db.prepare('SELECT disk_key_sealed FROM workspaces WHERE id = ?'),
    };
  }

  insert(record: WorkspaceRecord, specDigest: string): void {
    const { open, sealed } = this.sealSpec(record.spec);
    this.statements.insert.run(record.spec.id, open, sealed, specDigest, JSON.stringify(record.status));
  }

  updateStatus(id: string, status: WorkspaceStatus): void {
    this.statements.updateStatus.run(JSON.stringify(status), id);
  }

  delete(id: string): void {
    this.statements.delete.run(id);
  }

  /** Seals the volume key into the workspace's row (which must exist); durable on return. */
  putDiskKey(id: string, key: Buffer): void {
    if (!this.sealer?.sealBytes) throw new Error('store: volume keys need a sealer');
    const changed = this.statements.setDiskKey.run(this.sealer.sealBytes(key, diskKeyAad(id)), id).changes;
    if (changed !== 1) throw new Error(`store: no record for workspace ${id}`);
  }

  diskKey(id: string): Buffer | undefined {
    const row = this.statements.diskKey.get(id) as { disk_key_sealed: string | null } | undefined;
    if (!row?.disk_key_sealed || !this.sealer?.openBytes) return undefined;
    return this.sealer.openBytes(row.disk_key_sealed, diskKeyAad(id));
  }

  /**
   * Crypto-erase of a volume: the sealed key is overwritten (secure_delete zeroes the freed bytes) and
   * the write-ahead log, which still holds the page as it was, is checkpointed and truncated.
   */
  eraseDiskKey(id: string): void {
    this.statements.setDiskKey.run(null, id);
    this.db.pragma('wal_checkpoint(TRUNCATE)');
  }

  digestOf(id: string): string | undefined {
    const row = this.statements.digestOf.get(id) as { spec_digest: string } | undefined;
    return row?.spec_digest;
  }

  loadAll(): WorkspaceRecord[] {
    const rows = this.db.prepare('SELECT id, spec, env_sealed, secrets_sealed, spec_digest, status FROM workspaces').all() as Row[];
    const records = rows.map((row) => ({ spec: this.openSpec(row), status: JSON.parse(row.status) as WorkspaceStatus }));
    this.rewriteOldRecords(rows, records);
    return records;
  }

  /** How many sealed values in the store name each key id (every column of every row). */
  keyUsage(): Map<string, number> {
    const counts = new Map<string, number>();
    const keyIdsIn = this.sealer?.keyIdsIn;
    if (!keyIdsIn) return counts;
    const rows = this.db.prepare('SELECT * FROM workspaces').all() as Record<string, unknown>[];
    for (const row of rows) {
      for (const value of Object.values(row)) {
        if (typeof value !== 'string') continue;
        for (const keyId of keyIdsIn(value)) counts.set(keyId, (counts.get(keyId) ?? 0) + 1);
      }
    }
    return counts;
  }

  /** Re-seals every sealed column under the current key, in one transaction. Returns how many changed. */
  resealAll(): number {
    const reseal = this.sealer?.reseal;
    if (!reseal) return 0;
    let changed = 0;
    this.db.transaction(() => {
      for (const { column, aad } of SEALED_COLUMNS) {
        const rows = this.db.prepare(`SELECT id, ${column} AS sealed FROM workspaces WHERE ${column} IS NOT NULL`).all() as { id: string; sealed: string }[];
        const update = this.db.prepare(`UPDATE workspaces SET ${column} = ? WHERE id = ?`);
        for (const row of rows) {
          const next = reseal(row.sealed, aad(row.id));
          if (next === row.sealed) continue;
          update.run(next, row.id);
          changed++;
        }
      }
    })();
    return changed;
  }

  close(): void {
    this.db.close();
  }

  /** The spec without its secrets (as JSON), and its secrets sealed (null when none, or no sealer). */
  private sealSpec(spec: WorkspaceSpec): { open: string; sealed: string | null } {
    const { open, secrets } = splitSecrets(spec, SPEC_SECRETS);
    const sealed = secrets && this.sealer ? this.sealer.seal(JSON.stringify(secrets), secretsAad(spec.id)) : null;
    return { open: JSON.stringify(open), sealed };
  }

  private openSpec(row: Row): WorkspaceSpec {
    // Split again on the way in: a record from before the declaration may hold a secret in plaintext.
    const { open } = splitSecrets(JSON.parse(row.spec) as WorkspaceSpec, SPEC_SECRETS);
    if (!this.sealer) return { ...open, env: open.env ?? {} };
    const legacy = JSON.parse(row.spec) as WorkspaceSpec;
    if (row.secrets_sealed) return joinSecrets(open, JSON.parse(this.sealer.open(row.secrets_sealed, secretsAad(row.id))) as Record<string, unknown>, SPEC_SECRETS);
    const env = row.env_sealed ? (JSON.parse(this.sealer.open(row.env_sealed, `workspace-env:${row.id}`)) as Record<string, string>) : {};
    return { ...legacy, env };
  }

  /** Records written before every secret was sealed are rewritten sealed, and the WAL that held them emptied. */
  private rewriteOldRecords(rows: Row[], records: WorkspaceRecord[]): void {
    if (!this.sealer) return;
    let rewritten = 0;
    rows.forEach((row, i) => {
      if (row.secrets_sealed || (row.env_sealed === null && row.spec === this.sealSpec(records[i].spec).open)) return;
      const { open, sealed } = this.sealSpec(records[i].spec);
      this.statements.rewriteSpec.run(open, sealed, row.id);
      rewritten++;
    });
    if (rewritten > 0) this.db.pragma('wal_checkpoint(TRUNCATE)');
  }
}

