// Small reads of /proc that launching and adopting a workspace rely on.
import fs from 'node:fs';
import os from 'node:os';

/** Field 22 of /proc/<pid>/stat: with the pid, it names one process for the life of the boot. */
export function readPidStartTime(pid: number): string {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? '';
  } catch {
    return '';
  }
}

const names = new Map<number, string>(Object.entries(os.constants.signals).map(([name, num]) => [num, name]));

export function signalName(num: number): string {
  return names.get(num) ?? `SIG${num}`;
}
