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
  /** Re-seals under the current key (the input when it already is): key rotation. */
  reseal?(sealed: string, aad: string): string;
  /** Key ids of every sealed value in a text: the census of what depends on which key. */
  keyIdsIn?(text: string): string[];
}

/**
 * Every sealed column and the aad it is sealed with. The re-seal walk of a key rotation goes through this
 * list: a new sealed field is added here. One left out is still found by keyUsage() (it scans every column
 * by format), so retiring its key is refused rather than the secret lost.
 */
const SEALED_COLUMNS = [
  { column: 'env_sealed', aad: (id: string): string => `workspace-env:${id}` },
] as const;

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

  private sealEnv(id: string, env: Record<string, string>): string | null {
    if (!this.sealer || Object.keys(env).length === 0) return null;
    return this.sealer.seal(JSON.stringify(env), SEALED_COLUMNS[0].aad(id));
  }

  private openEnv(id: string, sealed: string | null): Record<string, string> {
    if (!sealed || !this.sealer) return {};
    return JSON.parse(this.sealer.open(sealed, SEALED_COLUMNS[0].aad(id))) as Record<string, string>;
  }
}
