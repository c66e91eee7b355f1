// Which snapshots a retention policy keeps, as restic's `forget --keep-last/--keep-daily/--keep-weekly`:
// per workspace, the newest N; and for each of the newest D days (W ISO weeks) that have a snapshot, the
// newest snapshot of that day (week). A snapshot any rule keeps stays. A policy of all zeros keeps all.
export interface RetentionPolicy {
  keepLast: number;
  keepDaily: number;
  keepWeekly: number;
}

export interface Dated {
  backupId: string;
  createdAt: string;   // ISO 8601, UTC
  binding: { workspaceId: string };
}

export function retentionIsOff(p: RetentionPolicy): boolean {
  return p.keepLast === 0 && p.keepDaily === 0 && p.keepWeekly === 0;
}

/** The ids the policy forgets, of every workspace. */
export function toForget(snapshots: Dated[], policy: RetentionPolicy): string[] {
  if (retentionIsOff(policy)) return [];
  const byWorkspace = new Map<string, Dated[]>();
  for (const s of snapshots) {
    const list = byWorkspace.get(s.binding.workspaceId) ?? [];
    list.push(s);
    byWorkspace.set(s.binding.workspaceId, list);
  }
  const forget: string[] = [];
  for (const list of byWorkspace.values()) {
    const newest = [...list].sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
    const keep = new Set<string>(newest.slice(0, policy.keepLast).map((s) => s.backupId));
    keepOnePer(newest, (s) => s.createdAt.slice(0, 10), policy.keepDaily, keep);
    keepOnePer(newest, (s) => isoWeek(new Date(s.createdAt)), policy.keepWeekly, keep);
    for (const s of newest) if (!keep.has(s.backupId)) forget.push(s.backupId);
  }
  return forget;
}

function keepOnePer(newestFirst: Dated[], bucket: (s: Dated) => string, count: number, keep: Set<string>): void {
  const seen = new Set<string>();
  for (const s of newestFirst) {
    if (seen.size >= count) return;
    const b = bucket(s);
    if (seen.has(b)) continue;
    seen.add(b);
    keep.add(s.backupId);
  }
}

/** "2026-W49": the ISO 8601 week (weeks start on Monday; week 1 holds the year's first Thursday). */
export function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}
