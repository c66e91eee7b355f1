// Audit trail of access decisions: one structured line per allowed or denied access, through pino.
// Events carry only names and decisions; there is no field for a token, key or header, so none can leak.
import type { Logger } from 'pino';

export type AuditDecision = 'allow' | 'deny';

export interface AuditEvent {
  readonly who: string;        // 'user:<id>', 'operator:<name>' or 'anonymous'
  readonly action: string;     // a workspace action ('endpoint', 'logs', ...) or an RPC path
  readonly workspace?: string; // the workspace asked for, known or not
  readonly backup?: string;    // the backup asked for (restore), known or not
  readonly decision: AuditDecision;
  readonly reason: string;     // why, for the operator; never sent to the caller
  readonly via?: 'grpc' | 'endpoint';
}

export interface AuditLog {
  record(event: AuditEvent): void;
}

const MAX_FIELD = 200; // ids come from callers; keep a hostile one from bloating the log

function clip(value: string): string {
  return value.length > MAX_FIELD ? `${value.slice(0, MAX_FIELD)}…` : value;
}

/** An audit log writing `{audit: true, who, action, workspace, decision, reason, via}` at info level. */
export function createAuditLog(logger: Logger): AuditLog {
  const log = logger.child({ component: 'audit' });
  return {
    record(e: AuditEvent): void {
      log.info(
        {
          audit: true,
          who: clip(e.who),
          action: clip(e.action),
          ...(e.workspace !== undefined ? { workspace: clip(e.workspace) } : {}),
          ...(e.backup !== undefined ? { backup: clip(e.backup) } : {}),
          decision: e.decision,
          reason: clip(e.reason),
          ...(e.via ? { via: e.via } : {}),
        },
        `access ${e.decision}`,
      );
    },
  };
}
