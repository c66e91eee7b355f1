// Audit trail of access decisions: one structured line per allowed or denied access, through pino.
// Events carry only names and decisions; there is no field for a token, key or header, so none can leak.
// They go to a file of their own (<stateDir>/audit.log by default), as kube-apiserver's --audit-log-path
// does: most calls are allowed, and two thirds of an ordinary session's daemon log were these lines.
import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';

export type AuditDecision = 'allow' | 'deny';

export interface AuditEvent {
  readonly who: string;        // 'user:<id>', 'operator:<name>' or 'anonymous'
  readonly action: string;     // a workspace action ('endpoint', 'logs', ...) or an RPC path
  readonly workspace?: string; // the workspace asked for, known or not
  readonly backup?: string;    // the backup asked for (restore), known or not
  readonly image?: string;     // the image reference asked for (ImageService)
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
          ...(e.image !== undefined ? { image: clip(e.image) } : {}),
          decision: e.decision,
          reason: clip(e.reason),
          ...(e.via ? { via: e.via } : {}),
        },
        `access ${e.decision}`,
      );
    },
  };
}

/** Where audit lines go: '' = <stateDir>/audit.log (0600, appended, written synchronously so a kill -9
 *  loses none), '-' = the daemon's own log. */
export function openAuditLogger(setting: string, stateDir: string, daemonLog: Logger, base: Record<string, string>): Logger {
  if (setting === '-') return daemonLog;
  const file = setting === '' ? path.join(stateDir, 'audit.log') : setting;
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.closeSync(fs.openSync(file, 'a', 0o600));
  fs.chmodSync(file, 0o600);
  return pino({ level: 'info', base }, pino.destination({ dest: file, sync: true }));
}
