// Workspace records in SQLite, WAL with synchronous=NORMAL: a committed change survives the daemon being
// killed at any point (what restarts need); only an OS crash may lose the last ones, and after that no
// workspace survives anyway. FULL would add an fsync to every transition (measured: 3-4 per start).
// Environment values never reach the database in plaintext: they are stored sealed, or not at all.
import Database from 'better-sqlite3';
import path from 'node:path';
import type { WorkspaceRecord, WorkspaceSpec, WorkspaceStatus } from './types';

/** Seals secrets for storage (AES-256-GCM under the node key, see src/crypto). */
export interface SecretSealer {
  seal(plaintext: string, aad: string): string;
  open(sealed: string, aad: string): string;
}

interface Row {
  id: string;
  spec: string;
  env_sealed: string | null;
  spec_digest: string;
  status: string;
}

export class WorkspaceStore {
  private readonly db: Database.Database;
  // Compiled once: a start writes its record four times.
  private readonly statements: Record<'insert' | 'updateStatus' | 'delete' | 'digestOf', Database.Statement>;

  constructor(stateDir: string, private readonly sealer?: SecretSealer) {
    this.db = new Database(path.join(stateDir, 'state.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(`CREATE TABLE IF NOT EXISTS workspaces (
      id TEXT PRIMARY KEY,
      spec TEXT NOT NULL,
      env_sealed TEXT,
      spec_digest TEXT NOT NULL,
      status TEXT NOT NULL
    )`);
    this.statements = {
      insert: this.db.prepare('INSERT INTO workspaces (id, spec, env_sealed, spec_digest, status) VALUES (?, ?, ?, ?, ?)'),
      updateStatus: this.db.prepare('UPDATE workspaces SET status = ? WHERE id = ?'),
      delete: this.db.prepare('DELETE FROM workspaces WHERE id = ?'),
      digestOf: this.db.prepare('SELECT spec_digest FROM workspaces WHERE id = ?'),
    };
  }

  insert(record: WorkspaceRecord, specDigest: string): void {
    const { env, ...rest } = record.spec;
    this.statements.insert.run(record.spec.id, JSON.stringify(rest), this.sealEnv(record.spec.id, env), specDigest, JSON.stringify(record.status));
  }

  updateStatus(id: string, status: WorkspaceStatus): void {
    this.statements.updateStatus.run(JSON.stringify(status), id);
  }

  delete(id: string): void {
    this.statements.delete.run(id);
  }

  digestOf(id: string): string | undefined {
    const row = this.statements.digestOf.get(id) as { spec_digest: string } | undefined;
    return row?.spec_digest;
  }

  loadAll(): WorkspaceRecord[] {
    const rows = this.db.prepare('SELECT id, spec, env_sealed, spec_digest, status FROM workspaces').all() as Row[];
    return rows.map((row) => ({
      spec: { ...(JSON.parse(row.spec) as Omit<WorkspaceSpec, 'env'>), env: this.openEnv(row.id, row.env_sealed) },
      status: JSON.parse(row.status) as WorkspaceStatus,
    }));
  }

  close(): void {
    this.db.close();
  }

  private sealEnv(id: string, env: Record<string, string>): string | null {
    if (!this.sealer || Object.keys(env).length === 0) return null;
    return this.sealer.seal(JSON.stringify(env), `workspace-env:${id}`);
  }

  private openEnv(id: string, sealed: string | null): Record<string, string> {
    if (!sealed || !this.sealer) return {};
    return JSON.parse(this.sealer.open(sealed, `workspace-env:${id}`)) as Record<string, string>;
  }
}
